//! The backends behind a bus: where events are written, and how each
//! subscription reads them and settles what it read.
//!
//! A [`Backend`] writes events and opens one [`Reader`] per subscription.
//! The in-memory log is a bounded ring shared by all subscriptions: one
//! write per event, no copy per subscriber, and each reader borrows a batch
//! at a time from the ring; the producer waits when the slowest reader is a
//! full ring behind, which is the bus's back pressure. [`SqliteLog`] keeps
//! the same sequence in a file. A shared outbox or a broker implements the
//! same traits, so consumers never know which one they run on.
//!
//! Dead letters and retry schedules have their own stores
//! ([`DeadLetterStore`], [`RetryStore`]); a backend may bring its own, and
//! [`BusBuilder`](crate::BusBuilder) can be given others.

mod batch;
pub(crate) mod error;
mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(any(feature = "postgres", feature = "nats"))]
mod url;
mod watermark;
pub(crate) mod writer;

pub use self::batch::Batch;
pub use self::error::{ReadError, StoreError, WriteError};
pub use self::memory::MemoryLog;
#[cfg(feature = "nats")]
pub use self::nats::{NatsError, NatsLog, NatsLogBuilder};
#[cfg(feature = "postgres")]
pub use self::postgres::{PostgresError, PostgresLog, PostgresLogBuilder};
#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteLog;
pub use self::watermark::Watermark;
pub use crate::dead_letter::DeadLetterStore;
pub use crate::subscription::StartFrom;

use crate::event::AnyEvent;
use async_trait::async_trait;
use std::fmt::Debug;
use std::sync::Arc;

/// A position in a backend: events are numbered in the order they were
/// appended.
pub type Position = u64;

/// What a backend offers, declared by [`Backend::capabilities`]. The runtime
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
    /// with a delay). A failed attempt is then handed back to the backend
    /// ([`Settlement::Retry`]) instead of waiting in-process while holding
    /// the event, and the next attempt arrives as a redelivery whose
    /// attempt the backend counts ([`Batch::from_deliveries`]). Only for
    /// a reader with a [settler](Reader::settler).
    pub schedules_retries: bool,
    /// Several processes may read one subscription, each event going to
    /// one of them.
    pub shared_subscriptions: bool,
    /// Delivers the events of one subscription in the order they were
    /// appended, so sequential and partitioned modes keep that order. A
    /// backend that splits a shared subscription keeps it per
    /// [order key](crate::Event::order_key) across processes, and whole
    /// within each process's share.
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

/// A backend for a [`Bus`](crate::Bus): writes events and opens the
/// readers of its subscriptions.
///
/// Implementations must be safe to call from many tasks at once. The trait
/// is object safe, so backends can be chosen at run time; none of its
/// methods runs once per delivered event.
#[async_trait]
pub trait Backend: Send + Sync + Debug + 'static {
    /// What the backend offers. A subscription on a durable backend flushes
    /// its consumer (a batcher's pending payloads) before it commits, so a
    /// restart redelivers anything not yet written rather than skipping it.
    fn capabilities(&self) -> Capabilities;

    /// Appends, waiting while the backend is full, and resolves once the
    /// event is stored as the backend promises (in memory, or committed).
    ///
    /// # Errors
    ///
    /// [`WriteError::Closed`] after [`close`](Backend::close), with the
    /// event handed back; otherwise the backend's failure.
    async fn append(&self, event: AnyEvent) -> Result<Position, WriteError>;

    /// Opens the reader of `subscription`, at its committed position if it
    /// has one, otherwise where `from` says.
    ///
    /// A backend without [shared
    /// subscriptions](Capabilities::shared_subscriptions) may assume one
    /// reader per name at a time: the bus never opens a second while the
    /// first is open.
    async fn reader(
        &self,
        subscription: &str,
        from: StartFrom,
    ) -> Result<Box<dyn Reader>, ReadError>;

    /// Stops accepting events. Readers still read what was appended before,
    /// then report the end.
    fn close(&self);

    /// How many unfinished events the backend holds before a producer
    /// waits, for one bounded that way (the in-memory ring). Default `None`.
    fn capacity(&self) -> Option<usize> {
        None
    }

    /// The dead-letter store this backend brings, kept in its own storage.
    /// Default `None`: the bus keeps dead letters in memory unless its
    /// builder is given a store.
    fn dead_letter_store(&self) -> Option<Arc<dyn DeadLetterStore>> {
        None
    }

    /// The retry-schedule store this backend brings. Default `None`: a
    /// restart starts schedules over unless the builder is given a store.
    fn retry_store(&self) -> Option<Arc<dyn RetryStore>> {
        None
    }

    /// Opens the reader of `subscription` for the events `interest`
    /// names, for a backend that can leave the others out on its side (a
    /// broker's subject filter). The subscription still filters every
    /// event it reads, so a backend may deliver more than asked for.
    /// Default: [`reader`](Backend::reader), which reads everything.
    async fn reader_for(
        &self,
        subscription: &str,
        from: StartFrom,
        interest: &Interest,
    ) -> Result<Box<dyn Reader>, ReadError> {
        let _ = interest;
        self.reader(subscription, from).await
    }

    /// For a backend whose readers [settle](Reader::settler) each
    /// delivery on its own, so no commit point tells: whether
    /// `subscription` finished (in any process) every event before
    /// `up_to`, a position [`append`](Backend::append) returned.
    /// [`Bus::drain`](crate::Bus::drain) asks until it does. Default
    /// `Ok(None)`: the reader's commits tell.
    async fn finished_before(
        &self,
        subscription: &str,
        up_to: Position,
    ) -> Result<Option<bool>, ReadError> {
        let _ = (subscription, up_to);
        Ok(None)
    }
}

