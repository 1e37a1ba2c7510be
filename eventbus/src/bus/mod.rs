//! The bus: where services notify events and subscriptions pull them.
//!
//! A [`Bus`] owns a [`Backend`](crate::Backend) (in memory by default) and the
//! subscriptions reading it. [`Bus::notify`] returns once the event is in the
//! log and waits while the slowest subscription is a full buffer behind;
//! [`Bus::try_notify`] returns [`TryNotifyError::Full`] instead of waiting.

mod builder;
pub(crate) mod error;

pub use self::builder::BusBuilder;
pub use self::error::{BuildError, DrainError, NotifyError, SubscribeError, TryNotifyError};
pub use crate::subscription::set::ShutdownReport;

use crate::backend::writer::TryWrite;
use crate::consumer::IntoConsumer;
use crate::dead_letter::DeadLetters;
use crate::event::AnyEvent;
use crate::subscription::set::SubscriptionSet;
use crate::subscription::{SubscriptionBuilder, SubscriptionStats};
use std::fmt;
use std::sync::Arc;

/// The event bus. Cheap to clone: clones share one log and one set of
/// subscriptions.
///
/// # Examples
///
/// ```
/// use eventbus::{event, testing::Recorder, Bus};
///
/// #[event]
/// struct UserCreated {
///     user_id: u64,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().capacity(4096).build()?;
/// let audit = Recorder::new();
/// bus.subscribe("audit", audit.clone()).start().await?;
///
/// bus.notify(UserCreated::new(7)).await?;
/// bus.drain().await?;
/// audit.assert_received::<UserCreated>(|e| e.user_id == 7);
///
/// bus.shutdown().await;
/// assert!(bus.notify(UserCreated::new(8)).await.is_err());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<SubscriptionSet>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .inner
            .stopping()
            .iter()
            .map(|s| s.name.to_string())
            .collect();
        f.debug_struct("Bus")
            .field("backend", &self.inner.writer)
            .field("subscriptions", &names)
            .finish()
    }
}

/// The running subscriptions, for the registry file's route lines.
impl From<&Bus> for crate::registry::Routes {
    fn from(bus: &Bus) -> Self {
        Self::new(bus.inner.running().iter().map(|s| s.wiring.clone()))
    }
}

impl Bus {
    /// Starts configuring a bus. See [`BusBuilder`].
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    pub(crate) fn new(set: SubscriptionSet) -> Self {
        Bus {
            inner: Arc::new(set),
        }
    }

    /// Accepts an event: returns once it is in the log, waiting while the
    /// slowest subscription is a full buffer behind.
    ///
    /// A consumer that notifies on its own bus from `handle` can wait on
    /// itself: if its subscription is the slowest, the space it waits for is
    /// the space it would free by returning. Use
    /// [`try_notify`](Bus::try_notify) there, or notify from a spawned task.
    ///
    /// # Errors
    ///
    /// [`NotifyError::Closed`] after [`shutdown`](Bus::shutdown), with the
    /// event handed back; [`NotifyError::Write`] when the backend fails.
    pub async fn notify(&self, event: impl Into<AnyEvent>) -> Result<(), NotifyError> {
        let writer = &self.inner.writer;
        // The ring with room takes the event here, with no future of the
        // writer's built around the call: the producer's cost per event.
        match writer.try_write(event.into()) {
            Ok(()) => Ok(()),
            Err(TryWrite::Closed(event)) => Err(NotifyError::Closed(event)),
            Err(TryWrite::Full(event) | TryWrite::WouldBlock(event)) => {
                Ok(writer.write(event).await?)
            }
        }
    }

    /// Accepts an event only if that needs no waiting.
    ///
    /// # Errors
    ///
    /// [`TryNotifyError::Full`] when the slowest subscription is a full
    /// buffer behind, [`TryNotifyError::WouldBlock`] when the log needs I/O,
    /// [`TryNotifyError::Closed`] after shutdown; each hands the event back.
    pub fn try_notify(&self, event: impl Into<AnyEvent>) -> Result<(), TryNotifyError> {
        self.inner
            .writer
            .try_write(event.into())
            .map_err(|refused| match refused {
                TryWrite::Full(e) => TryNotifyError::Full(e),
                TryWrite::WouldBlock(e) => TryNotifyError::WouldBlock(e),
                TryWrite::Closed(e) => TryNotifyError::Closed(e),
            })
    }

