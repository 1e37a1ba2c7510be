//! A wake-up for one task that sleeps on it: the subscription runner's
//! doorbell for stops, pauses, flushes and replays.

use futures_util::task::AtomicWaker;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::task::{Context, Poll};

/// Raised by anyone, taken by the one task that waits on it. A raise while
/// nobody waits is kept for the next wait, as a `Notify` permit is.
///
/// Not a `Notify`: the runner polls its wake-up once per event, and a
/// waiting `Notify` takes its lock at every poll, where this costs an
/// atomic load and a waker comparison.
#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    pub(crate) fn raise(&self) {
        self.raised.store(true, SeqCst);
        self.waker.wake();
    }

    /// Ready once the signal was raised since the last time it was taken;
    /// takes it.
    #[inline]
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Looked at again after registering: a raise in between woke the
        // old waker, or nobody.
        if self.take() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves once the signal is raised; takes it.
    pub(crate) async fn taken(&self) {
        std::future::poll_fn(|cx| self.poll_take(cx)).await;
    }

    #[inline]
    fn take(&self) -> bool {
        self.raised.load(Relaxed) && self.raised.swap(false, SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::Signal;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_raise_before_the_wait_is_kept() {
        let signal = Signal::default();
        signal.raise();
        tokio::time::timeout(Duration::from_secs(5), signal.taken())
            .await
            .expect("the earlier raise is seen");
    }

    #[tokio::test]
    async fn a_raise_wakes_the_waiter_once() {
        let signal = Arc::new(Signal::default());
        let raiser = Arc::clone(&signal);
        let waiter = tokio::spawn(async move { signal.taken().await });
        tokio::task::yield_now().await;
        raiser.raise();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("waiter");
        // Taken: a second wait sleeps until the next raise.
        let pending = tokio::time::timeout(Duration::from_millis(50), raiser.taken()).await;
        assert!(pending.is_err(), "a taken signal does not fire again");
    }
}
