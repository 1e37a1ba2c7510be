//! One subscription shared by several processes: each event handled once
//! while they all live, none lost when the one delivering stops, and a
//! replay run once whichever process asks for it. A "process" here is a
//! bus of its own on the same storage, as a replica of a service is.

use crate::common::Flaky;
use crate::harness::{BusSettings, Harness};
use crate::support::{WAIT_SECS, counts, credit, drained, seqs, shut_down, sorted_seqs, within};
use eventbus::Retry;
use eventbus::testing::Recorder;
use std::time::Duration;

/// Two processes run one subscription and both notify: every event is
/// handled once, by one of them.
pub(crate) async fn a_shared_subscription_handles_each_event_once(harness: &dyn Harness) {
    let a = harness.open(BusSettings::default()).await;
    let b = harness.open(BusSettings::default()).await;
    let (seen_a, seen_b) = (Recorder::new(), Recorder::new());
    a.subscribe("ledger", seen_a.clone()).start().await.unwrap();
    b.subscribe("ledger", seen_b.clone()).start().await.unwrap();
    for s in 0..40 {
        let bus = if s % 2 == 0 { &a } else { &b };
        bus.notify(credit(s)).await.unwrap();
    }
    drained(&a).await;
    drained(&b).await;
    let all = seqs(seen_a.events().into_iter().chain(seen_b.events()));
    let counted = counts(all);
    assert_eq!(counted.len(), 40, "every event handled: {counted:?}");
    assert!(
        counted.values().all(|&n| n == 1),
        "each handled once: {counted:?}"
    );
    shut_down(&a).await;
    shut_down(&b).await;
}

/// Two processes run one subscription while events keep coming: both
/// get a share of the work (the second one from when it joins), and each
/// event is handled once.
pub(crate) async fn a_shared_subscription_splits_the_work(harness: &dyn Harness) {
    let a = harness.open(BusSettings::default()).await;
    let b = harness.open(BusSettings::default()).await;
    let (seen_a, seen_b) = (Recorder::new(), Recorder::new());
    a.subscribe("ledger", seen_a.clone()).start().await.unwrap();
    b.subscribe("ledger", seen_b.clone()).start().await.unwrap();
    // Each event is its own chain, so events spread over whatever the
    // backend splits by.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT_SECS);
    let mut sent = 0;
    while seen_a.len() < 5 || seen_b.len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "one process did all the work: {} and {} of {sent}",
            seen_a.len(),
            seen_b.len()
        );
        a.notify(credit(sent)).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drained(&a).await;
    drained(&b).await;
    let counted = counts(seqs(seen_a.events().into_iter().chain(seen_b.events())));
    assert_eq!(
        counted.len() as u64,
        sent,
        "every event handled: {counted:?}"
    );
    assert!(
        counted.values().all(|&n| n == 1),
        "each handled once: {counted:?}"
    );
    shut_down(&a).await;
    shut_down(&b).await;
}

/// The process delivering a shared subscription shuts down; the other
/// takes over, and nothing accepted by either is lost or handled twice.
pub(crate) async fn a_shared_subscription_moves_on_when_its_holder_stops(harness: &dyn Harness) {
    let a = harness.open(BusSettings::default()).await;
    let seen_a = Recorder::new();
    a.subscribe("ledger", seen_a.clone()).start().await.unwrap();
    // `a` holds it before `b` starts.
    for s in 0..10 {
        a.notify(credit(s)).await.unwrap();
    }
    drained(&a).await;
    let b = harness.open(BusSettings::default()).await;
    let seen_b = Recorder::new();
    b.subscribe("ledger", seen_b.clone()).start().await.unwrap();
    for s in 10..20 {
        b.notify(credit(s)).await.unwrap();
    }
    drained(&b).await;
    assert!(shut_down(&a).await.is_clean());
    for s in 20..30 {
        b.notify(credit(s)).await.unwrap();
    }
    drained(&b).await;
    let mut all = sorted_seqs(&seen_a);
    all.extend(sorted_seqs(&seen_b));
    all.sort_unstable();
    assert_eq!(all, (0..30).collect::<Vec<_>>(), "each once, none lost");
    assert!(
        sorted_seqs(&seen_b).contains(&29),
        "the other process delivers after the holder stopped"
    );
    shut_down(&b).await;
}

/// A letter of a shared subscription, replayed from a process that runs
/// it and from one that runs nothing: each runs once, in one process.
pub(crate) async fn a_replay_of_a_shared_subscription_runs_once(harness: &dyn Harness) {
    let a = harness.open(BusSettings::default()).await;
    let b = harness.open(BusSettings::default()).await;
    let (flaky_a, flaky_b) = (Flaky::failing(), Flaky::failing());
    for (bus, flaky) in [(&a, &flaky_a), (&b, &flaky_b)] {
        bus.subscribe("ledger", flaky.clone())
            .retry(Retry::never())
            .start()
            .await
            .unwrap();
    }
    for s in 1..=2 {
        a.notify(credit(s)).await.unwrap();
    }
    drained(&a).await;
    drained(&b).await;
    let operator = harness.open(BusSettings::default()).await;
    let letters = operator.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 2);
    flaky_a.fix();
    flaky_b.fix();
    operator.dead_letters().replay(letters[0].id).await.unwrap();
    a.dead_letters().replay(letters[1].id).await.unwrap();
    within(WAIT_SECS, "both replays", async {
        while operator.dead_letters().count().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Long enough for every process to have looked at the store again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    drained(&a).await;
    drained(&b).await;
    let mut replayed = sorted_seqs(&flaky_a.seen);
    replayed.extend(sorted_seqs(&flaky_b.seen));
    replayed.sort_unstable();
    assert_eq!(replayed, [1, 2], "each letter replayed once");
    shut_down(&operator).await;
    shut_down(&a).await;
    shut_down(&b).await;
}
