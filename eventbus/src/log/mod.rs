//! The log behind a bus: one append-only sequence of events and one cursor
//! per subscription.
//!
//! Every backend is a log. The in-memory [`MemoryLog`] is a bounded ring
//! shared by all subscriptions: one write per event, no copy per subscriber,
//! and each cursor reads a batch at a time by borrowing from the ring. The
//! producer waits when the slowest cursor is a full ring behind; that is the
//! bus's back pressure. Durable and distributed backends implement the same
//! [`Log`] and [`Cursor`] traits, so consumers never know which one they run
//! on.

mod batch;
pub(crate) mod error;
mod memory;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use self::batch::Batch;
pub use self::error::{LogError, TryAppendError};
pub use self::memory::MemoryLog;
#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteLog;

pub use crate::dead_letter::DeadLetterStore;
use crate::event::AnyEvent;
use futures_util::future::BoxFuture;
use std::fmt::Debug;
use std::sync::Arc;

/// A position in a log: events are numbered in the order they were appended.
pub type Position = u64;

/// Where a new subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartFrom {
    /// With the next event appended: the default, and the only choice for
    /// the in-memory log, which keeps nothing a subscription could go back to.
    #[default]
    Now,
    /// With the oldest event the log still holds, for logs that keep history.
    Beginning,
}

/// What a backend offers, declared by [`Log::capabilities`]. The runtime
/// and the behaviour suite go by it: a backend that lacks a capability
/// skips the cases that need it, visibly.
///
/// Built with [`Capabilities::new`] (nothing offered) and its setters, so a
/// backend outside this crate can declare one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Keeps accepted events across a restart of the process.
    pub durable: bool,
    /// Schedules redeliveries itself and counts attempts (a broker's nak
    /// with a delay): the runtime hands a failed event back instead of
    /// sleeping on it.
    pub schedules_retries: bool,
    /// Several processes may read one subscription, each event going to
    /// one of them.
    pub shared_subscriptions: bool,
    /// Delivers the events of one subscription in the order they were
    /// appended, so sequential and partitioned modes keep that order.
    pub ordered: bool,
}

impl Capabilities {
    /// Nothing offered.
    pub const fn new() -> Self {
        Capabilities {
            durable: false,
            schedules_retries: false,
            shared_subscriptions: false,
            ordered: false,
        }
    }

    /// Sets [`durable`](Capabilities::durable).
    pub const fn durable(mut self, yes: bool) -> Self {
        self.durable = yes;
        self
    }

    /// Sets [`schedules_retries`](Capabilities::schedules_retries).
    pub const fn schedules_retries(mut self, yes: bool) -> Self {
        self.schedules_retries = yes;
        self
    }

    /// Sets [`shared_subscriptions`](Capabilities::shared_subscriptions).
    pub const fn shared_subscriptions(mut self, yes: bool) -> Self {
        self.shared_subscriptions = yes;
        self
    }

    /// Sets [`ordered`](Capabilities::ordered).
    pub const fn ordered(mut self, yes: bool) -> Self {
        self.ordered = yes;
        self
    }
}

/// A backend for a [`Bus`](crate::Bus).
///
/// Implementations must be safe to call from many tasks at once. The futures
/// are boxed so the trait is object safe and backends can be chosen at run
/// time; the bus calls [`try_append`](Log::try_append) first so an in-memory
/// log never pays for the box.
pub trait Log: Send + Sync + Debug + 'static {
    /// Appends without waiting: `Ok` once the event is stored as the log
    /// promises (in memory, or committed), [`TryAppendError::Full`] when the
    /// slowest cursor is a full buffer behind, [`TryAppendError::WouldBlock`]
    /// when storing needs I/O, in which case the bus calls
    /// [`append`](Log::append).
    ///
    /// # Errors
    ///
    /// As above, and [`TryAppendError::Closed`] after [`close`](Log::close).
    fn try_append(&self, event: AnyEvent) -> Result<Position, TryAppendError>;

    /// Appends, waiting while the log is full, and resolves once the event is
    /// stored as the log promises.
    fn append(&self, event: AnyEvent) -> BoxFuture<'_, Result<Position, LogError>>;

    /// The position the next appended event will get. Positions start at
    /// 0 in memory and at 1 on SQLite, so this is not a count of events.
    fn head(&self) -> Position;

    /// Opens a cursor for a subscription. Opening the same name twice is the
    /// caller's error: the bus prevents it.
    fn open(
        &self,
        subscription: &str,
        from: StartFrom,
    ) -> BoxFuture<'_, Result<Box<dyn Cursor>, LogError>>;

    /// Stops accepting events. Cursors still read what was appended before,
    /// then report the end.
    fn close(&self);

    /// What the backend offers. A subscription on a durable log flushes
    /// its consumer (a batcher's pending payloads) before it releases
    /// positions, so a restart redelivers anything not yet written rather
    /// than skipping it.
    fn capabilities(&self) -> Capabilities;

    /// How many unfinished events the log holds before the producer waits,
    /// for a log bounded that way (the in-memory ring). Default `None`.
    fn capacity(&self) -> Option<usize> {
        None
    }

    /// Where the bus keeps its dead letters, for a log that keeps them
    /// across a restart. Default `None`: in memory only, for this process.
    fn dead_letter_store(&self) -> Option<Arc<dyn DeadLetterStore>> {
        None
    }

    /// Where subscriptions keep retry schedules, for a log that keeps them
    /// across a restart. Default `None`: a restart starts them over.
    fn retry_store(&self) -> Option<Arc<dyn RetryStore>> {
        None
    }
}

/// An event's retry state, kept across restarts by a [`RetryStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryState {
    /// Attempts made so far, all failed.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt_at: chrono::DateTime<chrono::Utc>,
    /// When the first attempt failed.
    pub first_failed_at: chrono::DateTime<chrono::Utc>,
}

/// Keeps the attempt counts of events waiting for a retry, so a restart
/// resumes the schedule instead of starting it over; provided by a durable
/// [`Log`].
pub trait RetryStore: Send + Sync + Debug + 'static {
    /// Every event of `subscription` waiting for a retry, by position.
    fn load(
        &self,
        subscription: &str,
    ) -> BoxFuture<'_, Result<Vec<(Position, RetryState)>, LogError>>;

    /// Records a failed attempt.
    fn save(
        &self,
        subscription: &str,
        position: Position,
        state: RetryState,
    ) -> BoxFuture<'_, Result<(), LogError>>;

    /// Forgets an event that succeeded or was dead-lettered.
    fn clear(&self, subscription: &str, position: Position) -> BoxFuture<'_, Result<(), LogError>>;
}

/// One subscription's read position in a [`Log`].
pub trait Cursor: Send + Debug {
    /// Waits for events after the cursor and returns up to `max` of them;
    /// `Ok(None)` once the log is closed and everything was read.
    ///
    /// Must be cancel safe: the bus drops the future when other work (a
    /// replay, a finished task) arrives first, and calls again later.
    fn next(&mut self, max: usize) -> BoxFuture<'_, Result<Option<Batch>, LogError>>;

    /// Marks every event before `up_to` as finished by this subscription:
    /// handled or dead-lettered. The in-memory log frees the ring space; a
    /// durable log commits the position.
    fn release(&mut self, up_to: Position) -> BoxFuture<'_, Result<(), LogError>>;

    /// The position of the next event [`next`](Cursor::next) will return.
    fn position(&self) -> Position;
}
