//! What a running subscription shares with its handle and the bus: counters,
//! the finished position, and the controls to flush and stop it.

use crate::backend::Position;
use crate::handling::Handling;
use crate::stall::Stall;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::AbortHandle;

/// A snapshot of one subscription's counters, from
/// [`Bus::stats`](crate::Bus::stats) or
/// [`Subscription::stats`](crate::Subscription::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionStats {
    /// The subscription's name.
    pub name: String,
    /// Events handled successfully, retries and replays included.
    pub delivered: u64,
    /// Failed attempts: errors and panics.
    pub failed: u64,
    /// Attempts that were retries.
    pub retried: u64,
    /// Events given up on and written to the dead letters.
    pub dead_lettered: u64,
    /// Events passed over by the filter.
    pub filtered: u64,
    /// Events being handled right now.
    pub in_flight: u64,
    /// Events notified but not yet finished by this subscription.
    pub lag: u64,
    /// Dead letters sent back to this subscription whose replay has not
    /// finished; each stays stored until it has.
    pub replaying: u64,
    /// Failed events parked in the backend's store until their next
    /// attempt, which the subscription moved on past (PostgreSQL's
    /// `park_retries`), by any process: as the store counted them last,
    /// after every change this process made, and every second while any
    /// are parked (every 5 s while none are). `drain` waits for them.
    /// Always 0 on a backend that retries in place.
    pub parked: u64,
    /// Payloads the consumer holds and has not written yet (a
    /// [`ProtocolConsumer`](crate::ProtocolConsumer)'s batch). A
    /// subscription stopped at a deadline drops them; a durable log
    /// delivers their events again after a restart.
    pub buffered: u64,
    /// Why the subscription cannot move on right now, if it cannot: a dead
    /// letter it cannot store, a position it cannot commit, a log it cannot
    /// read. It keeps trying; this clears once it succeeds.
    pub stalled: Option<String>,
    /// Whether the subscription is [paused](crate::Subscription::pause):
    /// it takes no new events and runs no replays until resumed.
    pub paused: bool,
}

/// Written by the subscription's own tasks at every event; aligned to a
/// cache line of its own, so no other subscription's writes share it.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: Arc<AtomicU64>,
    pub(crate) filtered: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) buffered: Arc<AtomicU64>,
}

pub(crate) struct State {
    pub(crate) name: Arc<str>,
    /// The address of the bus's shared state, to tell its handlers apart.
    pub(crate) bus: usize,
    pub(crate) stall: Arc<Stall>,
    pub(crate) counters: Counters,
    /// Every event before this position is finished. Also pinged when a
    /// replay ends and when the runner finishes, for whoever waits.
    pub(crate) done: Progress,
    /// The position after the last event the backend said it held when
    /// the subscription last committed (events of earlier runs and of
    /// other processes included). One position, not a count added to
    /// `done`: read together with a `done` of another moment, a count
    /// would point past every event and `drain` would wait forever.
    pub(crate) known_head: AtomicU64,
    /// Set when the reader's positions are not one per event (see
    /// [`Reader::head`](crate::backend::Reader::head)): the lag in stats
    /// is then the count the reader reported last, in `reader_lag`.
    pub(crate) sparse: bool,
    pub(crate) reader_lag: AtomicU64,
    /// The count of unfinished events the backend keeps current, for one
    /// whose count cannot be added up from this process's writes.
    pub(crate) live_lag: Option<Arc<AtomicU64>>,
    /// Whether the backend settles each delivery on its own, or other
    /// processes finish part of the subscription, so `done` does not say
    /// what finished: `drain` asks the backend.
    pub(crate) settles: bool,
    /// Whether other processes finish part of the subscription, on a
    /// backend whose positions are the same in every process: `drain` then
    /// asks about everything the backend held at the last commit too, not
    /// only what this process notified.
    pub(crate) finished_elsewhere: bool,
    /// How many events this process had accepted when `reader_lag` was
    /// reported: those accepted since are added to it.
    pub(crate) accepted_at_lag: AtomicU64,
    /// Replays sent but not yet finished.
    pub(crate) replays: Arc<AtomicU64>,
    /// Failed events of this subscription parked in the retry store, as
    /// the store counted them last; and how many changes this process
    /// made to them, in all and as of that count. While the two differ
    /// the count is stale: the runner counts again, and `drain` waits.
    pub(crate) parked: AtomicU64,
    pub(crate) parked_changes: AtomicU64,
    pub(crate) parked_counted: AtomicU64,
    /// The earliest retry this process parked since the runner last
    /// looked, and the runner's wake-up for it.
    pub(crate) parked_due: Mutex<Option<tokio::time::Instant>>,
    pub(crate) look_at_parked: Notify,
    pub(crate) stop: AtomicBool,
    /// Whether the subscription is paused; waiters see changes, and a stop
    /// wakes them too. `paused_now` mirrors it for the check per event.
    pub(crate) paused: watch::Sender<bool>,
    pub(crate) paused_now: AtomicBool,
    /// Set when the subscription is stopped at a shutdown deadline. A
    /// concurrent delivery still running returns at its next poll without
    /// resuming the consumer, whichever task it was spawned from.
    pub(crate) aborted: AtomicBool,
    /// Set when the runner has ended, however it ended, so nobody waits on
    /// a subscription that will never move again.
    pub(crate) finished: AtomicBool,
    /// Wakes the runner: a stop, a pause or resume, a flush or a replay
    /// asked for.
    pub(crate) wake: Arc<crate::signal::Signal>,
    pub(crate) flush: mpsc::Sender<oneshot::Sender<()>>,
    /// Aborts the subscription's task, at a shutdown deadline.
    pub(crate) abort: Mutex<Option<AbortHandle>>,
    /// Its filter, mode and consumer, for the registry's route lines.
    pub(crate) wiring: crate::registry::Wiring,
}

