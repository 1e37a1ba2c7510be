//! What the tests of failures, replays and stops share: an order event,
//! consumers that fail or wait on command, bounded waits, and a log file of
//! the first layout. Each test binary uses part of it.
#![allow(dead_code, reason = "each test binary uses a different part")]

pub mod faulty;
pub mod nats;
pub mod pg;

use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, SqliteLog, Track, Trackable, event, register};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;
use tokio::sync::Semaphore;

#[event]
pub struct OrderPlaced {
    pub order_id: u64,
}

#[register]
impl Trackable for OrderPlaced {
    fn track(&self) -> Track {
        Track::new(self, self.order_id)
    }
}

/// An order as the log stores it: the event's JSON, metadata included.
pub fn stored(order_id: u64) -> Vec<u8> {
    serde_json::to_vec(&OrderPlaced::new(order_id)).unwrap()
}

/// The order ids of `events`, in their order.
pub fn order_ids(events: impl IntoIterator<Item = AnyEvent>) -> Vec<u64> {
    events
        .into_iter()
        .map(|e| e.downcast_ref::<OrderPlaced>().unwrap().order_id)
        .collect()
}

pub async fn sqlite_bus(path: &Path, shutdown_timeout: Duration) -> Bus {
    Bus::builder()
        .backend(SqliteLog::open(path).await.unwrap())
        .shutdown_timeout(shutdown_timeout)
        .build()
        .unwrap()
}

/// A bus on a log file capped at `max_size` bytes, to run out of space on
/// purpose.
pub async fn capped_bus(path: &Path, max_size: u64) -> Bus {
    let log = SqliteLog::options()
        .max_size(max_size)
        .open(path)
        .await
        .unwrap();
    Bus::builder()
        .backend(log)
        .shutdown_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

pub fn memory_bus(shutdown_timeout: Duration) -> Bus {
    Bus::builder()
        .shutdown_timeout(shutdown_timeout)
        .build()
        .unwrap()
}

/// Bounded, so a hang fails the test instead of stalling the suite.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("HANG: {what} did not finish within {secs}s"))
}

/// Waits, bounded, until `ready` holds.
pub async fn eventually(secs: u64, what: &str, mut ready: impl FnMut() -> bool) {
    within(secs, what, async {
        while !ready() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// Fails every event.
#[derive(Clone, Default)]
pub struct Broken;

impl Consumer for Broken {
    async fn handle(&self, _event: &AnyEvent) -> Result<(), BoxError> {
        Err("payment provider unreachable".into())
    }
}

/// Fails while `broken` is set, records otherwise.
#[derive(Clone, Default)]
pub struct Flaky {
    pub broken: Arc<AtomicBool>,
    pub seen: Recorder,
}

impl Flaky {
    /// Failing every event until [`fix`](Flaky::fix)ed.
    pub fn failing() -> Self {
        let flaky = Flaky::default();
        flaky.broken.store(true, SeqCst);
        flaky
    }

    /// Records every event from now on.
    pub fn fix(&self) {
        self.broken.store(false, SeqCst);
    }
}

impl Consumer for Flaky {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        if self.broken.load(SeqCst) {
            return Err("search cluster unreachable".into());
        }
        self.seen.handle(event).await
    }
}

/// Handles one event per permit: records it as started, waits for a
/// permit, then records it as seen.
#[derive(Clone)]
pub struct Gate {
    pub permits: Arc<Semaphore>,
    pub started: Recorder,
    pub seen: Recorder,
}

impl Gate {
    pub fn closed() -> Self {
        Gate {
            permits: Arc::new(Semaphore::new(0)),
            started: Recorder::new(),
            seen: Recorder::new(),
        }
    }
}

impl Consumer for Gate {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        self.started.handle(event).await?;
        self.permits.acquire().await?.forget();
        self.seen.handle(event).await
    }
}

/// The layout eventbus wrote before dead-letter ids were AUTOINCREMENT
/// (layout version 1).
const V1_LAYOUT: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE events (position INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
        version INTEGER NOT NULL, event_id TEXT NOT NULL, payload BLOB NOT NULL,
        appended_at INTEGER NOT NULL);
    CREATE TABLE subscriptions (name TEXT PRIMARY KEY, position INTEGER NOT NULL,
        created_at INTEGER NOT NULL);
    CREATE TABLE quarantine (subscription TEXT NOT NULL, position INTEGER NOT NULL,
        name TEXT NOT NULL, version INTEGER NOT NULL, payload BLOB NOT NULL,
        reason TEXT NOT NULL, quarantined_at INTEGER NOT NULL,
        PRIMARY KEY (subscription, position));
    CREATE TABLE retries (subscription TEXT NOT NULL, position INTEGER NOT NULL,
        attempts INTEGER NOT NULL, next_attempt_at INTEGER NOT NULL,
        first_failed_at INTEGER NOT NULL, PRIMARY KEY (subscription, position));
    CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, subscription TEXT NOT NULL,
        name TEXT NOT NULL, version INTEGER NOT NULL, payload BLOB NOT NULL,
        errors TEXT NOT NULL, attempts INTEGER NOT NULL,
        first_failed_at INTEGER NOT NULL, last_failed_at INTEGER NOT NULL);
    PRAGMA user_version = 1;
";

/// A log file of layout version 1 holding dead letters of `payments` at
/// the given ids, for order `id * 10` each.
pub fn v1_file(path: &Path, letters: &[u64]) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(V1_LAYOUT).unwrap();
    // `EVBS`, eventbus's mark in the header.
    conn.execute_batch(&format!("PRAGMA application_id = {};", 0x4556_4253))
        .unwrap();
    for &id in letters {
        conn.execute(
            "INSERT INTO dead_letters VALUES (?1, 'payments', 'order.placed', 1, ?2,
                 '[\"card declined\"]', 5, 0, 0)",
            rusqlite::params![id as i64, stored(id * 10)],
        )
        .unwrap();
    }
}

/// An error and its sources, joined: what a log line shows of it.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}

/// What a [`steady_producer`] notified: the ids `notify` accepted, and
/// those it refused with its error.
#[derive(Clone, Default)]
pub struct Notified {
    pub accepted: Arc<std::sync::Mutex<Vec<u64>>>,
    pub refused: Arc<std::sync::Mutex<Vec<(u64, String)>>>,
}

/// One producer notifying orders `ids` one at a time, `pace` apart, as a
/// service keeps doing while a server restarts: a refused event is
/// recorded with its error and not counted as accepted.
pub fn steady_producer(
    bus: &Bus,
    ids: std::ops::RangeInclusive<u64>,
    pace: Duration,
) -> (tokio::task::JoinHandle<()>, Notified) {
    let notified = Notified::default();
    let (bus, record) = (bus.clone(), notified.clone());
    let task = tokio::spawn(async move {
        for id in ids {
            match bus.notify(OrderPlaced::new(id)).await {
                Ok(()) => record.accepted.lock().unwrap().push(id),
                Err(err) => record.refused.lock().unwrap().push((id, err.to_string())),
            }
            tokio::time::sleep(pace).await;
        }
    });
    (task, notified)
}

/// Runs `work` to its end on a thread and runtime of its own: for a
/// test's cleanup in `Drop`, where the test's runtime may be gone.
pub fn on_own_runtime<F: Future<Output = ()> + Send + 'static>(
    work: impl FnOnce() -> F + Send + 'static,
) {
    let _ = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(work());
    })
    .join();
}
