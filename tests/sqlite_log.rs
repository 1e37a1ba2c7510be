//! The SQLite log: events survive a restart, subscriptions resume where
//! they left off, rows that no longer decode are quarantined, bad files are
//! refused at open with a clear error, and a full database refuses new
//! events without losing old ones.

use eventbus::backend::StoreError;
use eventbus::backend::sqlite::{OpenError, Retention};
use eventbus::dead_letter::{Discarded, ReplayRequest};
use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, SqliteLog, StartFrom, event};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[event]
pub struct OrderPlaced {
    pub order_id: u64,
}

async fn bus_at(path: &Path) -> Bus {
    Bus::builder()
        .backend(SqliteLog::open(path).await.unwrap())
        .shutdown_timeout(Duration::from_millis(200))
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

/// Handles one event per permit, so a test decides how far it gets.
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
async fn a_subscription_resumes_where_it_left_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");

    let first = Gate {
        permits: Arc::new(Semaphore::new(3)),
        seen: Recorder::new(),
    };
    {
        let bus = bus_at(&path).await;
        bus.subscribe("billing", first.clone())
            .max_demand(1)
            .min_demand(0)
            .start()
            .await
            .unwrap();
        for id in 0..10 {
            bus.notify(OrderPlaced::new(id)).await.unwrap();
        }
        // Three handled, then the process goes away mid-stream.
        while first.seen.len() < 3 {
            tokio::task::yield_now().await;
        }
        let report = bus.shutdown().await;
        assert_eq!(report.timed_out.len(), 1);
    }
    assert_eq!(orders(&first.seen), [0, 1, 2]);

    let second = Recorder::new();
    let bus = bus_at(&path).await;
    bus.subscribe("billing", second.clone())
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(10)).await.unwrap();
    bus.drain().await.unwrap();
    // At least once: the event in flight at the stop may come again.
    let resumed = orders(&second);
    assert!(
        resumed.starts_with(&[2]) || resumed.starts_with(&[3]),
        "{resumed:?}"
    );
    assert!(resumed.ends_with(&[3, 4, 5, 6, 7, 8, 9, 10]), "{resumed:?}");
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test]
async fn new_subscriptions_start_now_or_from_the_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_at(&dir.path().join("events.db")).await;
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    bus.notify(OrderPlaced::new(2)).await.unwrap();

    let now = Recorder::new();
    let history = Recorder::new();
    bus.subscribe("now", now.clone()).start().await.unwrap();
    bus.subscribe("history", history.clone())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(3)).await.unwrap();
    bus.drain().await.unwrap();
    assert_eq!(orders(&now), [3]);
    assert_eq!(orders(&history), [1, 2, 3]);
    bus.shutdown().await;
}

#[tokio::test]
async fn a_row_that_no_longer_decodes_is_quarantined_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let bus = bus_at(&path).await;
    let seen = Recorder::new();
    bus.subscribe("audit", seen.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    bus.drain().await.unwrap();

    // Another writer (a bug, a bad migration) leaves two rows behind that
    // this binary cannot read.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO events (name, version, event_id, payload, appended_at)
             VALUES ('order.placed', 1, 'x', '{\"order_id\": \"not a number\"}', 0),
                    ('order.refunded', 3, 'y', '{}', 0);",
        )
        .unwrap();
    }
    bus.notify(OrderPlaced::new(2)).await.unwrap();
    bus.drain().await.unwrap();
    assert_eq!(orders(&seen), [1, 2]);
    bus.shutdown().await;

    let conn = rusqlite::Connection::open(&path).unwrap();
    let reasons: Vec<String> = conn
        .prepare("SELECT reason FROM quarantine ORDER BY position")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(reasons.len(), 2);
    assert!(
        reasons[0].starts_with("event `order.placed` v1 does not match its fields: invalid type"),
        "{}",
        reasons[0]
    );
    assert_eq!(
        reasons[1],
        "no event named `order.refunded` at version 3 is registered in this binary"
    );
}

#[tokio::test]
async fn a_database_of_another_application_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY);")
        .unwrap();
    let err = SqliteLog::open(&path).await.unwrap_err();
    assert!(matches!(err, OpenError::NotOurs { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "`{}` is not an eventbus database (it has tables users); point the log at a new file",
            path.display()
        )
    );
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(
        &path,
        "these are not the bytes you are looking for, at all, no",
    )
    .unwrap();
    let err = SqliteLog::open(&path).await.unwrap_err();
    assert!(matches!(err, OpenError::NotADatabase { .. }), "{err:?}");
    assert!(
        err.to_string()
            .ends_with("is not a SQLite database; point the log at a new file")
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "these are not the bytes you are looking for, at all, no",
        "the file is left alone"
    );
}

