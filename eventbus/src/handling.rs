//! Which handler the current task is running, if any: set around every
//! call into a consumer (`handle`, `flush`, a batcher's sink), so the bus
//! can tell a call made from inside a handler, which must not wait for
//! that handler's own subscription, from one made outside.

use std::future::Future;

tokio::task_local! {
    static HANDLING: Handling;
}

/// Which bus and subscription a handler belongs to, by address: copied
/// into every delivery, so it must cost no reference count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handling {
    pub(crate) bus: usize,
    pub(crate) subscription: usize,
}

impl Handling {
    /// Runs `f` as part of a handler of this subscription.
    pub(crate) fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        HANDLING.sync_scope(self, f)
    }

    /// Runs `fut` as a handler of this subscription.
    pub(crate) fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        HANDLING.scope(self, fut)
    }
}

/// The handler the current task is inside of, if any.
pub(crate) fn current() -> Option<Handling> {
    HANDLING.try_with(|h| *h).ok()
}
