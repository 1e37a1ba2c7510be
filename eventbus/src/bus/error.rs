//! Errors of the bus.

use crate::backend::{ReadError, StoreError, WriteError};
use crate::event::AnyEvent;

/// Returned by [`BusBuilder::build`](super::BusBuilder::build) for a setting
/// that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `capacity(0)`.
    #[error("`capacity` must be at least 1: it is how many unfinished events the bus holds")]
    ZeroCapacity,
    /// `capacity(..)` together with a backend of the user's own.
    #[error(
        "`capacity` sets the size of the in-memory log; a bus built with `backend(..)` takes its limits from that backend"
    )]
    CapacityWithCustomBackend,
    /// `retry_store(..)` on a backend that keeps nothing across a restart:
    /// its positions start over, so a kept schedule would be applied to a
    /// different event.
    #[error(
        "`retry_store` keeps retry schedules across restarts by position, but this backend is not durable and its positions start over; use a durable backend or leave `retry_store` unset"
    )]
    RetryStoreWithoutDurableBackend,
}

/// Returned by [`Bus::notify`](super::Bus::notify) when the event was not
/// accepted. The event is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The bus was shut down.
    #[error("bus is shut down; the event was not accepted")]
    Closed(AnyEvent),
    /// The backend failed to store the event.
    #[error("the bus's backend failed to store the event")]
    Write(#[source] WriteError),
}

impl NotifyError {
    /// The event that was not accepted, where the error still holds it.
    pub fn into_event(self) -> Option<AnyEvent> {
        match self {
            NotifyError::Closed(event) | NotifyError::Write(WriteError::Closed(event)) => {
                Some(event)
            }
            NotifyError::Write(_) => None,
        }
    }
}

impl From<WriteError> for NotifyError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::Closed(event) => NotifyError::Closed(event),
            other => NotifyError::Write(other),
        }
    }
}

/// Returned by [`Bus::try_notify`](super::Bus::try_notify) when the event
/// could not be accepted without waiting. The event is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryNotifyError {
    /// The slowest subscription is a full buffer behind.
    #[error("bus is full: the slowest subscription is a full buffer behind")]
    Full(AnyEvent),
    /// The backend stores events with I/O, which `try_notify` does not
    /// wait for; use `notify`.
    #[error("the bus's backend needs to wait to store an event; use `notify`")]
    WouldBlock(AnyEvent),
    /// The bus was shut down.
    #[error("bus is shut down; the event was not accepted")]
    Closed(AnyEvent),
}

impl TryNotifyError {
    /// The event that was not accepted.
    pub fn into_event(self) -> AnyEvent {
        match self {
            TryNotifyError::Full(e) | TryNotifyError::WouldBlock(e) | TryNotifyError::Closed(e) => {
                e
            }
        }
    }
}

/// Returned by [`SubscriptionBuilder::start`](crate::SubscriptionBuilder::start).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The name is empty.
    #[error("a subscription needs a name; names identify its cursor, stats and dead letters")]
    EmptyName,
    /// Another running subscription has the name.
    #[error("a subscription named `{0}` is already running; names must be unique within a bus")]
    DuplicateName(String),
    /// `max_demand(0)`.
    #[error(
        "`max_demand` must be at least 1: it is how many events the subscription pulls at once"
    )]
    ZeroMaxDemand,
    /// `min_demand` is not below `max_demand`.
    #[error("`min_demand` ({min}) must be below `max_demand` ({max})")]
    MinDemandNotBelowMax {
        /// The `min_demand` given.
        min: usize,
        /// The `max_demand` in effect.
        max: usize,
    },
    /// `concurrent(0)`.
    #[error("`concurrent` needs a limit of at least 1 event in flight")]
    ZeroConcurrency,
    /// `concurrent(n)` above [`MAX_CONCURRENCY`](crate::subscription::MAX_CONCURRENCY).
    #[error("`concurrent` limit {0} is above the most supported, 16777216")]
    ConcurrencyTooHigh(usize),
    /// `partitioned(0, ..)`.
    #[error("`partitioned` needs at least 1 lane")]
    ZeroLanes,
    /// `concurrent(n)` above the in-memory bus's capacity: an event in
    /// flight holds its place in the buffer, so no more than the capacity
    /// could ever run at once.
    #[error(
        "`concurrent({limit})` is above the bus `capacity` of {capacity}: events in flight hold their place in the buffer, so at most {capacity} could run at once; raise `capacity` to at least {limit} or lower the limit"
    )]
    ConcurrencyAboveCapacity {
        /// The `concurrent` limit given.
        limit: usize,
        /// The bus's capacity.
        capacity: usize,
    },
    /// The consumer's own settings cannot work, such as a
    /// `BatchConfig { size: 0, .. }`.
    #[error("the consumer's settings cannot work")]
    Consumer(#[source] crate::BoxError),
    /// The bus was shut down.
    #[error("bus is shut down; no new subscriptions")]
    Closed,
    /// The backend refused to open a reader.
    #[error("the bus's backend could not open a reader for the subscription")]
    Open(#[source] ReadError),
    /// The retry store could not load the subscription's schedules.
    #[error("the retry store could not load the subscription's retry schedules")]
    Store(#[source] StoreError),
}

/// Returned by [`Bus::drain`](super::Bus::drain) when waiting cannot end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DrainError {
    /// Called from inside a handler of this bus: its own subscription
    /// cannot finish until the handler returns, so the wait would never end.
    #[error(
        "`drain` was called from inside a handler of subscription `{0}`, which cannot finish until that handler returns; call it from outside the bus's consumers"
    )]
    InsideHandler(String),
    /// A subscription cannot move on for a reason retrying will not fix,
    /// such as a damaged log file.
    #[error("subscription `{subscription}` cannot finish: {reason}")]
    Stalled {
        /// The subscription.
        subscription: String,
        /// What is wrong, and what to do about it.
        reason: String,
    },
    /// A subscription is paused with events left, so it would not finish
    /// them until someone resumes it.
    #[error("subscription `{0}` is paused with events left to handle; resume it before draining")]
    Paused(String),
}
