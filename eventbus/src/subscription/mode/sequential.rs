//! Sequential mode: one event at a time, in log order, inside the
//! subscription's own task.

use super::super::deliver::{Alone, Deliverer, guarded, survived};
use crate::backend::Position;
use crate::consumer::Consumer;
use crate::dead_letter::Replay;
use crate::event::AnyEvent;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

pub(in crate::subscription) struct Sequential<C> {
    deliverer: Arc<Deliverer<C>>,
}

impl<C: Consumer> Sequential<C> {
    pub(super) fn new(deliverer: &Arc<Deliverer<C>>) -> Self {
        Sequential {
            deliverer: Arc::clone(deliverer),
        }
    }

    /// Delivers `event` here, before the next one.
    #[inline]
    pub(in crate::subscription) async fn event(
        &mut self,
        position: Position,
        event: &AnyEvent,
        attempt: u32,
    ) -> bool {
        let deliverer = &self.deliverer;
        let _in_flight = Alone::event(&deliverer.state);
        let caught = AssertUnwindSafe(deliverer.deliver(Some(position), event, attempt))
            .catch_unwind()
            .await;
        survived(&deliverer.state, caught)
    }

    /// Replays here, between two events.
    pub(super) async fn replay(&mut self, replay: Replay) -> bool {
        let deliverer = &self.deliverer;
        let _in_flight = Alone::replay(&deliverer.state);
        guarded(&deliverer.state, deliverer.replay(replay)).await
    }
}
