//! Retention of the SQLite log: "no limit" keeps everything, a subscription
//! that is gone for good can be forgotten so it stops pinning old events,
//! and a large backlog is pruned in slices without losing an unfinished
//! event.

use eventbus::backend::sqlite::{ForgetError, Forgotten, Retention};
use eventbus::testing::Recorder;
use eventbus::{Bus, Consumer, SqliteLog, event};
use std::path::Path;
use std::time::Duration;

#[event]
pub struct OrderPlaced {
    pub order_id: u64,
}

/// Prunes every finished event at every writer turn.
fn prune_everything() -> Retention {
    Retention {
        max_age: Duration::ZERO,
        max_events: 0,
        every: Duration::ZERO,
    }
}

fn query(path: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// Notifies `count` events through a bus on a log with `retention`, where
/// one subscription finishes them all, and returns how many the file keeps.
async fn kept_with(retention: Retention, count: u64) -> i64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let log = SqliteLog::options()
        .retention(retention)
        .open(&path)
        .await
        .unwrap();
    let bus = Bus::builder().backend(log).build().unwrap();
    bus.subscribe("fast", Recorder::new())
        .start()
        .await
        .unwrap();
    for id in 0..count {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    bus.drain().await.unwrap();
    // Two more commits: the writer prunes after each turn, and the second
    // answer comes after the first turn's prune.
    bus.notify(OrderPlaced::new(count)).await.unwrap();
    bus.notify(OrderPlaced::new(count + 1)).await.unwrap();
    let kept = query(&path, "SELECT COUNT(*) FROM events");
    bus.shutdown().await;
    kept
}

#[tokio::test]
async fn a_max_age_of_duration_max_keeps_every_event() {
    let retention = Retention {
        max_age: Duration::MAX,
        every: Duration::ZERO,
        ..Retention::default()
    };
    assert_eq!(kept_with(retention, 10).await, 12);
}

#[tokio::test]
async fn max_events_of_u64_max_keeps_every_event() {
    let retention = Retention {
        max_events: u64::MAX,
        every: Duration::ZERO,
        ..Retention::default()
    };
    assert_eq!(kept_with(retention, 10).await, 12);
}

#[tokio::test]
async fn a_prune_interval_of_duration_max_never_prunes() {
    let retention = Retention {
        every: Duration::MAX,
        ..prune_everything()
    };
    assert_eq!(kept_with(retention, 10).await, 12);
}

#[tokio::test]
async fn the_same_limits_below_max_do_prune() {
    // The control for the tests above: finished events do go.
    let kept = kept_with(prune_everything(), 10).await;
    assert!(kept < 12, "kept {kept}");
}

/// Rows of the subscription `who` in each table that keeps durable state.
fn rows_of(path: &Path, who: &str) -> [i64; 4] {
    ["subscriptions WHERE name", "retries WHERE subscription"]
        .into_iter()
        .chain([
            "quarantine WHERE subscription",
            "dead_letters WHERE subscription",
        ])
        .map(|table| query(path, &format!("SELECT COUNT(*) FROM {table} = '{who}'")))
        .collect::<Vec<_>>()
        .try_into()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_subscription_no_longer_pins_retention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");

    // An earlier version of the service had a subscription `legacy`.
    {
        let bus = Bus::builder()
            .backend(SqliteLog::open(&path).await.unwrap())
            .build()
            .unwrap();
        bus.subscribe("legacy", Recorder::new())
            .start()
            .await
            .unwrap();
        bus.subscribe("billing", Recorder::new())
            .start()
            .await
            .unwrap();
        for id in 0..5 {
            bus.notify(OrderPlaced::new(id)).await.unwrap();
        }
        bus.drain().await.unwrap();
        bus.shutdown().await;
    }
    let file = std::fs::File::open(&path).unwrap();
    while file.try_lock().is_err() {
        tokio::task::yield_now().await;
    }
    drop(file);
    // It had failures in flight too.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "INSERT INTO retries VALUES ('legacy', 1, 2, 0, 0), ('legacy', 2, 1, 0, 0), ('audit', 3, 1, 0, 0);
             INSERT INTO quarantine VALUES ('legacy', 4, 'order.placed', 9, x'00', 'unknown version', 0);
             INSERT INTO dead_letters VALUES (7, 'legacy', 'order.placed', 9, x'00', '[]', 3, 0, 0, NULL);",
        )
        .unwrap();

    // The new version runs without it.
    let log = SqliteLog::options()
        .retention(prune_everything())
        .open(&path)
        .await
        .unwrap();
    let bus = Bus::builder().backend(log.clone()).build().unwrap();
    let billing = Recorder::new();
    bus.subscribe("billing", billing.clone())
        .start()
        .await
        .unwrap();
    for id in 5..10 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    bus.drain().await.unwrap();
    bus.notify(OrderPlaced::new(10)).await.unwrap();
    bus.notify(OrderPlaced::new(11)).await.unwrap();
    let legacy_at = query(
        &path,
        "SELECT position FROM subscriptions WHERE name = 'legacy'",
    );
    assert_eq!(
        query(&path, "SELECT MIN(position) FROM events"),
        legacy_at,
        "the stopped subscription pins every event since it stopped"
    );
    assert!(query(&path, "SELECT COUNT(*) FROM events") >= 5);

    let before_forget = query(&path, "SELECT MAX(position) FROM events");
    let forgotten = log.forget_subscription("legacy").await.unwrap();
    assert!(forgotten.position);
    assert_eq!(
        (
            forgotten.retries,
            forgotten.quarantined,
            forgotten.dead_letters
        ),
        (2, 1, 1)
    );
    assert_eq!(rows_of(&path, "legacy"), [0, 0, 0, 0]);
    assert_eq!(rows_of(&path, "audit"), [0, 1, 0, 0], "others are kept");

    // Everything up to here is finished by billing, the only subscription
    // left: it goes once billing's position is committed and a writer turn
    // prunes, which the next events bring about.
    let mut next = 12;
    while query(
        &path,
        &format!("SELECT COUNT(*) FROM events WHERE position <= {before_forget}"),
    ) > 0
    {
        assert!(next < 1_000, "events before the forget were never pruned");
        bus.notify(OrderPlaced::new(next)).await.unwrap();
        bus.drain().await.unwrap();
        next += 1;
    }
    bus.drain().await.unwrap();
    assert_eq!(
        billing.len(),
        usize::try_from(next - 5).unwrap(),
        "billing got every event of this run"
    );

    // Forgetting what is not there is not an error.
    assert_eq!(
        log.forget_subscription("legacy").await.unwrap(),
        Forgotten::default()
    );
    bus.shutdown().await;
}

