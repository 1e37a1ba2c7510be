//! Pausing a subscription: it takes nothing new and runs no replay, keeps
//! its position and its name, and resumes where it left off; nothing
//! notified meanwhile is lost, on either log, even across a shutdown.

mod common;

use common::{Broken, Flaky, Gate, OrderPlaced, eventually, order_ids, sqlite_bus, within};
use eventbus::testing::Recorder;
use eventbus::{Bus, DrainError, Retry, SubscribeError, TryNotifyError};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

fn bus() -> Bus {
    common::memory_bus(Duration::from_secs(5))
}

#[tokio::test]
async fn events_notified_while_paused_arrive_in_order_after_resume() {
    let bus = bus();
    let seen = Recorder::new();
    let sub = bus.subscribe("audit", seen.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    bus.drain().await.unwrap();

    assert!(sub.pause());
    assert!(!sub.pause(), "a second pause changes nothing");
    assert!(sub.is_paused() && sub.stats().paused);
    for id in 2..=5 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(order_ids(seen.events()), [1], "nothing new while paused");
    assert_eq!(sub.stats().lag, 4);

    // The name stays taken while paused.
    let again = bus.subscribe("audit", Recorder::new()).start().await;
    assert!(matches!(again, Err(SubscribeError::DuplicateName(_))));

    assert!(sub.resume());
    assert!(!sub.resume(), "a second resume changes nothing");
    bus.drain().await.unwrap();
    assert_eq!(order_ids(seen.events()), [1, 2, 3, 4, 5]);
    assert!(!sub.stats().paused);
    bus.shutdown().await;
}

#[tokio::test]
async fn the_bus_pauses_and_resumes_by_name() {
    let bus = bus();
    let seen = Recorder::new();
    let sub = bus.subscribe("audit", seen.clone()).start().await.unwrap();
    assert_eq!(bus.pause("nobody"), None);
    assert_eq!(bus.resume("nobody"), None);

    assert_eq!(bus.pause("audit"), Some(true));
    assert!(sub.is_paused());
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    let stats = bus.stats();
    assert!(stats[0].paused);
    assert_eq!(stats[0].lag, 1);
    assert_eq!(bus.resume("audit"), Some(true));
    bus.drain().await.unwrap();
    assert_eq!(order_ids(seen.events()), [1]);
    bus.shutdown().await;
}

#[tokio::test]
async fn drain_names_a_paused_subscription_instead_of_waiting() {
    let bus = bus();
    let sub = bus
        .subscribe("audit", Recorder::new())
        .start()
        .await
        .unwrap();
    sub.pause();
    // Nothing left: the pause holds nothing back.
    within(5, "drain of an idle paused subscription", bus.drain())
        .await
        .unwrap();

    bus.notify(OrderPlaced::new(1)).await.unwrap();
    let err = within(5, "drain of a paused subscription", bus.drain())
        .await
        .unwrap_err();
    assert!(matches!(&err, DrainError::Paused(name) if name == "audit"));
    assert!(err.to_string().contains("resume it"), "{err}");

    sub.resume();
    within(5, "drain after resume", bus.drain()).await.unwrap();
    bus.shutdown().await;
}

/// A pause mid-read: the event being handled finishes, the rest of the
/// read waits for the resume.
#[tokio::test]
async fn a_pause_takes_effect_between_events_of_one_read() {
    let bus = bus();
    let gate = Gate::closed();
    let sub = bus.subscribe("audit", gate.clone()).start().await.unwrap();
    for id in 1..=3 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    eventually(5, "first event started", || gate.started.len() == 1).await;
    sub.pause();
    gate.permits.add_permits(10);
    eventually(5, "first event finished", || gate.seen.len() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        order_ids(gate.started.events()),
        [1],
        "no new event while paused"
    );

    sub.resume();
    within(5, "drain after resume", bus.drain()).await.unwrap();
    assert_eq!(order_ids(gate.seen.events()), [1, 2, 3]);
    bus.shutdown().await;
}

/// In concurrent mode, events already running finish; no new one starts.
#[tokio::test]
async fn a_paused_concurrent_subscription_lets_running_events_finish() {
    let bus = bus();
    let gate = Gate::closed();
    let sub = bus
        .subscribe("audit", gate.clone())
        .concurrent(2)
        .start()
        .await
        .unwrap();
    for id in 1..=2 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    eventually(5, "two events started", || gate.started.len() == 2).await;
    sub.pause();
    for id in 3..=6 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    gate.permits.add_permits(100);
    eventually(5, "running events finished", || gate.seen.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gate.started.len(), 2, "no new event while paused");
    assert_eq!(sub.stats().in_flight, 0);

    sub.resume();
    within(5, "drain after resume", bus.drain()).await.unwrap();
    let mut ids = order_ids(gate.seen.events());
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    bus.shutdown().await;
}

/// A paused subscription is a slow one to the in-memory ring: the producer
/// is held back once the buffer is full, and goes on after the resume.
#[tokio::test]
async fn a_paused_subscription_holds_the_producer_back_on_a_full_buffer() {
    let bus = Bus::builder().capacity(8).build().unwrap();
    let seen = Recorder::new();
    let sub = bus.subscribe("audit", seen.clone()).start().await.unwrap();
    sub.pause();
    let mut accepted = 0;
    loop {
        match bus.try_notify(OrderPlaced::new(accepted)) {
            Ok(()) => accepted += 1,
            Err(TryNotifyError::Full(_)) => break,
            Err(other) => panic!("unexpected: {other}"),
        }
        assert!(accepted <= 8, "the buffer holds 8");
    }
    assert_eq!(accepted, 8);
    sub.resume();
    within(
        5,
        "a notify after the resume",
        bus.notify(OrderPlaced::new(8)),
    )
    .await
    .unwrap();
    within(5, "drain", bus.drain()).await.unwrap();
    assert_eq!(order_ids(seen.events()), (0..=8).collect::<Vec<_>>());
    bus.shutdown().await;
}

/// A replay into a paused subscription waits for the resume; its letter
/// stays stored meanwhile, and a shutdown while paused leaves it stored.
#[tokio::test]
async fn replays_wait_for_the_resume_and_keep_their_letter() {
    let bus = bus();
    let flaky = Flaky::default();
    flaky.broken.store(true, SeqCst);
    let sub = bus
        .subscribe("search", flaky.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    bus.notify(OrderPlaced::new(2)).await.unwrap();
    bus.drain().await.unwrap();
    let letters = bus.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 2);
    flaky.broken.store(false, SeqCst);

    sub.pause();
    bus.dead_letters().replay(letters[0].id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(flaky.seen.is_empty(), "no replay while paused");
    assert_eq!(bus.dead_letters().count().await.unwrap(), 2);
    assert_eq!(sub.stats().replaying, 1);

    sub.resume();
    within(5, "drain after resume", bus.drain()).await.unwrap();
    assert_eq!(order_ids(flaky.seen.events()), [1]);
    assert_eq!(bus.dead_letters().count().await.unwrap(), 1);

    // Paused again with a replay queued, then shut down: the replay never
    // ran, and its letter is still there, still marked for the next start.
    sub.pause();
    bus.dead_letters().replay(letters[1].id).await.unwrap();
    let report = within(5, "shutdown while paused", bus.shutdown()).await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(order_ids(flaky.seen.events()), [1]);
    let left = bus.dead_letters().list().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, letters[1].id);
    assert!(left[0].replaying);
    // Its subscription runs nowhere now, so the mark holds nothing back.
    assert!(bus.dead_letters().discard(left[0].id).await.unwrap());
}

/// On the durable log a shutdown while paused keeps the position: the
/// events notified during the pause arrive after a restart.
#[tokio::test]
async fn a_shutdown_while_paused_loses_nothing_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let bus = sqlite_bus(&path, Duration::from_secs(5)).await;
        let seen = Recorder::new();
        let sub = bus.subscribe("audit", seen.clone()).start().await.unwrap();
        bus.notify(OrderPlaced::new(1)).await.unwrap();
        bus.drain().await.unwrap();
        sub.pause();
        for id in 2..=4 {
            bus.notify(OrderPlaced::new(id)).await.unwrap();
        }
        let report = within(5, "shutdown while paused", bus.shutdown()).await;
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(order_ids(seen.events()), [1]);
        let audit = report.stats.iter().find(|s| s.name == "audit").unwrap();
        assert_eq!(audit.lag, 3, "the report says what was left");
    }
    let bus = sqlite_bus(&path, Duration::from_secs(5)).await;
    let seen = Recorder::new();
    bus.subscribe("audit", seen.clone()).start().await.unwrap();
    within(5, "drain after restart", bus.drain()).await.unwrap();
    assert_eq!(order_ids(seen.events()), [2, 3, 4]);
    bus.shutdown().await;
}

/// Retries already under way go on while paused; what fails for good is
/// dead-lettered as usual.
#[tokio::test]
async fn a_pause_does_not_cut_a_retry_short() {
    let bus = bus();
    let sub = bus
        .subscribe("payments", Broken)
        .retry(Retry::exponential(Duration::from_millis(20)).max_attempts(3))
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    eventually(5, "first failure", || sub.stats().failed >= 1).await;
    sub.pause();
    eventually(5, "dead-lettered while paused", || {
        sub.stats().dead_lettered == 1
    })
    .await;
    assert_eq!(sub.stats().failed, 3);
    assert_eq!(bus.dead_letters().count().await.unwrap(), 1);
    bus.shutdown().await;
}
