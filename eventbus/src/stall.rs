//! Why a subscription cannot move on right now: a dead letter it cannot
//! store, a position it cannot commit, a log it cannot read. The part that
//! hit the problem sets it and keeps retrying; stats show it, and `drain`
//! returns an error for a problem that retrying cannot fix.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use tokio::sync::watch;

/// A problem holding a subscription back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stalled {
    /// What is wrong and what is done about it, for a person to read.
    pub(crate) reason: String,
    /// Whether retrying cannot fix it (a damaged file): `drain` stops
    /// waiting and reports it.
    pub(crate) fatal: bool,
}

pub(crate) struct Stall {
    /// A cheap check for the common case, so clearing on every success
    /// takes no lock.
    any: AtomicBool,
    current: watch::Sender<Option<Stalled>>,
}

impl Default for Stall {
    fn default() -> Self {
        Stall {
            any: AtomicBool::new(false),
            current: watch::Sender::new(None),
        }
    }
}

impl Stall {
    /// Says why the subscription cannot move on. A reason retrying cannot
    /// fix (a lost claim, a damaged store, a panic around a delivery)
    /// stays: a later, lesser one does not replace it.
    pub(crate) fn set(&self, reason: String, fatal: bool) {
        // `any` changes under the channel's lock, with the value it
        // summarises.
        self.current.send_if_modified(|current| {
            if current.as_ref().is_some_and(|c| c.fatal) && !fatal {
                return false;
            }
            *current = Some(Stalled { reason, fatal });
            self.any.store(true, Relaxed);
            true
        });
    }

    /// The subscription moved on: whatever held it back is over, unless
    /// retrying could not fix it, which stays until the subscription ends.
    pub(crate) fn clear(&self) {
        if !self.any.load(Relaxed) {
            return;
        }
        self.current.send_if_modified(|current| {
            if current.as_ref().is_none_or(|c| c.fatal) {
                return false;
            }
            *current = None;
            self.any.store(false, Relaxed);
            true
        });
    }

    pub(crate) fn get(&self) -> Option<Stalled> {
        if self.any.load(Relaxed) {
            self.current.borrow().clone()
        } else {
            None
        }
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Option<Stalled>> {
        self.current.subscribe()
    }
}