#[tokio::test]
async fn a_file_in_use_by_another_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let _first = SqliteLog::open(&path).await.unwrap();
    let err = SqliteLog::open(&path).await.unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string()
            .ends_with("is in use by another eventbus log; only one process may own a log file")
    );
}

#[tokio::test]
async fn a_read_only_location_is_refused() {
    // /proc refuses new files even to root, which CI runs as.
    let err = SqliteLog::open("/proc/eventbus-test.db").await.unwrap_err();
    assert!(matches!(err, OpenError::ReadOnly { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "`/proc/eventbus-test.db` cannot be written: the file or its directory is read-only"
    );
}

#[tokio::test]
async fn a_full_database_refuses_new_events_and_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let log = SqliteLog::options()
        .max_size(64 * 1024)
        .open(&path)
        .await
        .unwrap();
    let bus = Bus::builder().backend(log).build().unwrap();
    let mut accepted = Vec::new();
    let mut refusal = None;
    for id in 0..10_000 {
        match bus.notify(OrderPlaced::new(id)).await {
            Ok(()) => accepted.push(id),
            Err(err) => {
                refusal = Some(err);
                break;
            }
        }
    }
    let err = refusal.expect("a 64 KiB database fills up");
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain = format!("{chain}: {s}");
        source = s.source();
    }
    // Ours first, saying what to do; SQLite's own error stays as the source.
    let expected = format!(
        "the bus's backend failed to store the event: the backend could not store the event: `{}`: the database or disk is full; free space or raise the limit, nothing after the last accepted event was stored: database or disk is full",
        path.display()
    );
    assert!(chain.starts_with(&expected), "{chain}");
    bus.shutdown().await;
    drop(bus);

    // Everything accepted is still there.
    let bus = bus_at(&path).await;
    let all = Recorder::new();
    bus.subscribe("check", all.clone())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap();
    bus.drain().await.unwrap();
    assert_eq!(orders(&all), accepted);
    bus.shutdown().await;
}

#[tokio::test]
async fn finished_events_are_pruned_and_unfinished_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let log = SqliteLog::options()
        .retention(Retention {
            max_age: Duration::ZERO,
            max_events: 0,
            every: Duration::ZERO,
        })
        .open(&path)
        .await
        .unwrap();
    let bus = Bus::builder().backend(log).build().unwrap();
    let fast = Recorder::new();
    let slow = Gate {
        permits: Arc::new(Semaphore::new(5)),
        seen: Recorder::new(),
    };
    bus.subscribe("fast", fast.clone()).start().await.unwrap();
    bus.subscribe("slow", slow.clone())
        .max_demand(1)
        .min_demand(0)
        .start()
        .await
        .unwrap();
    for id in 0..20 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    while slow.seen.len() < 5 || fast.len() < 20 {
        tokio::task::yield_now().await;
    }
    // One more commit lets the writer prune behind the slowest cursor.
    bus.notify(OrderPlaced::new(20)).await.unwrap();

    let conn = rusqlite::Connection::open(&path).unwrap();
    let (kept, oldest): (i64, i64) = conn
        .query_row("SELECT COUNT(*), MIN(position) FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let slow_at: i64 = conn
        .query_row(
            "SELECT position FROM subscriptions WHERE name = 'slow'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(slow_at > 1, "the slow subscription committed progress");
    assert_eq!(
        oldest, slow_at,
        "pruned up to the slowest cursor, not past it"
    );
    assert_eq!(kept, 22 - slow_at);
    slow.permits.add_permits(100);
    bus.drain().await.unwrap();
    assert_eq!(slow.seen.len(), 21);
    bus.shutdown().await;
}

/// Fails every order while `broken` is set.
#[derive(Clone, Default)]
struct Flaky {
    broken: Arc<std::sync::atomic::AtomicBool>,
    seen: Recorder,
}

impl Consumer for Flaky {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("payment provider unreachable".into());
        }
        self.seen.handle(event).await
    }
}

