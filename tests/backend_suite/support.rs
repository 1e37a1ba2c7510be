//! What the cases share: the one event they notify, consumers that fail,
//! wait or shuffle on purpose, producers, and ways to read what arrived.

use eventbus::testing::Recorder;
use eventbus::{
    AnyEvent, BoxError, Bus, Consumer, NotifyError, ShutdownReport, SubscriptionBuilder,
    SubscriptionStats, event,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

pub(crate) use crate::common::{Gate, eventually, within};

/// An account was credited. `seq` is unique within a case, so it names the
/// event; `account` is the key of partitioned subscriptions.
#[event(name = "account.credited")]
pub(crate) struct AccountCredited {
    pub(crate) account: u64,
    pub(crate) seq: u64,
}

/// Event `seq`, on one of eight accounts.
pub(crate) fn credit(seq: u64) -> AccountCredited {
    AccountCredited::new(seq % 8, seq)
}

/// The partition key of an event.
pub(crate) fn account(event: &AnyEvent) -> u64 {
    event
        .downcast_ref::<AccountCredited>()
        .expect("the suite notifies only `account.credited`")
        .account
}

/// The `seq` of an event.
pub(crate) fn seq(event: &AnyEvent) -> u64 {
    event
        .downcast_ref::<AccountCredited>()
        .expect("the suite notifies only `account.credited`")
        .seq
}

/// The `seq` of each event, in the order given.
pub(crate) fn seqs(events: impl IntoIterator<Item = AnyEvent>) -> Vec<u64> {
    events.into_iter().map(|e| seq(&e)).collect()
}

/// The `seq`s `recorder` handled, sorted: for cases where order is not
/// the point.
pub(crate) fn sorted_seqs(recorder: &Recorder) -> Vec<u64> {
    let mut seqs = seqs(recorder.events());
    seqs.sort_unstable();
    seqs
}

/// How often each `seq` arrived.
pub(crate) fn counts(seqs: impl IntoIterator<Item = u64>) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    for seq in seqs {
        *counts.entry(seq).or_default() += 1;
    }
    counts
}

/// Long enough for work that can finish to finish on a loaded machine; a
/// wait that takes longer is a hang, and fails the case.
pub(crate) const WAIT_SECS: u64 = 30;

/// `bus.drain()`, bounded, and expected to succeed.
pub(crate) async fn drained(bus: &Bus) {
    within(WAIT_SECS, "drain", bus.drain())
        .await
        .expect("drain failed");
}

/// `bus.shutdown()`, bounded (the deadline is the bus's own; this only
/// catches a shutdown that ignores it).
pub(crate) async fn shut_down(bus: &Bus) -> ShutdownReport {
    within(WAIT_SECS, "shutdown", bus.shutdown()).await
}

/// The final counters of `name` in `report`.
pub(crate) fn final_stats<'a>(report: &'a ShutdownReport, name: &str) -> &'a SubscriptionStats {
    report
        .stats
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("the shutdown report has no `{name}`: {report:?}"))
}

/// A task notifying a range of `seq`s until the bus refuses one.
pub(crate) struct Producer {
    /// How many were accepted so far.
    pub(crate) accepted: Arc<AtomicU64>,
    /// The `seq`s accepted, and the one refused, if any.
    pub(crate) task: JoinHandle<(Vec<u64>, Option<u64>)>,
}

pub(crate) fn produce(bus: &Bus, seqs: std::ops::Range<u64>) -> Producer {
    let bus = bus.clone();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        let mut accepted = Vec::new();
        for s in seqs {
            match bus.notify(credit(s)).await {
                Ok(()) => {
                    accepted.push(s);
                    count.fetch_add(1, SeqCst);
                }
                Err(NotifyError::Closed(event)) => {
                    assert_eq!(seq(&event), s, "the refused event is handed back");
                    return (accepted, Some(s));
                }
                Err(other) => panic!("notify failed: {other}"),
            }
        }
        (accepted, None)
    });
    Producer { accepted, task }
}

/// Everything the producers got `Ok` for, and what they were refused.
pub(crate) async fn joined(producers: Vec<Producer>) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let (mut accepted, mut refused) = (BTreeSet::new(), BTreeSet::new());
    for producer in producers {
        let (ok, no) = within(WAIT_SECS, "producer", producer.task).await.unwrap();
        accepted.extend(ok);
        refused.extend(no);
    }
    (accepted, refused)
}

