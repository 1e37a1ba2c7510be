//! Quarantined rows can come back: after a rollback to an older binary set
//! newer events aside, rolling forward lists them and requeues them as dead
//! letters to replay, while rows that still do not decode stay put.

use eventbus::testing::Recorder;
use eventbus::{Bus, SqliteLog, event};
use std::time::Duration;

#[event]
pub struct OrderPlaced {
    pub order_id: u64,
}

fn stored(order_id: u64) -> String {
    serde_json::to_string(&OrderPlaced::new(order_id)).unwrap()
}

#[tokio::test]
async fn rows_quarantined_by_an_older_binary_come_back_after_rolling_forward() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let log = SqliteLog::open(&path).await.unwrap();
    let bus = Bus::builder()
        .backend(log.clone())
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let billing = Recorder::new();
    bus.subscribe("billing", billing.clone())
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    bus.drain().await.unwrap();

    // What an older binary, rolled back to, left behind: three newer
    // events it could not read, set aside for `billing`; and one event no
    // version of ours knows. Then this binary, rolled forward, starts.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for (position, order) in [(2, 20), (3, 30), (4, 40)] {
            conn.execute(
                "INSERT INTO quarantine
                    (subscription, position, name, version, payload, reason, quarantined_at)
                 VALUES ('billing', ?1, 'order.placed', 1, ?2,
                    'no event named `order.placed` at version 1 is registered in this binary', 0)",
                rusqlite::params![position, stored(order)],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO quarantine
                (subscription, position, name, version, payload, reason, quarantined_at)
             VALUES ('billing', 5, 'order.voided', 'two', x'00ff', 'the stored version `two` is not a version number', 0)",
            [],
        )
        .unwrap();
    }

    let listed = log.quarantined("billing").await.unwrap();
    let positions: Vec<u64> = listed.iter().map(|q| q.position).collect();
    assert_eq!(positions, [2, 3, 4, 5]);
    assert_eq!(listed[3].version, "two");
    assert_eq!(listed[3].payload, [0x00, 0xff], "kept byte for byte");
    assert!(log.quarantined("search").await.unwrap().is_empty());

    let requeued = log.requeue_quarantined("billing").await.unwrap();
    assert_eq!((requeued.requeued, requeued.still_quarantined), (3, 1));
    let letters = bus.dead_letters().list_for("billing").await.unwrap();
    assert_eq!(letters.len(), 3);
    assert!(
        letters[0].errors[0].starts_with("quarantined: no event named `order.placed`"),
        "{:?}",
        letters[0].errors
    );

    assert_eq!(bus.dead_letters().replay_all("billing").await.unwrap(), 3);
    bus.drain().await.unwrap();
    let orders: Vec<u64> = billing
        .of::<OrderPlaced>()
        .iter()
        .map(|o| o.order_id)
        .collect();
    assert_eq!(orders, [1, 20, 30, 40]);
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);

    // Requeuing again moves nothing twice; the unreadable row stays.
    let again = log.requeue_quarantined("billing").await.unwrap();
    assert_eq!((again.requeued, again.still_quarantined), (0, 1));
    let left: Vec<u64> = log
        .quarantined("billing")
        .await
        .unwrap()
        .iter()
        .map(|q| q.position)
        .collect();
    assert_eq!(left, [5]);
    assert!(bus.shutdown().await.is_clean());
}