    /// Starts configuring a subscription named `name` that hands events to
    /// `consumer`. Nothing runs until
    /// [`start`](SubscriptionBuilder::start).
    pub fn subscribe<C: IntoConsumer>(
        &self,
        name: impl Into<String>,
        consumer: C,
    ) -> SubscriptionBuilder<'_, C> {
        SubscriptionBuilder::new(&self.inner, name.into(), consumer)
    }

    /// Resolves when every running subscription has finished every event
    /// this bus notified before the call (handled, or dead-lettered after
    /// its last attempt), every event its backend said it held when the
    /// subscription last committed (a durable log's events from before a
    /// restart) and every pending replay, and has
    /// flushed its consumer, so batching sinks have seen everything too.
    ///
    /// This is what makes tests deterministic without sleeps. A
    /// subscription held back by a problem that retrying can fix (a locked
    /// file, a full disk) is waited for; its [stats](Bus::stats) say why.
    ///
    /// # Errors
    ///
    /// [`DrainError::InsideHandler`] when called from a handler of this
    /// bus, which would wait for itself; [`DrainError::Stalled`] when a
    /// subscription cannot move on for a reason retrying will not fix, such
    /// as a damaged log file.
    pub async fn drain(&self) -> Result<(), DrainError> {
        self.inner.drain().await
    }

    /// Stops intake, lets every subscription finish what was notified
    /// (in-flight work and retries included) and flush its consumer, within
    /// the [shutdown timeout](BusBuilder::shutdown_timeout). Subscriptions
    /// still busy at the deadline are stopped and reported. Every event
    /// whose `notify` returned `Ok` is either handled by then or counted in
    /// the report. Calling it again, or while a
    /// [`stop`](crate::Subscription::stop) is under way, waits for the same
    /// subscriptions; once everything has stopped it returns at once.
    ///
    /// Called from inside a handler of this bus it cannot wait (the
    /// handler's own subscription finishes only after the handler returns,
    /// and two handlers would wait on each other): it stops intake, leaves
    /// the waiting and the deadline to a task of its own, and lists every
    /// subscription not yet stopped in
    /// [`still_running`](ShutdownReport::still_running). A `shutdown` from
    /// outside the handlers waits for them.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.inner.shutdown().await
    }

    /// The counters of every running subscription, by name.
    pub fn stats(&self) -> Vec<SubscriptionStats> {
        self.inner.stats()
    }

    /// The dead letters of every subscription of this bus.
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.inner.dead_letters
    }

    /// How many events this bus accepted since it was built. A durable
    /// backend's own history, and events other processes wrote to a shared
    /// one, are not counted.
    pub fn notified(&self) -> u64 {
        self.inner.writer.accepted()
    }

    /// What the bus's backend offers: durable, schedules its own retries,
    /// shared subscriptions, ordered.
    pub fn capabilities(&self) -> crate::backend::Capabilities {
        self.inner.writer.get().capabilities()
    }

    /// Pauses the running subscription named `name`; see
    /// [`Subscription::pause`](crate::Subscription::pause). `None` when no
    /// subscription of that name is running, otherwise whether it changed
    /// (`false`: it was paused already).
    pub fn pause(&self, name: &str) -> Option<bool> {
        self.inner.pause(name)
    }

    /// Resumes the paused subscription named `name`. `None` when no
    /// subscription of that name is running, otherwise whether it changed
    /// (`false`: it was not paused).
    pub fn resume(&self, name: &str) -> Option<bool> {
        self.inner.resume(name)
    }

    /// Stops the subscription named `name`; see
    /// [`Subscription::stop`](crate::Subscription::stop). Returns whether it
    /// was running.
    ///
    /// `None` when no subscription of that name was running; otherwise what
    /// the stop could not finish within the bus's
    /// [shutdown timeout](BusBuilder::shutdown_timeout), as for
    /// [`Subscription::stop`](crate::Subscription::stop).
    pub async fn unsubscribe(&self, name: &str) -> Option<ShutdownReport> {
        self.inner.unsubscribe(name).await
    }
}
