//! The SQLite log under faults: a shutdown racing notifies, a file locked
//! by someone else, a damaged page, a wall clock stepped back. Each either
//! delivers every accepted event or says clearly why it cannot.

use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, DrainError, Retry, SqliteLog, StartFrom, event};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[event]
pub struct OrderPlaced {
    pub order_id: u64,
    pub note: String,
}

fn order(order_id: u64) -> OrderPlaced {
    OrderPlaced::new(order_id, String::new())
}

async fn bus_at(path: &Path) -> Bus {
    Bus::builder()
        .backend(SqliteLog::open(path).await.unwrap())
        .shutdown_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn orders(recorder: &Recorder) -> Vec<u64> {
    recorder
        .of::<OrderPlaced>()
        .iter()
        .map(|o| o.order_id)
        .collect()
}

/// Waits, bounded so a bug fails the test instead of hanging it, until
/// `ready` holds.
async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_every_notify_that_returned_ok() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let bus = bus_at(&dir.path().join("events.db")).await;
        let seen = Recorder::new();
        bus.subscribe("audit", seen.clone()).start().await.unwrap();
        // A burst of notifies, and a shutdown a moment later, while some
        // of them are still on their way to the file.
        let producers: Vec<_> = (0..100)
            .map(|id| {
                let bus = bus.clone();
                tokio::spawn(async move {
                    bus.notify(order(id))
                        .await
                        .map_or_else(|_| Vec::new(), |()| vec![id])
                })
            })
            .collect();
        let pause = Duration::from_micros(100 * (round % 5));
        let start = std::time::Instant::now();
        while start.elapsed() < pause {
            tokio::task::yield_now().await;
        }
        let report = bus.shutdown().await;
        let mut accepted = Vec::new();
        for producer in producers {
            accepted.extend(producer.await.unwrap());
        }
        assert!(report.is_clean(), "round {round}: {report:?}");
        let mut delivered = orders(&seen);
        delivered.sort_unstable();
        accepted.sort_unstable();
        assert_eq!(delivered, accepted, "round {round}");
    }
}

/// Handles one event per permit, so a test decides when it finishes.
#[derive(Clone)]
struct Gate {
    permits: Arc<Semaphore>,
    seen: Recorder,
}

impl Consumer for Gate {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        self.permits.acquire().await?.forget();
        self.seen.handle(event).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_refused_while_the_file_is_locked_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let bus = bus_at(&path).await;
    let gate = Gate {
        permits: Arc::new(Semaphore::new(0)),
        seen: Recorder::new(),
    };
    let billing = bus
        .subscribe("billing", gate.clone())
        .start()
        .await
        .unwrap();
    bus.notify(order(1)).await.unwrap();

    // Another process takes the write lock and keeps it past SQLite's busy
    // timeout; the event finishes meanwhile, so its commit is refused.
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE;").unwrap();
    gate.permits.add_permits(1);
    eventually("the subscription reports the refused commit", || {
        billing.stats().stalled.is_some()
    })
    .await;
    let stalled = billing.stats().stalled.unwrap();
    assert!(
        stalled.starts_with("cannot commit the subscription's position 2 to the log"),
        "{stalled}"
    );
    assert!(stalled.contains("database is locked"), "{stalled}");
    assert_eq!(billing.stats().lag, 1);

    // Once the lock is gone the commit goes through with no new event.
    locker.execute_batch("ROLLBACK;").unwrap();
    tokio::time::timeout(Duration::from_secs(30), bus.drain())
        .await
        .expect("drain returns once the commit went through")
        .unwrap();
    let stats = billing.stats();
    assert_eq!((stats.lag, stats.stalled), (0, None));
    assert!(bus.shutdown().await.is_clean());
    drop(bus);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let committed: i64 = conn
        .query_row(
            "SELECT position FROM subscriptions WHERE name = 'billing'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(committed, 2);
}

#[tokio::test]
async fn a_damaged_page_is_reported_not_retried_in_silence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let bus = bus_at(&path).await;
        for id in 0..400 {
            bus.notify(OrderPlaced::new(id, "x".repeat(2_000)))
                .await
                .unwrap();
        }
        bus.shutdown().await;
    }
    // The writer checkpoints when the log goes away; wait for its lock.
    drop(SqliteLog::open(&path).await.unwrap());

    // Scribble over pages in the middle of the events: what a failing disk
    // or a stray write leaves behind.
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    let middle = bytes.len() / page / 2;
    for byte in &mut bytes[middle * page..(middle + 8) * page] {
        *byte = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();

    let bus = bus_at(&path).await;
    let history = Recorder::new();
    let sub = bus
        .subscribe("history", history.clone())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), bus.drain())
        .await
        .expect("drain gives up on a damaged file")
        .unwrap_err();
    let DrainError::Stalled {
        subscription,
        reason,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(subscription, "history");
    assert!(
        reason.contains(&format!("`{}` is damaged", path.display())),
        "{reason}"
    );
    assert!(reason.contains(".recover"), "says what to do: {reason}");
    assert!(
        reason.contains("malformed"),
        "keeps SQLite's word: {reason}"
    );
    assert_eq!(sub.stats().stalled.as_deref(), Some(reason.as_str()));
    assert!(history.len() < 400, "delivery stopped at the damage");
    // Shutdown does not wait out its deadline for a subscription that
    // cannot move; it reports it.
    let report = tokio::time::timeout(Duration::from_secs(5), bus.shutdown())
        .await
        .expect("shutdown stops a subscription on a damaged file at once");
    assert_eq!(report.timed_out.len(), 1, "{report:?}");
    assert_eq!(
        report.timed_out[0].stalled.as_deref(),
        Some(reason.as_str())
    );
    assert!(report.timed_out[0].lag > 0);
}

/// Fails every attempt.
#[derive(Clone, Default)]
struct Down;

impl Consumer for Down {
    async fn handle(&self, _event: &AnyEvent) -> Result<(), BoxError> {
        Err("mail server unreachable".into())
    }
}

#[tokio::test]
async fn a_restored_retry_wait_is_capped_by_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let policy = Retry::exponential(Duration::from_millis(50))
        .max_delay(Duration::from_millis(200))
        .max_attempts(10);
    {
        let bus = Bus::builder()
            .backend(SqliteLog::open(&path).await.unwrap())
            .shutdown_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let down = bus
            .subscribe("mail", Down)
            .retry(policy.clone())
            .start()
            .await
            .unwrap();
        bus.notify(order(1)).await.unwrap();
        eventually("a retry is scheduled", || down.stats().failed > 0).await;
        let report = bus.shutdown().await;
        assert!(!report.is_clean(), "stopped with the retry pending");
    }
    {
        // The wall clock was an hour ahead when the schedule was stored,
        // and has been stepped back since.
        let conn = rusqlite::Connection::open(&path).unwrap();
        let moved = conn
            .execute(
                "UPDATE retries SET next_attempt_at = next_attempt_at + 3600000",
                [],
            )
            .unwrap();
        assert_eq!(moved, 1);
    }
    let bus = bus_at(&path).await;
    let mail = Recorder::new();
    bus.subscribe("mail", mail.clone())
        .retry(policy)
        .start()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), bus.drain())
        .await
        .expect("the wait is at most the policy's 200 ms, not an hour")
        .unwrap();
    assert_eq!(orders(&mail), [1]);
    bus.shutdown().await;
}