#[tokio::test]
async fn dead_letters_survive_a_restart_and_replay_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let flaky = Flaky::default();
        flaky
            .broken
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let bus = bus_at(&path).await;
        bus.subscribe("payments", flaky)
            .retry(eventbus::Retry::never())
            .start()
            .await
            .unwrap();
        bus.notify(OrderPlaced::new(1)).await.unwrap();
        bus.notify(OrderPlaced::new(2)).await.unwrap();
        bus.drain().await.unwrap();
        assert_eq!(bus.dead_letters().count().await.unwrap(), 2);
        bus.shutdown().await;
    }

    let bus = bus_at(&path).await;
    let letters = bus.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 2, "kept across the restart");
    assert_eq!(letters[0].subscription, "payments");
    assert_eq!(letters[0].errors, ["payment provider unreachable"]);
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(
        letters[0]
            .event
            .downcast_ref::<OrderPlaced>()
            .unwrap()
            .order_id,
        1
    );

    let healed = Flaky::default();
    bus.subscribe("payments", healed.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(bus.dead_letters().replay_all("payments").await.unwrap(), 2);
    bus.drain().await.unwrap();
    assert_eq!(orders(&healed.seen), [1, 2]);
    bus.shutdown().await;
    drop(bus);

    let bus = bus_at(&path).await;
    assert!(
        bus.dead_letters().count().await.unwrap() == 0,
        "replayed letters are gone for good"
    );
    bus.shutdown().await;
}

/// Counts attempts and always fails.
#[derive(Clone, Default)]
struct AlwaysDown {
    attempts: Arc<std::sync::atomic::AtomicU32>,
}

impl Consumer for AlwaysDown {
    async fn handle(&self, _event: &AnyEvent) -> Result<(), BoxError> {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err("search cluster unreachable".into())
    }
}

#[tokio::test]
async fn a_retry_schedule_resumes_after_a_restart_instead_of_starting_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let retry = eventbus::Retry::exponential(Duration::from_millis(400))
        .without_jitter()
        .max_attempts(3);
    {
        let down = AlwaysDown::default();
        let bus = bus_at(&path).await;
        bus.subscribe("search", down.clone())
            .retry(retry.clone())
            .start()
            .await
            .unwrap();
        bus.notify(OrderPlaced::new(1)).await.unwrap();
        while down.attempts.load(std::sync::atomic::Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        // Stopped while waiting 400 ms for the second attempt.
        assert!(!bus.shutdown().await.is_clean());
    }

    let down = AlwaysDown::default();
    let bus = bus_at(&path).await;
    bus.subscribe("search", down.clone())
        .retry(retry)
        .start()
        .await
        .unwrap();
    bus.drain().await.unwrap();
    let letters = bus.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3, "attempts counted across both runs");
    assert_eq!(
        down.attempts.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the second run made only the attempts that were left"
    );
    bus.shutdown().await;
    drop(bus);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let left: i64 = conn
        .query_row("SELECT COUNT(*) FROM retries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "a dead-lettered event has no schedule left");
}

/// An analytics endpoint that hangs while `down` is set.
#[derive(Clone, Default)]
struct Analytics {
    down: Arc<std::sync::atomic::AtomicBool>,
    written: Arc<std::sync::Mutex<Vec<String>>>,
}

impl eventbus::Sink<eventbus::Track> for Analytics {
    async fn write(&self, batch: &[eventbus::Track]) -> Result<(), BoxError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let mut written = self.written.lock().unwrap();
        written.extend(batch.iter().map(|t| t.distinct_id.clone()));
        Ok(())
    }
}

#[eventbus::register]
impl eventbus::Trackable for OrderPlaced {
    fn track(&self) -> eventbus::Track {
        eventbus::Track::new(self, self.order_id)
    }
}

fn tracking(sink: Analytics) -> eventbus::ProtocolConsumer<dyn eventbus::Trackable, Analytics> {
    eventbus::ProtocolConsumer::new(sink).batch(eventbus::BatchConfig {
        size: 100,
        timeout: Duration::from_secs(60),
        retry: eventbus::Retry::never(),
    })
}

#[tokio::test]
async fn batched_payloads_not_yet_written_come_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let hanging = Analytics::default();
        hanging
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let bus = bus_at(&path).await;
        bus.subscribe("analytics", tracking(hanging))
            .start()
            .await
            .unwrap();
        for id in 1..=3 {
            bus.notify(OrderPlaced::new(id)).await.unwrap();
        }
        // The batch never reaches the endpoint before the deadline.
        assert!(!bus.shutdown().await.is_clean());
    }

    let healthy = Analytics::default();
    let bus = bus_at(&path).await;
    bus.subscribe("analytics", tracking(healthy.clone()))
        .start()
        .await
        .unwrap();
    bus.drain().await.unwrap();
    assert_eq!(*healthy.written.lock().unwrap(), ["1", "2", "3"]);
    bus.shutdown().await;
}

/// A dead-letter store that panics on insert: a bug in a custom store,
/// around the consumer rather than in it.
#[derive(Debug)]
struct PanickyStore;