impl State {
    /// The counters now, given the position after the last event this
    /// process notified and how many it notified.
    pub(crate) fn stats(&self, head: Position, accepted: u64) -> SubscriptionStats {
        let c = &self.counters;
        SubscriptionStats {
            name: self.name.to_string(),
            delivered: c.delivered.load(Relaxed),
            failed: c.failed.load(Relaxed),
            retried: c.retried.load(Relaxed),
            dead_lettered: c.dead_lettered.load(Relaxed),
            filtered: c.filtered.load(Relaxed),
            in_flight: c.in_flight.load(Relaxed),
            lag: if let Some(live) = &self.live_lag {
                live.load(Relaxed)
            } else if self.sparse {
                self.reader_lag.load(Relaxed)
                    + accepted.saturating_sub(self.accepted_at_lag.load(Relaxed))
            } else {
                head.max(self.known_head.load(Relaxed))
                    .saturating_sub(self.done.get())
            },
            replaying: self.replays.load(Relaxed),
            parked: self.parked.load(Relaxed),
            buffered: c.buffered.load(Relaxed),
            stalled: self.stall.get().map(|s| s.reason),
            paused: self.is_paused(),
        }
    }

    /// The position `drain` asks the backend about, given `head`, what
    /// this process notified: also what the backend held at the last
    /// commit, where other processes finish part of the subscription and
    /// positions are the same in every process.
    pub(crate) fn asked_up_to(&self, head: Position) -> Position {
        if self.finished_elsewhere {
            head.max(self.known_head.load(Relaxed))
        } else {
            head
        }
    }

    /// What a handler of this subscription carries, so the bus can tell it
    /// is inside one.
    pub(crate) fn handling(&self) -> Handling {
        Handling {
            bus: self.bus,
            subscription: self as *const State as usize,
        }
    }

    /// Resolves once the subscription's task has ended, however it ended.
    pub(crate) async fn finished(&self) {
        let _watching = self.done.watch();
        loop {
            let changed = self.done.changed();
            if self.finished.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            changed.await;
        }
    }

