//! What the backend interface lets a shared outbox or a broker say, and
//! what the runtime does with it:
//! - a reader reports this process lost its claim on a subscription (a
//!   lease another process took over): the subscription stops, commits
//!   nothing more, and says why; what it had not committed is delivered
//!   again by whoever holds the subscription next;
//! - a reader hands out the attempt it counts for a redelivered event: the
//!   retry policy counts from there.
//!
//! The backend is the real SQLite log, wrapped so a test can take the
//! claim away at a moment of its choosing, as a lease expiring would, or
//! mark deliveries as redeliveries, as a broker does.

mod common;

use async_trait::async_trait;
use common::{Broken, Gate, OrderPlaced, eventually, order_ids, sqlite_bus, within};
use eventbus::backend::{
    Backend, Batch, DeadLetterStore, Position, ReadError, Reader, RetryStore, WriteError,
};
use eventbus::testing::Recorder;
use eventbus::{AnyEvent, Bus, Capabilities, DrainError, Retry, SqliteLog, StartFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

/// The SQLite log, with a switch that makes every reader find its claim
/// gone.
#[derive(Debug, Clone)]
struct Leased {
    log: SqliteLog,
    lost: Arc<AtomicBool>,
    /// The attempt every delivery is handed out as, when set.
    attempt: Option<u32>,
}

#[async_trait]
impl Backend for Leased {
    fn capabilities(&self) -> Capabilities {
        self.log.capabilities()
    }

    async fn append(&self, event: AnyEvent) -> Result<Position, WriteError> {
        self.log.append(event).await
    }

    async fn reader(
        &self,
        subscription: &str,
        from: StartFrom,
    ) -> Result<Box<dyn Reader>, ReadError> {
        Ok(Box::new(LeasedReader {
            inner: self.log.reader(subscription, from).await?,
            lost: Arc::clone(&self.lost),
            attempt: self.attempt,
        }))
    }

    fn close(&self) {
        self.log.close();
    }

    fn dead_letter_store(&self) -> Option<Arc<dyn DeadLetterStore>> {
        self.log.dead_letter_store()
    }

    fn retry_store(&self) -> Option<Arc<dyn RetryStore>> {
        self.log.retry_store()
    }
}

#[derive(Debug)]
struct LeasedReader {
    inner: Box<dyn Reader>,
    lost: Arc<AtomicBool>,
    attempt: Option<u32>,
}

impl LeasedReader {
    fn check(&self) -> Result<(), ReadError> {
        if self.lost.load(SeqCst) {
            return Err(ReadError::ClaimLost(
                "the lease expired and another process holds it".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Reader for LeasedReader {
    async fn next(&mut self, max: usize) -> Result<Option<Batch>, ReadError> {
        self.check()?;
        let batch = self.inner.next(max).await?;
        // A lease is found lost when the read comes back, too.
        self.check()?;
        Ok(match (batch, self.attempt) {
            (Some(batch), Some(attempt)) => Some(Batch::from_deliveries(
                (0..batch.len())
                    .map(|i| {
                        let (position, event) = batch.get(i);
                        (position, event.clone(), attempt)
                    })
                    .collect(),
            )),
            (batch, _) => batch,
        })
    }

    async fn commit(&mut self, up_to: Position) -> Result<(), ReadError> {
        self.check()?;
        self.inner.commit(up_to).await
    }

    fn position(&self) -> Position {
        self.inner.position()
    }

    fn lag(&self) -> Option<u64> {
        self.inner.lag()
    }
}

async fn leased_bus(path: &std::path::Path) -> (Bus, Arc<AtomicBool>) {
    wrapped_bus(path, None).await
}

async fn wrapped_bus(path: &std::path::Path, attempt: Option<u32>) -> (Bus, Arc<AtomicBool>) {
    let lost = Arc::new(AtomicBool::new(false));
    let backend = Leased {
        log: SqliteLog::open(path).await.unwrap(),
        lost: Arc::clone(&lost),
        attempt,
    };
    let bus = Bus::builder()
        .backend(backend)
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    (bus, lost)
}

/// The claim goes while an event is being handled: its commit is refused,
/// the subscription stops with the reason in its stats, `drain` reports it
/// instead of waiting, and the next holder gets the uncommitted events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_claim_stops_the_subscription_without_committing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let (bus, lost) = leased_bus(&path).await;
        let gate = Gate::closed();
        let sub = bus
            .subscribe("billing", gate.clone())
            .start()
            .await
            .unwrap();
        bus.notify(OrderPlaced::new(1)).await.unwrap();
        gate.permits.add_permits(1);
        within(5, "first drain", bus.drain()).await.unwrap();

        bus.notify(OrderPlaced::new(2)).await.unwrap();
        bus.notify(OrderPlaced::new(3)).await.unwrap();
        eventually(5, "order 2 in the handler", || gate.started.len() == 2).await;
        lost.store(true, SeqCst);
        gate.permits.add_permits(10);

        let stalled = within(5, "the subscription says why it stopped", async {
            loop {
                if let Some(reason) = sub.stats().stalled {
                    return reason;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(stalled.contains("lost its claim"), "{stalled}");
        assert!(stalled.contains("lease expired"), "{stalled}");
        let err = within(5, "drain", bus.drain()).await.unwrap_err();
        assert!(
            matches!(&err, DrainError::Stalled { subscription, .. } if subscription == "billing"),
            "{err}"
        );
        within(10, "shutdown", bus.shutdown()).await;
    }
    // Nothing after order 1 was committed: the next holder gets 2 and 3.
    let bus = sqlite_bus(&path, Duration::from_secs(5)).await;
    let next = Recorder::new();
    bus.subscribe("billing", next.clone())
        .start()
        .await
        .unwrap();
    within(10, "drain after takeover", bus.drain())
        .await
        .unwrap();
    assert_eq!(order_ids(next.events()), [2, 3]);
    bus.shutdown().await;
}

/// The claim is found gone on a read: the subscription stops before
/// handling what it read, and those events go to the next holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_lost_on_a_read_hands_nothing_to_the_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let (bus, lost) = leased_bus(&path).await;
        let seen = Recorder::new();
        let sub = bus
            .subscribe("billing", seen.clone())
            .start()
            .await
            .unwrap();
        bus.notify(OrderPlaced::new(1)).await.unwrap();
        within(5, "first drain", bus.drain()).await.unwrap();
        lost.store(true, SeqCst);
        bus.notify(OrderPlaced::new(2)).await.unwrap();
        eventually(5, "stopped", || sub.stats().stalled.is_some()).await;
        assert_eq!(order_ids(seen.events()), [1]);
        within(10, "shutdown", bus.shutdown()).await;
    }
    let bus = sqlite_bus(&path, Duration::from_secs(5)).await;
    let next = Recorder::new();
    bus.subscribe("billing", next.clone())
        .start()
        .await
        .unwrap();
    within(10, "drain after takeover", bus.drain())
        .await
        .unwrap();
    assert_eq!(order_ids(next.events()), [2]);
    bus.shutdown().await;
}

/// A delivery the backend counts as its third attempt: with a policy of
/// three attempts, one more failure dead-letters it, and the letter says
/// three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_a_backend_counts_is_where_retries_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let (bus, _) = wrapped_bus(&path, Some(3)).await;
    let sub = bus
        .subscribe("billing", Broken)
        .retry(Retry::exponential(Duration::from_millis(1)).max_attempts(3))
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    within(10, "drain", bus.drain()).await.unwrap();
    let stats = sub.stats();
    assert_eq!(
        (stats.failed, stats.retried, stats.dead_lettered),
        (1, 0, 1)
    );
    let letters = bus.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    bus.shutdown().await;

    // Below the limit, the policy still retries up to it.
    let (bus, _) = wrapped_bus(&dir.path().join("second.db"), Some(2)).await;
    let sub = bus
        .subscribe("billing", Broken)
        .retry(Retry::exponential(Duration::from_millis(1)).max_attempts(3))
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    within(10, "drain", bus.drain()).await.unwrap();
    let stats = sub.stats();
    assert_eq!(
        (stats.failed, stats.retried, stats.dead_lettered),
        (2, 1, 1)
    );
    assert_eq!(bus.dead_letters().list().await.unwrap()[0].attempts, 3);
    bus.shutdown().await;
}