#[tokio::test]
async fn a_running_subscription_cannot_be_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let log = SqliteLog::open(&path).await.unwrap();
    let bus = Bus::builder().backend(log.clone()).build().unwrap();
    bus.subscribe("billing", Recorder::new())
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    bus.drain().await.unwrap();

    let err = log.forget_subscription("billing").await.unwrap_err();
    assert!(matches!(err, ForgetError::Running { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "subscription `billing` is running; shut down the bus that runs it before forgetting it"
    );
    assert_eq!(
        query(
            &path,
            "SELECT COUNT(*) FROM subscriptions WHERE name = 'billing'"
        ),
        1,
        "nothing was deleted"
    );

    bus.shutdown().await;
    let forgotten = log.forget_subscription("billing").await.unwrap();
    assert!(forgotten.position);
    assert_eq!(
        query(
            &path,
            "SELECT COUNT(*) FROM subscriptions WHERE name = 'billing'"
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_one_slice_is_pruned_and_an_unfinished_event_kept() {
    const BACKLOG: i64 = 25_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    drop(SqliteLog::open(&path).await.unwrap());
    let file = std::fs::File::open(&path).unwrap();
    while file.try_lock().is_err() {
        tokio::task::yield_now().await;
    }
    drop(file);
    // A backlog nobody needs any more (no subscription is behind it).
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO events (name, version, event_id, payload, appended_at)
                     VALUES ('order.placed', 1, ?1, x'7b7d', 0)",
                )
                .unwrap();
            for i in 0..BACKLOG {
                insert.execute([i.to_string()]).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    let log = SqliteLog::options()
        .retention(prune_everything())
        .open(&path)
        .await
        .unwrap();
    let bus = Bus::builder().backend(log).build().unwrap();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let seen = Recorder::new();
    let consumer = Gated {
        gate: gate.clone(),
        seen: seen.clone(),
    };
    bus.subscribe("billing", consumer).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();

    // Each writer turn prunes a slice and the writer goes on by itself;
    // wait for the whole backlog to go (the bound only stops a hang).
    let mut turns = 0;
    while query(&path, "SELECT COUNT(*) FROM events") > 1 {
        turns += 1;
        assert!(turns < 10_000, "the backlog was never fully pruned");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        query(&path, "SELECT MIN(position) FROM events"),
        BACKLOG + 1,
        "the unfinished event is kept"
    );
    gate.add_permits(1);
    bus.drain().await.unwrap();
    assert_eq!(
        seen.of::<OrderPlaced>()
            .iter()
            .map(|o| o.order_id)
            .collect::<Vec<_>>(),
        [1]
    );
    bus.shutdown().await;
}

/// Handles one event per permit.
#[derive(Clone)]
struct Gated {
    gate: std::sync::Arc<tokio::sync::Semaphore>,
    seen: Recorder,
}

impl Consumer for Gated {
    async fn handle(&self, event: &eventbus::AnyEvent) -> Result<(), eventbus::BoxError> {
        self.gate.acquire().await?.forget();
        self.seen.handle(event).await
    }
}
