//! Concurrent mode: one task per event, at most `limit` in flight; events
//! take their permits in log order and finish in any order, which a
//! watermark turns into the position to commit.

use super::super::deliver::{Deliverer, InFlight, Rerun, guarded, survived};
use super::super::state::State;
use crate::backend::{Position, Watermark};
use crate::consumer::Consumer;
use crate::event::AnyEvent;
use futures_util::FutureExt;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// How many concurrent deliveries one fan-out task spawns.
const FAN_OUT: usize = 32;

/// Fewer pending deliveries than this are spawned by the runner itself.
const FAN_OUT_FROM: usize = 4;

pub(in crate::subscription) struct Concurrent<C> {
    deliverer: Arc<Deliverer<C>>,
    permits: Arc<Semaphore>,
    pub(super) watermark: Arc<Watermark>,
    /// The tasks in flight: deliveries and fan-outs (see [`Pending`]).
    /// Dropping the set (when the runner is aborted at a shutdown
    /// deadline) aborts them, and an aborted fan-out aborts its deliveries;
    /// the subscription's `aborted` flag, set first, keeps any of them from
    /// resuming the consumer in between.
    tasks: JoinSet<()>,
    pending: Pending,
}

/// An event that holds a concurrency permit and waits to be spawned.
struct Started {
    position: Position,
    event: AnyEvent,
    attempt: u32,
    permit: OwnedSemaphorePermit,
    in_flight: InFlight,
}

impl<C: Consumer> Concurrent<C> {
    pub(super) fn new(deliverer: &Arc<Deliverer<C>>, limit: usize) -> Self {
        Concurrent {
            deliverer: Arc::clone(deliverer),
            permits: Arc::new(Semaphore::new(limit)),
            watermark: Arc::default(),
            tasks: JoinSet::new(),
            pending: Pending::default(),
        }
    }

    async fn permit(&mut self) -> OwnedSemaphorePermit {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return permit;
        }
        // Whatever already holds a permit starts before the runner waits
        // for the next one.
        self.launch();
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the runner never closes its semaphore")
    }

    /// Takes a permit for `event` (waiting for one) and queues it to be
    /// spawned.
    pub(super) async fn event(
        &mut self,
        position: Position,
        event: &AnyEvent,
        attempt: u32,
    ) -> bool {
        let permit = self.permit().await;
        self.watermark.start(position);
        self.pending.push(Started {
            position,
            event: event.clone(),
            attempt,
            permit,
            in_flight: InFlight::event(&self.deliverer.state),
        });
        if self.pending.is_full() {
            self.launch();
        }
        true
    }

    /// Runs a replay or a parked event as a task holding one of the
    /// permits, as a new event would.
    pub(super) async fn rerun(&mut self, rerun: Rerun) -> bool {
        let permit = self.permit().await;
        let in_flight = InFlight::rerun(&self.deliverer.state, &rerun);
        let deliverer = Arc::clone(&self.deliverer);
        self.tasks.spawn(async move {
            let state = &deliverer.state;
            unless_aborted(state, guarded(state, deliverer.rerun(rerun))).await;
            drop(in_flight);
            drop(permit);
        });
        true
    }

    /// Starts the deliveries that wait for a fan-out.
    pub(super) fn launch(&mut self) {
        self.pending
            .launch(&mut self.tasks, &self.deliverer, &self.watermark);
    }

    /// Frees finished tasks, so the set holds about what is in flight.
    pub(super) fn reap(&mut self) {
        while let Some(joined) = self.tasks.try_join_next() {
            report_joined(&self.deliverer.state, joined);
        }
    }

    pub(super) async fn finish(mut self) {
        debug_assert!(self.pending.0.is_empty(), "launched before every wait");
        while let Some(joined) = self.tasks.join_next().await {
            report_joined(&self.deliverer.state, joined);
        }
    }
}