/// The events a subscription receives, as far as a backend can filter
/// them on its side: given to [`Backend::reader_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Interest {
    /// Every event.
    All,
    /// Events whose name is one of these, or, for an entry ending in `.*`
    /// (`user.*`), starts with what comes before the `*`.
    Names(Vec<String>),
}

/// What became of one delivery, told to a backend that settles each
/// delivery on its own ([`Reader::settler`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Handled, or filtered out: the backend forgets it.
    Done,
    /// Failed, with attempts left: the backend delivers it again after the
    /// delay, counting the attempt. Only told to a backend that
    /// [schedules its own retries](Capabilities::schedules_retries).
    Retry(std::time::Duration),
    /// Out of attempts, and its dead letter is stored: the backend never
    /// delivers it again.
    DeadLettered,
}

/// Where a subscription tells its backend what became of each delivery,
/// one at a time and in any order, from whichever task ran it: a broker
/// acknowledges each message on its own, where a log with one commit
/// point per subscription takes [`Reader::commit`] instead.
///
/// Called on the path of every event: it must return at once (queue the
/// acknowledgement), never wait on the network.
pub trait Settle: Send + Sync + Debug {
    /// The delivery at `position` (a position its reader handed out) is
    /// settled.
    fn settle(&self, position: Position, settlement: Settlement);
}

/// One subscription's reader of a [`Backend`].
///
/// A reader hands out deliveries in [`Batch`]es: each with its position,
/// its event and the attempt the backend counts. The subscription reports
/// back through [`commit`](Reader::commit): every delivery before a
/// position is finished (handled, or dead-lettered). Finished deliveries
/// that arrive out of order (concurrent and partitioned modes) are turned
/// into that one contiguous position by a [`Watermark`], the helper every
/// reader with one commit point shares.
#[async_trait]
pub trait Reader: Send + Debug {
    /// Waits for deliveries after those already read and returns up to
    /// `max` of them; `Ok(None)` once the backend is closed and everything
    /// was read.
    ///
    /// Must be cancel safe: the subscription drops the future when other
    /// work (a replay, a pause, a finished task) arrives first, and calls
    /// again later.
    async fn next(&mut self, max: usize) -> Result<Option<Batch>, ReadError>;

    /// Marks every delivery before `up_to` as finished. The in-memory log
    /// frees the ring space; a durable backend commits the position. A
    /// backend that finds this process no longer holds the subscription
    /// returns [`ReadError::ClaimLost`] and commits nothing.
    async fn commit(&mut self, up_to: Position) -> Result<(), ReadError>;

    /// The subscription stopped, after its last commit. A backend whose
    /// subscriptions several processes share lets another process take
    /// this one over now, rather than when its claim runs out. Default:
    /// nothing to do.
    async fn stop(&mut self) -> Result<(), ReadError> {
        Ok(())
    }

    /// Why events the backend holds cannot be read yet, when something
    /// outside the subscription holds them back (on PostgreSQL, an old
    /// transaction). The subscription shows it in its stats until it
    /// clears; a reader whose answer changes returns from
    /// [`next`](Reader::next), with an empty batch if need be, so it is
    /// seen. Default `None`.
    fn held_back(&self) -> Option<String> {
        None
    }

    /// Whether this process holds the subscription now, for a backend
    /// whose subscriptions several processes share: only the holder runs
    /// replays of dead letters, so one letter is not replayed by two
    /// processes. Default `true`: nothing else could hold it.
    fn holds_claim(&self) -> bool {
        true
    }

    /// Whether other processes finish part of what this reader reads past
    /// (a subscription split into partitions that processes share), so
    /// its position does not say what is finished:
    /// [`Bus::drain`](crate::Bus::drain) then asks
    /// [`Backend::finished_before`]. Default `false`.
    fn finished_elsewhere(&self) -> bool {
        false
    }

    /// Where the subscription tells the backend what became of each
    /// delivery, for a backend that settles each on its own (a broker).
    /// The subscription then still calls [`commit`](Reader::commit), which
    /// such a backend may ignore. Default `None`: commits only.
    fn settler(&self) -> Option<Arc<dyn Settle>> {
        None
    }

    /// The position of the next delivery [`next`](Reader::next) returns.
    fn position(&self) -> Position;

    /// How many events this subscription has not finished, as far as the
    /// backend knows; `None` when it cannot tell cheaply.
    fn lag(&self) -> Option<u64> {
        None
    }

