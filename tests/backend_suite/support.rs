//! What the cases share: the one event they notify, a consumer that
//! shuffles on purpose, producers, and ways to read what arrived.

use eventbus::testing::Recorder;
use eventbus::{
    AnyEvent, BoxError, Bus, Consumer, NotifyError, ShutdownReport, SubscriptionBuilder, event,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use tokio::task::JoinHandle;

pub(crate) use crate::common::{eventually, within};

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