#[async_trait::async_trait]
impl eventbus::backend::DeadLetterStore for PanickyStore {
    async fn insert(&self, _letter: &eventbus::DeadLetter) -> Result<u64, StoreError> {
        panic!("dead-letter store broke")
    }

    async fn get(&self, _id: u64) -> Result<Option<eventbus::DeadLetter>, StoreError> {
        Ok(None)
    }

    async fn page(
        &self,
        _query: &eventbus::dead_letter::DeadLetterQuery,
    ) -> Result<eventbus::dead_letter::DeadLetterPage, StoreError> {
        Ok(Default::default())
    }

    async fn count(&self, _subscription: Option<&str>) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn remove(&self, _id: u64) -> Result<bool, StoreError> {
        Ok(false)
    }

    async fn request_replay(&self, _id: u64) -> Result<ReplayRequest, StoreError> {
        Ok(ReplayRequest::NotFound)
    }

    async fn requested(
        &self,
        _subscription: &str,
        _after: Option<u64>,
        _limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        Ok(Vec::new())
    }

    async fn discard(&self, _id: u64) -> Result<Discarded, StoreError> {
        Ok(Discarded::NotFound)
    }
}

/// Fails every attempt at order 3.
#[derive(Clone)]
struct FailsOrderThree(Recorder);

impl Consumer for FailsOrderThree {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        if event.downcast_ref::<OrderPlaced>().unwrap().order_id == 3 {
            return Err("card declined".into());
        }
        self.0.handle(event).await
    }
}

/// A panic around a delivery (here, writing its dead letter) must not let
/// the subscription's position pass the event. One policy in every mode:
/// the subscription stops, `drain` says why instead of waiting, and after a
/// restart the event is delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_around_a_delivery_loses_nothing_in_any_mode() {
    type Mode = fn(
        eventbus::SubscriptionBuilder<'_, FailsOrderThree>,
    ) -> eventbus::SubscriptionBuilder<'_, FailsOrderThree>;
    let modes: [(&str, Mode); 3] = [
        ("concurrent", |s| s.concurrent(8)),
        ("partitioned", |s| {
            s.partitioned(2, |e: &AnyEvent| {
                e.downcast_ref::<OrderPlaced>().unwrap().order_id % 2
            })
        }),
        ("sequential", |s| s.sequential()),
    ];
    for (name, mode) in modes {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        {
            let bus = Bus::builder()
                .backend(SqliteLog::open(&path).await.unwrap())
                .dead_letter_store(PanickyStore)
                .shutdown_timeout(Duration::from_millis(200))
                .build()
                .unwrap();
            let first = FailsOrderThree(Recorder::new());
            let sub = mode(bus.subscribe("billing", first.clone()))
                .retry(eventbus::Retry::never())
                .start()
                .await
                .unwrap();
            for order_id in 0..10 {
                bus.notify(OrderPlaced::new(order_id)).await.unwrap();
            }
            let err = tokio::time::timeout(Duration::from_secs(10), bus.drain())
                .await
                .unwrap_or_else(|_| panic!("{name}: drain hung"))
                .unwrap_err();
            let eventbus::DrainError::Stalled { reason, .. } = &err else {
                panic!("{name}: {err}");
            };
            assert!(
                reason.contains("panicked outside its consumer"),
                "{name}: {reason}"
            );
            assert!(
                reason.contains("dead-letter store broke"),
                "{name}: {reason}"
            );
            assert_eq!(sub.stats().stalled.as_deref(), Some(reason.as_str()));
            bus.shutdown().await;
        }
        let second = Recorder::new();
        let bus = bus_at(&path).await;
        bus.subscribe("billing", second.clone())
            .start()
            .await
            .unwrap();
        bus.drain().await.unwrap();
        // At least once: events finished before the panic but not yet
        // released may come again too; order 3 must.
        let again = orders(&second);
        assert!(again.contains(&3), "{name}: {again:?}");
        assert!(bus.shutdown().await.is_clean());
    }
}

/// Each backend declares what it offers; the behaviour suite goes by it.
#[tokio::test]
async fn backends_declare_their_capabilities() {
    let memory = Bus::builder().build().unwrap();
    let caps = memory.capabilities();
    assert!(!caps.durable && caps.ordered);
    assert!(!caps.schedules_retries && !caps.shared_subscriptions);

    let dir = tempfile::tempdir().unwrap();
    let sqlite = Bus::builder()
        .backend(SqliteLog::open(dir.path().join("events.db")).await.unwrap())
        .build()
        .unwrap();
    let caps = sqlite.capabilities();
    assert!(caps.durable && caps.ordered);
    assert!(!caps.schedules_retries && !caps.shared_subscriptions);
    sqlite.shutdown().await;
}