/// Concurrent deliveries the runner has admitted but not spawned yet.
///
/// The runner spawns one task per event, and spawning costs more than
/// everything else it does per event. When many events are admitted at once
/// (a burst into a subscription with free permits) the runner hands them over
/// [`FAN_OUT`] at a time to a fan-out task that spawns them, so the spawning
/// runs on every worker thread instead of queueing behind the one runner.
/// Fewer than [`FAN_OUT_FROM`] are spawned directly, so a trickle pays no
/// extra hop. The runner launches what is pending before every wait, so an
/// admitted event never sits behind a permit or a release.
#[derive(Default)]
struct Pending(Vec<Started>);

impl Pending {
    fn push(&mut self, started: Started) {
        if self.0.capacity() == 0 {
            self.0.reserve_exact(FAN_OUT);
        }
        self.0.push(started);
    }

    fn is_full(&self) -> bool {
        self.0.len() >= FAN_OUT
    }

    fn launch<C: Consumer>(
        &mut self,
        tasks: &mut JoinSet<()>,
        deliverer: &Arc<Deliverer<C>>,
        watermark: &Arc<Watermark>,
    ) {
        match self.0.len() {
            // A fan-out would cost a spawn and a set of its own; a few
            // deliveries are cheaper to spawn here.
            0..FAN_OUT_FROM => {
                for started in self.0.drain(..) {
                    tasks.spawn(deliver_one(
                        Arc::clone(deliverer),
                        Arc::clone(watermark),
                        started,
                    ));
                }
            }
            _ => {
                let batch = std::mem::take(&mut self.0);
                let deliverer = Arc::clone(deliverer);
                let watermark = Arc::clone(watermark);
                tasks.spawn(async move {
                    // A set, not a list awaited in order: each finished
                    // delivery is reaped (and its task freed) at once, even
                    // while a slow one of the same group runs on. Dropping
                    // the set, when this task is aborted, aborts them.
                    let mut deliveries = JoinSet::new();
                    for started in batch {
                        deliveries.spawn(deliver_one(
                            Arc::clone(&deliverer),
                            Arc::clone(&watermark),
                            started,
                        ));
                    }
                    while let Some(joined) = deliveries.join_next().await {
                        report_joined(&deliverer.state, joined);
                    }
                });
            }
        }
    }
}

/// A task that ended other than by returning: every delivery runs
/// [`guarded`], so this is a bug in the runtime itself. Said loudly; its
/// event stays unfinished.
fn report_joined(state: &State, joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined
        && err.is_panic()
    {
        tracing::error!(
            subscription = %state.name,
            panic = %crate::failure::panic_message(&*err.into_panic()),
            "a delivery task panicked; its event stays unfinished",
        );
    }
}

/// Runs `work` as a handler of the subscription, unless it is stopped at
/// a deadline: an abort reaches a task spawned by a fan-out one hop later
/// than the runner, and until then the flag keeps the consumer from being
/// resumed. `None` when it was stopped.
async fn unless_aborted<T>(state: &State, work: impl Future<Output = T>) -> Option<T> {
    let mut work = pin!(work);
    state
        .handling()
        .scope(poll_fn(|cx| {
            if state.aborted.load(Relaxed) {
                return Poll::Ready(None);
            }
            work.as_mut().poll(cx).map(Some)
        }))
        .await
}

/// One concurrent delivery, from admission to its finished position.
async fn deliver_one<C: Consumer>(
    deliverer: Arc<Deliverer<C>>,
    watermark: Arc<Watermark>,
    started: Started,
) {
    let Started {
        position,
        event,
        attempt,
        permit,
        in_flight,
    } = started;
    let state = &deliverer.state;
    // Caught in place, as in sequential mode: one wrapper around the
    // delivery's future instead of two, on the path of every event.
    let delivered =
        AssertUnwindSafe(deliverer.deliver(Some(position), &event, attempt)).catch_unwind();
    let finished = match unless_aborted(state, delivered).await {
        Some(caught) => survived(state, caught),
        None => false,
    };
    drop(in_flight);
    if finished {
        watermark.finish(position);
    }
    drop(permit);
}
