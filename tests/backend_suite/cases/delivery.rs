//! Getting events to subscriptions: one, several, in order, from many
//! producers at once, and to a subscription that joins later.

use crate::harness::{BusSettings, Harness};
use crate::support::*;
use eventbus::testing::Recorder;
use eventbus::{AnyEvent, StartFrom};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::SeqCst;

/// What is notified arrives once, as it was notified: the same id, name and
/// fields.
pub(crate) async fn publish_and_subscribe(harness: &dyn Harness) {
    let bus = harness.open(BusSettings::default()).await;
    let seen = Recorder::new();
    let audit = bus.subscribe("audit", seen.clone()).start().await.unwrap();

    let sent: Vec<AnyEvent> = (1..=3).map(|s| AnyEvent::new(credit(s))).collect();
    for event in &sent {
        bus.notify(event.clone()).await.unwrap();
    }
    drained(&bus).await;

    let got = seen.events();
    assert_eq!(got.len(), 3, "each event once: {:?}", seqs(got.clone()));
    for event in &sent {
        let arrived = got
            .iter()
            .find(|g| g.meta().id == event.meta().id)
            .unwrap_or_else(|| panic!("event {} never arrived", seq(event)));
        assert_eq!(arrived.name(), "account.credited");
        let (sent, arrived) = (
            event.downcast_ref::<AccountCredited>().unwrap(),
            arrived.downcast_ref::<AccountCredited>().unwrap(),
        );
        assert_eq!((arrived.account, arrived.seq), (sent.account, sent.seq));
    }
    let stats = audit.stats();
    assert_eq!((stats.delivered, stats.failed, stats.lag), (3, 0, 0));
    assert!(shut_down(&bus).await.is_clean());
}

/// Every subscription gets every event once, whatever its mode.
pub(crate) async fn broadcast_to_every_subscription(harness: &dyn Harness) {
    let bus = harness.open(BusSettings::default()).await;
    let mut recorders = Vec::new();
    for (name, mode) in MODES {
        let recorder = Recorder::new();
        mode.apply(bus.subscribe(name, recorder.clone()))
            .start()
            .await
            .unwrap();
        recorders.push((name, recorder));
    }

    for s in 1..=50 {
        bus.notify(credit(s)).await.unwrap();
    }
    drained(&bus).await;

    let all: Vec<u64> = (1..=50).collect();
    for (name, recorder) in &recorders {
        assert_eq!(sorted_seqs(recorder), all, "{name} got each event once");
    }
    for stats in bus.stats() {
        assert_eq!(stats.delivered, 50, "{stats:?}");
    }
    assert!(shut_down(&bus).await.is_clean());
}

/// A sequential subscription handles events in log order: one producer's
/// order exactly, and with several producers at once, every sequential
/// subscription sees the same order, each producer's events in the order
/// it notified them.
pub(crate) async fn sequential_mode_keeps_log_order(harness: &dyn Harness) {
    let bus = harness.open(BusSettings::default()).await;
    let (first, second) = (Recorder::new(), Recorder::new());
    bus.subscribe("first", first.clone()).start().await.unwrap();
    bus.subscribe("second", second.clone())
        .max_demand(7)
        .start()
        .await
        .unwrap();

    for s in 1..=100 {
        bus.notify(credit(s)).await.unwrap();
    }
    drained(&bus).await;
    let one_producer: Vec<u64> = (1..=100).collect();
    assert_eq!(seqs(first.events()), one_producer);
    assert_eq!(seqs(second.events()), one_producer);
    first.clear();
    second.clear();

    // Producer p notifies p * 1000 + 1, + 2, ... in that order.
    let producers: Vec<_> = (1..=4u64)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 1..=50 {
                    bus.notify(credit(p * 1000 + i)).await.unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        within(WAIT_SECS, "producer", producer).await.unwrap();
    }
    drained(&bus).await;
    let log_order = seqs(first.events());
    assert_eq!(log_order.len(), 200);
    assert_eq!(seqs(second.events()), log_order, "one log, one order");
    for p in 1..=4 {
        let mine: Vec<u64> = log_order
            .iter()
            .copied()
            .filter(|s| s / 1000 == p)
            .collect();
        let notified: Vec<u64> = (1..=50).map(|i| p * 1000 + i).collect();
        assert_eq!(mine, notified, "producer {p}'s events in its order");
    }
    assert!(shut_down(&bus).await.is_clean());
}

/// A partitioned subscription keeps the events of one key in order, while
/// its lanes finish in an order of their own.
pub(crate) async fn partitioned_mode_keeps_order_per_key(harness: &dyn Harness) {
    let bus = harness.open(BusSettings::default()).await;
    let shuffles = Shuffles::default();
    bus.subscribe("ledger", shuffles.clone())
        .partitioned(4, account)
        .start()
        .await
        .unwrap();

    for s in 1..=400 {
        bus.notify(credit(s)).await.unwrap();
    }
    drained(&bus).await;

    let mut per_account: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for event in shuffles.handled.of::<AccountCredited>() {
        per_account
            .entry(event.account)
            .or_default()
            .push(event.seq);
    }
    assert_eq!(per_account.len(), 8);
    for (account, got) in per_account {
        let notified: Vec<u64> = (1..=400).filter(|s| s % 8 == account).collect();
        assert_eq!(got, notified, "account {account} in notify order");
    }
    assert!(shut_down(&bus).await.is_clean());
}