    /// How many events this subscription has not finished, as a count the
    /// backend keeps current by itself (a broker's, from its answers), for
    /// a backend whose count cannot be added up from this process's own
    /// writes: the stats read it as it is. Default `None`: the stats add
    /// [`lag`](Reader::lag) and what this process wrote since.
    fn live_lag(&self) -> Option<Arc<std::sync::atomic::AtomicU64>> {
        None
    }

    /// The position after the newest event this reader knows its backend
    /// holds, in the reader's positions, for a reader whose positions are
    /// not numbered one per event (so [`lag`](Reader::lag), a count,
    /// cannot be added to one). [`Bus::drain`](crate::Bus::drain) waits
    /// for it. Default `None`: the position after the last commit plus
    /// the lag.
    fn head(&self) -> Option<Position> {
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
/// resumes the schedule instead of starting it over; a durable backend
/// brings one.
#[async_trait]
pub trait RetryStore: Send + Sync + Debug + 'static {
    /// Up to `limit` of the events of `subscription` waiting for a retry,
    /// in position order, after `after` (from the first when `None`). A
    /// subscription loads them page by page when it starts.
    async fn load(
        &self,
        subscription: &str,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<(Position, RetryState)>, StoreError>;

    /// Records a failed attempt.
    async fn save(
        &self,
        subscription: &str,
        position: Position,
        state: RetryState,
    ) -> Result<(), StoreError>;

    /// Forgets an event that succeeded or was dead-lettered.
    async fn clear(&self, subscription: &str, position: Position) -> Result<(), StoreError>;

    /// Whether a failed event is parked here ([`park`](RetryStore::park))
    /// so its subscription moves on past it, instead of waiting for the
    /// retry while holding the event. Default `false`.
    fn parks(&self) -> bool {
        false
    }

    /// Keeps `event`, which failed `state.attempts` times with `errors`
    /// (the last failure's chain), until its next attempt is due. Once
    /// this returns the subscription counts the event as finished, so the
    /// park must be as durable as the backend's commits. Only called when
    /// [`parks`](RetryStore::parks) says so.
    async fn park(
        &self,
        subscription: &str,
        event: &AnyEvent,
        state: RetryState,
        errors: &[String],
    ) -> Result<(), StoreError> {
        let _ = (subscription, event, state, errors);
        Err(StoreError::Failed(
            "this retry store does not park events".into(),
        ))
    }

    /// Claims up to `limit` parked events of `subscription` whose next
    /// attempt is due, for `lease`: no other caller gets them until it
    /// runs out, and each claim is new ([`Parked::claim`]), so a caller
    /// whose lease ran out changes nothing. Also says when the next one
    /// not yet due is.
    async fn due(
        &self,
        subscription: &str,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Due, StoreError> {
        let _ = (subscription, limit, lease);
        Ok(Due::default())
    }

    /// A claimed parked event failed again and has attempts left: its new
    /// state, and the claim is let go. `false`, changing nothing, when
    /// `claim` is no longer the event's (its lease ran out and another
    /// caller claimed it).
    async fn repark(
        &self,
        id: u64,
        claim: u64,
        state: RetryState,
        errors: &[String],
    ) -> Result<bool, StoreError> {
        let _ = (id, claim, state, errors);
        Ok(false)
    }

    /// Forgets a claimed parked event that succeeded or was
    /// dead-lettered. `false`, changing nothing, when `claim` is no longer
    /// the event's.
    async fn unpark(&self, id: u64, claim: u64) -> Result<bool, StoreError> {
        let _ = (id, claim);
        Ok(false)
    }

    /// Gives a claim back without running the event (the subscription
    /// paused or stopped first): it is due again at once.
    async fn release(&self, id: u64, claim: u64) -> Result<(), StoreError> {
        let _ = (id, claim);
        Ok(())
    }

    /// How many events of `subscription` are parked. Default 0.
    async fn parked(&self, subscription: &str) -> Result<u64, StoreError> {
        let _ = subscription;
        Ok(0)
    }
}

/// A parked event whose next attempt is due, claimed from a
/// [`RetryStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Parked {
    /// The store's id of it.
    pub id: u64,
    /// The event.
    pub event: AnyEvent,
    /// Its attempts so far, all failed, and when they began.
    pub state: RetryState,
    /// The claim it is held by: given back to
    /// [`repark`](RetryStore::repark), [`unpark`](RetryStore::unpark) and
    /// [`release`](RetryStore::release).
    pub claim: u64,
}

impl Parked {
    /// A parked event as a store claimed it.
    pub fn new(id: u64, event: AnyEvent, state: RetryState, claim: u64) -> Self {
        Parked {
            id,
            event,
            state,
            claim,
        }
    }
}

/// What [`RetryStore::due`] found.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Due {
    /// The parked events claimed, due now.
    pub parked: Vec<Parked>,
    /// When the next parked event not claimed here is due, if any.
    pub next_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Due {
    /// What a store found.
    pub fn new(parked: Vec<Parked>, next_at: Option<chrono::DateTime<chrono::Utc>>) -> Self {
        Due { parked, next_at }
    }
}
