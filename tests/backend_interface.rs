//! What the backend interface lets a shared outbox or a broker say, and
//! what the runtime does with it:
//! - a reader reports this process lost its claim on a subscription (a
//!   lease another process took over): the subscription stops, commits
//!   nothing more, and says why; what it had not committed is delivered
//!   again by whoever holds the subscription next;
//! - a reader hands out the attempt it counts for a redelivered event: the
//!   retry policy counts from there.
//!
//! The backend is the real SQLite log, wrapped (`common::faulty`) so a test
//! can take the claim away at a moment of its choosing, as a lease expiring
//! would, or mark deliveries as redeliveries, as a broker does.

mod common;

use common::faulty::faulty_bus;
use common::{Broken, Gate, OrderPlaced, eventually, order_ids, sqlite_bus, within};
use eventbus::testing::Recorder;
use eventbus::{DrainError, Retry};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

/// The claim goes while an event is being handled: its commit is refused,
/// the subscription stops with the reason in its stats, `drain` reports it
/// instead of waiting, and the next holder gets the uncommitted events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_claim_stops_the_subscription_without_committing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let (bus, faults) = faulty_bus(&path, Duration::from_secs(5)).await;
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
        faults.lost.store(true, SeqCst);
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
        let (bus, faults) = faulty_bus(&path, Duration::from_secs(5)).await;
        let seen = Recorder::new();
        let sub = bus
            .subscribe("billing", seen.clone())
            .start()
            .await
            .unwrap();
        bus.notify(OrderPlaced::new(1)).await.unwrap();
        within(5, "first drain", bus.drain()).await.unwrap();
        faults.lost.store(true, SeqCst);
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
    let (bus, faults) = faulty_bus(&path, Duration::from_secs(5)).await;
    *faults.attempt.lock().unwrap() = Some(3);
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
    let (bus, faults) = faulty_bus(&dir.path().join("second.db"), Duration::from_secs(5)).await;
    *faults.attempt.lock().unwrap() = Some(2);
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