/// Several tasks notify at once, more than an in-memory bus buffers by
/// default: every accepted event is handled exactly once by each
/// subscription, in every mode.
pub(crate) async fn concurrent_producers_each_event_handled_once(harness: &dyn Harness) {
    const PRODUCERS: u64 = 8;
    const EACH: u64 = 1000;
    let bus = harness.open(BusSettings::default()).await;
    let mut recorders = Vec::new();
    for (name, mode) in MODES {
        let recorder = Recorder::new();
        mode.apply(bus.subscribe(name, recorder.clone()))
            .start()
            .await
            .unwrap();
        recorders.push((name, recorder));
    }

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    bus.notify(credit(p * EACH + i)).await.unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        within(WAIT_SECS, "producer", producer).await.unwrap();
    }
    drained(&bus).await;

    let every: Vec<u64> = (0..PRODUCERS * EACH).collect();
    for (name, recorder) in &recorders {
        let counts = counts(seqs(recorder.events()));
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{name} handled some more than once: {twice:?}"
        );
        assert_eq!(counts.into_keys().collect::<Vec<_>>(), every, "{name}");
    }
    for stats in bus.stats() {
        assert_eq!(stats.delivered, PRODUCERS * EACH, "{stats:?}");
    }
    assert!(shut_down(&bus).await.is_clean());
}

/// A subscription started from now gets what is notified after its start,
/// and nothing from before, also while a producer is notifying.
pub(crate) async fn late_subscription_from_now_gets_only_new_events(harness: &dyn Harness) {
    let bus = harness.open(BusSettings::default()).await;
    let early = Recorder::new();
    bus.subscribe("early", early.clone()).start().await.unwrap();
    for s in 1..=3 {
        bus.notify(credit(s)).await.unwrap();
    }
    drained(&bus).await;

    let late = Recorder::new();
    bus.subscribe("late", late.clone())
        .start_from(StartFrom::Now)
        .start()
        .await
        .unwrap();
    for s in 4..=5 {
        bus.notify(credit(s)).await.unwrap();
    }
    drained(&bus).await;
    assert_eq!(sorted_seqs(&late), [4, 5]);
    assert_eq!(sorted_seqs(&early), [1, 2, 3, 4, 5]);

    // Started while a producer notifies: what it notified before the start
    // began does not arrive, and all it notified after the start returned
    // does; an event on its way during the start may go either way.
    let producer = produce(&bus, 1000..2000);
    eventually(WAIT_SECS, "the producer under way", || {
        producer.accepted.load(SeqCst) >= 200
    })
    .await;
    let latest = Recorder::new();
    let before = producer.accepted.load(SeqCst);
    bus.subscribe("latest", latest.clone())
        .start_from(StartFrom::Now)
        .start()
        .await
        .unwrap();
    let after = producer.accepted.load(SeqCst);
    let (accepted, _) = joined(vec![producer]).await;
    drained(&bus).await;
    // One producer, one notify at a time: `seq` 1000 + i is its i-th.
    let got: BTreeSet<u64> = sorted_seqs(&latest).into_iter().collect();
    let old: Vec<u64> = got.iter().copied().filter(|s| s - 1000 < before).collect();
    assert!(old.is_empty(), "notified before the start: {old:?}");
    let missed: Vec<u64> = accepted
        .iter()
        .copied()
        .filter(|s| s - 1000 > after && !got.contains(s))
        .collect();
    assert!(
        missed.is_empty(),
        "notified after the start, missed: {missed:?}"
    );
    assert!(shut_down(&bus).await.is_clean());
}

/// A subscription started from the beginning gets the history, also on a
/// bus opened again, where a subscription that already has a position
/// resumes from it instead.
pub(crate) async fn late_subscription_from_beginning_gets_the_history(harness: &dyn Harness) {
    {
        let bus = harness.open(BusSettings::default()).await;
        let early = Recorder::new();
        bus.subscribe("early", early.clone()).start().await.unwrap();
        for s in 1..=3 {
            bus.notify(credit(s)).await.unwrap();
        }
        drained(&bus).await;

        let late = Recorder::new();
        bus.subscribe("late", late.clone())
            .start_from(StartFrom::Beginning)
            .start()
            .await
            .unwrap();
        bus.notify(credit(4)).await.unwrap();
        drained(&bus).await;
        assert_eq!(sorted_seqs(&late), [1, 2, 3, 4]);
        assert_eq!(sorted_seqs(&early), [1, 2, 3, 4]);
        assert!(shut_down(&bus).await.is_clean());
    }

    // Reopened: a new name gets the history; a known one resumes where it
    // left off, whatever it asks to start from.
    let bus = harness.open(BusSettings::default()).await;
    let newcomer = Recorder::new();
    bus.subscribe("newcomer", newcomer.clone())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap();
    let early = Recorder::new();
    bus.subscribe("early", early.clone())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap();
    bus.notify(credit(5)).await.unwrap();
    drained(&bus).await;
    assert_eq!(
        sorted_seqs(&newcomer),
        [1, 2, 3, 4, 5],
        "the history survives"
    );
    assert_eq!(sorted_seqs(&early), [5], "a known subscription resumes");
    assert!(shut_down(&bus).await.is_clean());
}
