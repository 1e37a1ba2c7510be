//! The three ways a subscription hands events to its consumer, behind one
//! interface the runner uses: take an event or a replay (waiting for room),
//! start what waits before the runner waits, report the finished position,
//! and finish what was taken. Every delivery in every mode runs through
//! [`guarded`](super::deliver::guarded), the one panic policy, and counts
//! itself in flight with [`InFlight`](super::deliver::InFlight).

mod concurrent;
mod partitioned;
mod sequential;

use self::concurrent::Concurrent;
use self::partitioned::Partitioned;
use self::sequential::Sequential;
use super::Mode;
use super::deliver::{Deliverer, Rerun, survived};
use crate::backend::{Position, Watermark};
use crate::consumer::Consumer;
use crate::event::AnyEvent;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// A subscription's mode, running.
pub(super) enum Dispatch<C> {
    Sequential(Sequential<C>),
    Concurrent(Concurrent<C>),
    Partitioned(Partitioned<C>),
}

impl<C: Consumer> Dispatch<C> {
    pub(super) fn new(mode: &Mode, max_demand: usize, deliverer: &Arc<Deliverer<C>>) -> Self {
        match mode {
            Mode::Sequential => Dispatch::Sequential(Sequential::new(deliverer)),
            Mode::Concurrent(limit) => Dispatch::Concurrent(Concurrent::new(deliverer, *limit)),
            Mode::Partitioned { lanes, key } => {
                Dispatch::Partitioned(Partitioned::new(deliverer, *lanes, key, max_demand))
            }
        }
    }

    /// Takes the event at `position`, waiting for room. `false` when the
    /// subscription stops instead (a delivery panicked around its
    /// consumer); the event is then unfinished.
    pub(super) async fn event(
        &mut self,
        position: Position,
        event: &AnyEvent,
        attempt: u32,
    ) -> bool {
        match self {
            // The runner takes this path itself (see `Sequential::take`);
            // here for completeness.
            Dispatch::Sequential(mode) => {
                let (deliverer, _in_flight) = mode.take();
                let delivery = deliverer.deliver(Some(position), event, attempt);
                let caught = AssertUnwindSafe(delivery).catch_unwind().await;
                survived(&deliverer.state, caught)
            }
            Dispatch::Concurrent(mode) => mode.event(position, event, attempt).await,
            Dispatch::Partitioned(mode) => mode.event(position, event, attempt).await,
        }
    }

    /// Sequential mode, to take an event without the future of
    /// [`event`](Dispatch::event) around its own: the runner's path for
    /// every event of the most common mode.
    #[inline]
    pub(super) fn sequential(&mut self) -> Option<&mut Sequential<C>> {
        match self {
            Dispatch::Sequential(mode) => Some(mode),
            _ => None,
        }
    }

    /// Takes a replay or a parked event, as a new event of the mode would
    /// be taken. `false` when the subscription stops instead; the letter
    /// stays, and so does the parked event.
    pub(super) async fn rerun(&mut self, rerun: Rerun) -> bool {
        match self {
            Dispatch::Sequential(mode) => mode.rerun(rerun).await,
            Dispatch::Concurrent(mode) => mode.rerun(rerun).await,
            Dispatch::Partitioned(mode) => mode.rerun(rerun).await,
        }
    }

    /// Starts what was taken and waits to start, before the runner waits.
    pub(super) fn launch(&mut self) {
        if let Dispatch::Concurrent(mode) = self {
            mode.launch();
        }
    }

    /// Frees what finished, once a read.
    pub(super) fn reap(&mut self) {
        if let Dispatch::Concurrent(mode) = self {
            mode.reap();
        }
    }

    /// Where finishes out of order are turned into the position to commit;
    /// `None` in sequential mode, where events finish in order.
    pub(super) fn watermark(&self) -> Option<&Arc<Watermark>> {
        match self {
            Dispatch::Sequential(_) => None,
            Dispatch::Concurrent(mode) => Some(&mode.watermark),
            Dispatch::Partitioned(mode) => Some(&mode.watermark),
        }
    }

    /// Finishes what was taken.
    pub(super) async fn finish(self) {
        match self {
            Dispatch::Sequential(_) => {}
            Dispatch::Concurrent(mode) => mode.finish().await,
            Dispatch::Partitioned(mode) => mode.finish().await,
        }
    }
}
