//! Partitioned mode: sequential lanes, one task each; events with the same
//! key go to the same lane and so stay in order, different keys run in
//! parallel, and a watermark turns their finishes into the position to
//! commit.

use super::super::KeyFn;
use super::super::deliver::{Deliverer, InFlight, Rerun, guarded};
use crate::backend::{Position, Watermark};
use crate::consumer::Consumer;
use crate::event::AnyEvent;
use crate::failure::panic_message;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub(in crate::subscription) struct Partitioned<C> {
    deliverer: Arc<Deliverer<C>>,
    senders: Vec<mpsc::Sender<Work>>,
    tasks: JoinSet<()>,
    key: KeyFn,
    pub(super) watermark: Arc<Watermark>,
}

/// What a lane is handed: an event from the log, or a dead letter's event
/// replayed or a parked event retried in the lane of its key; each counted
/// in flight until done.
enum Work {
    Event {
        position: Position,
        event: AnyEvent,
        attempt: u32,
        in_flight: InFlight,
    },
    Rerun(Rerun, InFlight),
}

impl<C: Consumer> Partitioned<C> {
    pub(super) fn new(
        deliverer: &Arc<Deliverer<C>>,
        lanes: usize,
        key: &KeyFn,
        max_demand: usize,
    ) -> Self {
        let watermark: Arc<Watermark> = Arc::default();
        let depth = (max_demand / lanes).max(1);
        let mut tasks = JoinSet::new();
        let senders = (0..lanes)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Work>(depth);
                let handling = deliverer.state.handling();
                tasks.spawn(handling.scope(lane(
                    Arc::clone(deliverer),
                    Arc::clone(&watermark),
                    rx,
                )));
                tx
            })
            .collect();
        Partitioned {
            deliverer: Arc::clone(deliverer),
            senders,
            tasks,
            key: Arc::clone(key),
            watermark,
        }
    }

    /// The lane of `event`'s key, or `None` (after dead-lettering it as one
    /// failed attempt) when the key function panicked: it would fail every
    /// attempt alike.
    async fn lane_of(&self, position: Option<Position>, event: &AnyEvent) -> Option<usize> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| (self.key)(event))) {
            Ok(key) => Some((key % self.senders.len() as u64) as usize),
            Err(panic) => {
                self.deliverer
                    .key_failed(position, event, panic_message(&*panic))
                    .await;
                None
            }
        }
    }

    /// Queues `event` on the lane of its key, waiting while that lane is
    /// full.
    pub(super) async fn event(
        &mut self,
        position: Position,
        event: &AnyEvent,
        attempt: u32,
    ) -> bool {
        let Some(lane) = self.lane_of(Some(position), event).await else {
            // Dead-lettered, so finished; never started in the watermark.
            return true;
        };
        self.watermark.start(position);
        let work = Work::Event {
            position,
            event: event.clone(),
            attempt,
            in_flight: InFlight::event(&self.deliverer.state),
        };
        // A lane ends early only when a delivery in it panicked, which
        // stops the subscription: the event stays unfinished, for a durable
        // log to deliver again.
        self.senders[lane].send(work).await.is_ok()
    }

    /// Queues a replay or a parked event on the lane of its key, behind
    /// the events of that key already there.
    pub(super) async fn rerun(&mut self, rerun: Rerun) -> bool {
        let in_flight = InFlight::rerun(&self.deliverer.state, &rerun);
        let Some(lane) = self.lane_of(None, rerun.event()).await else {
            // As for a new event: one failed attempt, then a new letter;
            // the old letter (or the parked event) goes.
            self.deliverer.rerun_dead_lettered(rerun).await;
            drop(in_flight);
            return true;
        };
        // Refused by a lane that ended, it is dropped: its letter stays
        // stored, and a parked event stays parked.
        self.senders[lane]
            .send(Work::Rerun(rerun, in_flight))
            .await
            .is_ok()
    }

    /// Lets the lanes finish what they were handed, and waits for them.
    pub(super) async fn finish(self) {
        let Partitioned {
            senders, mut tasks, ..
        } = self;
        drop(senders);
        while tasks.join_next().await.is_some() {}
    }
}

/// One lane: its events in order, until the runner drops the sender or a
/// delivery panics around its consumer (which stops the subscription: the
/// lane's queued events stay unfinished, in order, for a restart).
async fn lane<C: Consumer>(
    deliverer: Arc<Deliverer<C>>,
    watermark: Arc<Watermark>,
    mut rx: mpsc::Receiver<Work>,
) {
    let state = &deliverer.state;
    while let Some(work) = rx.recv().await {
        match work {
            Work::Event {
                position,
                event,
                attempt,
                in_flight,
            } => {
                let delivered = guarded(state, deliverer.deliver(Some(position), &event, attempt));
                let finished = delivered.await;
                drop(in_flight);
                if !finished {
                    return;
                }
                watermark.finish(position);
            }
            Work::Rerun(rerun, in_flight) => {
                let replayed = guarded(state, deliverer.rerun(rerun)).await;
                drop(in_flight);
                if !replayed {
                    return;
                }
            }
        }
    }
}
