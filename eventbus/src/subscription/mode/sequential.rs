//! Sequential mode: one event at a time, in log order, inside the
//! subscription's own task.

use super::super::deliver::{Alone, Deliverer, Rerun, guarded};
use crate::consumer::Consumer;
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

    /// Takes an event, to be delivered before the next one: counts it in
    /// flight until the guard drops, and gives the deliverer to await it
    /// with. The runner awaits the delivery in its own future, under
    /// [`survived`](super::super::deliver::survived): every level of
    /// future between the runner and the consumer is built, polled and
    /// dropped once per event, and one more here cost about a fifth of the
    /// in-memory bus's rate at K = 4.
    #[inline]
    pub(in crate::subscription) fn take(&self) -> (&Deliverer<C>, Alone<'_>) {
        let deliverer = &*self.deliverer;
        (deliverer, Alone::event(&deliverer.state))
    }

    /// Replays or retries a parked event here, between two events.
    pub(super) async fn rerun(&mut self, rerun: Rerun) -> bool {
        let deliverer = &self.deliverer;
        let _in_flight = Alone::rerun(&deliverer.state, &rerun);
        guarded(&deliverer.state, deliverer.rerun(rerun)).await
    }
}