    /// Asks the runner to read no further and finish.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.raise();
        // A runner waiting for a resume checks the stop flag again.
        self.paused.send_modify(|_| {});
    }

    #[inline]
    pub(crate) fn is_paused(&self) -> bool {
        self.paused_now.load(Relaxed)
    }

    /// Pauses or resumes; returns whether that changed anything.
    pub(crate) fn set_paused(&self, paused: bool) -> bool {
        // The flag changes under the channel's lock, with the value it
        // mirrors: racing calls leave both saying the same.
        let changed = self.paused.send_if_modified(|now| {
            let changed = *now != paused;
            *now = paused;
            self.paused_now
                .store(paused, std::sync::atomic::Ordering::SeqCst);
            changed
        });
        if changed {
            self.wake.raise();
            tracing::info!(
                subscription = %self.name,
                "{}",
                if paused { "subscription paused" } else { "subscription resumed" },
            );
        }
        changed
    }

    /// Waits while the subscription is paused. Returns `false` when it is
    /// being stopped instead.
    pub(crate) async fn resumed(&self) -> bool {
        let stopping = || self.stop.load(std::sync::atomic::Ordering::SeqCst);
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|p| !*p || stopping()).await;
        !stopping()
    }

    /// Stops the subscription now, at a deadline: deliveries in flight do
    /// not resume their consumer, and the task is aborted. Resolves once it
    /// has ended.
    pub(crate) async fn abort(&self) {
        self.aborted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(abort) = self.abort.lock().expect("abort lock").as_ref() {
            abort.abort();
        }
        self.finished().await;
        // Nothing of it runs any more; replays cut short keep their
        // letters, and its final counters say so.
        self.counters.in_flight.store(0, Relaxed);
        self.counters.buffered.store(0, Relaxed);
        self.replays.store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// This process parked, re-parked or removed a parked event: the
    /// runner counts them again.
    pub(crate) fn parked_changed(&self) {
        self.parked_changes.fetch_add(1, SeqCst);
        self.look_at_parked.notify_one();
    }

    /// Whether this process changed the parked events since they were
    /// last counted.
    pub(crate) fn parked_stale(&self) -> bool {
        self.parked_changes.load(SeqCst) != self.parked_counted.load(SeqCst)
    }

    /// A retry was parked, due after `delay`: the runner looks for it
    /// then.
    pub(crate) fn parked_for(&self, delay: std::time::Duration) {
        let at = tokio::time::Instant::now() + delay;
        let mut due = self.parked_due.lock().expect("parked_due lock");
        *due = Some(due.map_or(at, |d| d.min(at)));
        drop(due);
        self.look_at_parked.notify_one();
    }

    pub(crate) fn mark_finished(&self) {
        self.finished
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.done.ping();
    }

    #[inline]
    pub(crate) fn set_done(&self, position: Position) {
        self.done.advance(position);
    }
}

/// A position that only grows, with wake-ups for whoever waits on it.
///
/// Not a `watch` channel: that takes eight locks at every change, and the
/// position changes once per event when events come one at a time. This
/// costs one atomic operation, and a wake-up only while somebody watches.
pub(crate) struct Progress {
    value: AtomicU64,
    changed: Notify,
    watchers: AtomicUsize,
}

impl Progress {
    pub(crate) fn new(start: Position) -> Self {
        Progress {
            value: AtomicU64::new(start),
            changed: Notify::new(),
            watchers: AtomicUsize::new(0),
        }
    }

    #[inline]
    pub(crate) fn get(&self) -> Position {
        self.value.load(SeqCst)
    }

    /// Moves the position up to `to`; never back.
    #[inline]
    pub(crate) fn advance(&self, to: Position) {
        if self.value.fetch_max(to, SeqCst) < to {
            self.ping();
        }
    }

    /// Wakes the watchers, for a change they look at besides the position.
    pub(crate) fn ping(&self) {
        if self.watchers.load(SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }

    /// Counts the caller as a watcher while the guard lives: pings reach
    /// only [`changed`](Self::changed) futures made while one is held.
    pub(crate) fn watch(&self) -> Watching<'_> {
        self.watchers.fetch_add(1, SeqCst);
        Watching(&self.watchers)
    }

    /// Resolves at the first ping after this call. Make it, then look at
    /// what it guards, then await it: a change in between is not missed.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// A watcher of a [`Progress`], counted while it lives.
pub(crate) struct Watching<'a>(&'a AtomicUsize);

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// The subscription's task: marks the subscription finished once the runner
/// is gone, whether it returned, panicked or was aborted, and only after
/// the runner (and every delivery it owns) has been dropped.
pub(crate) struct Tracked<F> {
    pub(crate) runner: Option<std::pin::Pin<Box<F>>>,
    pub(crate) state: Arc<State>,
}

impl<F: std::future::Future> std::future::Future for Tracked<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let runner = self.runner.as_mut().expect("polled after completion");
        let output = std::task::ready!(runner.as_mut().poll(cx));
        self.runner = None;
        self.state.mark_finished();
        std::task::Poll::Ready(output)
    }
}

impl<F> Drop for Tracked<F> {
    fn drop(&mut self) {
        if self.runner.take().is_some() {
            self.state.mark_finished();
        }
    }
}
