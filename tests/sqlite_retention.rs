//! Retention of the SQLite log: "no limit" keeps everything, a subscription
//! that is gone for good can be forgotten so it stops pinning old events,
//! and a large backlog is pruned in slices without losing an unfinished
//! event.

use eventbus::log::sqlite::Retention;
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
    let bus = Bus::builder().log(log).build().unwrap();
    bus.subscribe("fast", Recorder::new())
        .start()
        .await
        .unwrap();
    for id in 0..count {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    bus.drain().await;
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
    assert!(kept <= 2, "kept {kept}");
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
    let bus = Bus::builder().log(log).build().unwrap();
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
    bus.drain().await;
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