/// How a subscription hands out events, for cases that run once per mode.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    Sequential,
    Concurrent(usize),
    /// Keyed by account.
    Partitioned(usize),
}

/// One subscription per mode, each named for what it could be.
pub(crate) const MODES: [(&str, Mode); 3] = [
    ("ledger", Mode::Sequential),
    ("mailer", Mode::Concurrent(4)),
    ("search", Mode::Partitioned(3)),
];

impl Mode {
    pub(crate) fn apply<C: Consumer>(
        self,
        builder: SubscriptionBuilder<'_, C>,
    ) -> SubscriptionBuilder<'_, C> {
        match self {
            Mode::Sequential => builder.sequential(),
            Mode::Concurrent(limit) => builder.concurrent(limit),
            Mode::Partitioned(lanes) => builder.partitioned(lanes, account),
        }
    }
}

/// The retry policy of the failure cases: quick, so a case takes
/// milliseconds, and with the given number of attempts.
pub(crate) fn quick_retry(attempts: u32) -> eventbus::Retry {
    eventbus::Retry::exponential(Duration::from_millis(5))
        .max_attempts(attempts)
        .max_delay(Duration::from_millis(20))
}

/// Fails the first `failures` attempts at every event, then records it.
/// Every attempt is logged, so a case sees the event come again.
#[derive(Clone)]
pub(crate) struct FailsFirst {
    failures: u32,
    /// Every attempt, in order: (seq, event id).
    attempts: Arc<Mutex<Vec<(u64, eventbus::Uuid)>>>,
    pub(crate) handled: Recorder,
}

impl FailsFirst {
    pub(crate) fn new(failures: u32) -> Self {
        FailsFirst {
            failures,
            attempts: Arc::default(),
            handled: Recorder::new(),
        }
    }

    /// Every attempt so far, in order: (seq, event id).
    pub(crate) fn attempts(&self) -> Vec<(u64, eventbus::Uuid)> {
        self.attempts.lock().expect("attempts lock").clone()
    }
}

impl Consumer for FailsFirst {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let seq = seq(event);
        let attempt = {
            let mut attempts = self.attempts.lock().expect("attempts lock");
            attempts.push((seq, event.meta().id));
            attempts.iter().filter(|(s, _)| *s == seq).count()
        };
        if attempt <= self.failures as usize {
            return Err(format!("attempt {attempt} at event {seq} fails on purpose").into());
        }
        self.handled.handle(event).await
    }
}

/// The cause a payment provider gives.
#[derive(Debug, thiserror::Error)]
#[error("card declined")]
pub(crate) struct CardDeclined;

/// What the payments consumer returns: a failure with a cause, so the
/// dead letter's error chain has two entries.
#[derive(Debug, thiserror::Error)]
#[error("charge failed")]
pub(crate) struct ChargeFailed(#[source] pub(crate) CardDeclined);

/// Fails every event with [`ChargeFailed`], caused by [`CardDeclined`].
#[derive(Clone, Copy, Default)]
pub(crate) struct Declines;

impl Consumer for Declines {
    async fn handle(&self, _event: &AnyEvent) -> Result<(), BoxError> {
        Err(ChargeFailed(CardDeclined).into())
    }
}

/// Fails every event with a [`Permanent`](eventbus::Permanent) error
/// wrapped in an error of its own, so the mark is found in the chain.
#[derive(Clone, Copy, Default)]
pub(crate) struct DeclinesForGood;

impl Consumer for DeclinesForGood {
    async fn handle(&self, _event: &AnyEvent) -> Result<(), BoxError> {
        Err(ChargeFailedFor(eventbus::Permanent::new(CardDeclined)).into())
    }
}

/// An error whose source is a permanent one.
#[derive(Debug, thiserror::Error)]
#[error("charge failed")]
pub(crate) struct ChargeFailedFor(#[source] pub(crate) eventbus::Permanent);

/// Records each event after yielding a number of times that depends on
/// it, so lanes and tasks finish in an order of their own.
#[derive(Clone, Default)]
pub(crate) struct Shuffles {
    pub(crate) handled: Recorder,
}

impl Consumer for Shuffles {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let seq = seq(event);
        for _ in 0..(seq * 7) % 5 {
            tokio::task::yield_now().await;
        }
        self.handled.handle(event).await
    }
}
