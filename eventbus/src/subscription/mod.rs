//! Subscriptions: a named consumer with its demand, mode, filter and retry
//! policy, reading the bus's backend through its own reader.
//!
//! # Demand
//!
//! A subscription pulls events; nothing is pushed at it. Each read takes at
//! most `max_demand` events that pass its filter (default 1000, as in
//! GenStage), and finished positions are released back to the log every
//! `max_demand - min_demand` events (`min_demand` defaults to three quarters
//! of `max_demand`), so the producer gets room in steps rather than one slot
//! at a time. The producer waits when the slowest subscription is a full
//! buffer behind.
//!
//! # Modes
//!
//! - [`sequential`](SubscriptionBuilder::sequential), the default: one event
//!   at a time, in log order.
//! - [`concurrent(n)`](SubscriptionBuilder::concurrent): one task per event,
//!   at most `n` in flight; a finished task's slot is refilled at once.
//!   Events take their slots in log order, but their tasks may start and
//!   finish in any order. When many events get slots at once, small fan-out
//!   tasks spawn them, so a burst is spawned by every worker thread rather
//!   than by the subscription's one task. Events still in flight occupy the
//!   bus's buffer, so on the in-memory bus a limit above its capacity is an
//!   error at [`start`](SubscriptionBuilder::start) that names both.
//! - [`partitioned(n, key)`](SubscriptionBuilder::partitioned): `n` lanes,
//!   each sequential; events with the same key stay in order.
//!
//! A subscription starts at the head of the log: it receives events notified
//! after [`start`](SubscriptionBuilder::start) returns.

mod deliver;
mod filter;
mod mode;
mod runner;
pub(crate) mod set;
mod start;
mod state;

pub use self::filter::{Filter, PatternError};
pub use self::start::StartFrom;
pub use self::state::SubscriptionStats;

pub(crate) use self::state::State;

use self::set::SubscriptionSet;
use crate::bus::error::SubscribeError;
use crate::consumer::{Context, IntoConsumer};
use crate::dead_letter::Route;
use crate::event::AnyEvent;
use crate::retry::Retry;
use futures_util::FutureExt;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};
use tokio::sync::{Notify, mpsc, watch};

/// The most events a concurrent subscription may have in flight.
pub const MAX_CONCURRENCY: usize = 1 << 24;

pub(crate) type KeyFn = Arc<dyn Fn(&AnyEvent) -> u64 + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Mode {
    Sequential,
    Concurrent(usize),
    Partitioned { lanes: usize, key: KeyFn },
}

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Sequential => f.write_str("Sequential"),
            Mode::Concurrent(n) => f.debug_tuple("Concurrent").field(n).finish(),
            Mode::Partitioned { lanes, .. } => {
                f.debug_struct("Partitioned").field("lanes", lanes).finish()
            }
        }
    }
}

/// As the builder method reads: `sequential`, `concurrent(8)`,
/// `partitioned(4)`. The registry file shows it.
impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Sequential => f.write_str("sequential"),
            Mode::Concurrent(n) => write!(f, "concurrent({n})"),
            Mode::Partitioned { lanes, .. } => write!(f, "partitioned({lanes})"),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_demand: usize,
    pub(crate) release_every: usize,
    pub(crate) mode: Mode,
}

/// Configures a subscription; from [`Bus::subscribe`](crate::Bus::subscribe).
///
/// # Examples
///
/// ```
/// use eventbus::{AnyEvent, Bus, Retry};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().build()?;
/// let search = bus
///     .subscribe(
///         "search-index",
///         eventbus::consumer_fn(|event: AnyEvent| async move {
///             let _ = event; // index it
///             Ok(())
///         }),
///     )
///     .events(["user.*", "post.published"])?
///     .concurrent(64)
///     .retry(Retry::exponential(Duration::from_millis(200)).max_attempts(8))
///     .start()
///     .await?;
/// assert_eq!(search.name(), "search-index");
/// # Ok(()) }
/// ```
#[must_use = "a subscription does nothing until `start` is called"]
pub struct SubscriptionBuilder<'a, C> {
    bus: &'a Arc<SubscriptionSet>,
    name: String,
    consumer: C,
    max_demand: usize,
    min_demand: Option<usize>,
    mode: Mode,
    filter: Filter,
    retry: Retry,
    from: StartFrom,
}

impl<C> fmt::Debug for SubscriptionBuilder<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionBuilder")
            .field("name", &self.name)
            .field("max_demand", &self.max_demand)
            .field("min_demand", &self.min_demand)
            .field("mode", &self.mode)
            .field("filter", &self.filter)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl<'a, C: IntoConsumer> SubscriptionBuilder<'a, C> {
    pub(crate) fn new(bus: &'a Arc<SubscriptionSet>, name: String, consumer: C) -> Self {
        SubscriptionBuilder {
            bus,
            name,
            consumer,
            max_demand: 1000,
            min_demand: None,
            mode: Mode::Sequential,
            filter: Filter::all(),
            retry: Retry::default(),
            from: StartFrom::Now,
        }
    }

    /// The most events pulled from the log at once. Default 1000.
    pub fn max_demand(mut self, max: usize) -> Self {
        self.max_demand = max;
        self
    }

    /// Finished positions are released to the log each time this many or
    /// fewer of a read remain: every `max_demand - min_demand` events.
    /// Default three quarters of `max_demand`. Must be below `max_demand`.
    pub fn min_demand(mut self, min: usize) -> Self {
        self.min_demand = Some(min);
        self
    }

    /// One event at a time, in log order. The default.
    pub fn sequential(mut self) -> Self {
        self.mode = Mode::Sequential;
        self
    }

    /// One task per event, at most `limit` in flight. Slots are taken in
    /// log order; the tasks may start and finish in any order.
    pub fn concurrent(mut self, limit: usize) -> Self {
        self.mode = Mode::Concurrent(limit);
        self
    }

    /// `lanes` sequential lanes; events with equal `key`s go to the same lane
    /// and so stay in order, while different keys run in parallel.
    pub fn partitioned<K, F>(mut self, lanes: usize, key: F) -> Self
    where
        F: Fn(&AnyEvent) -> K + Send + Sync + 'static,
        K: Hash,
    {
        let key: KeyFn = Arc::new(move |event| {
            let mut hasher = std::hash::DefaultHasher::new();
            key(event).hash(&mut hasher);
            hasher.finish()
        });
        self.mode = Mode::Partitioned { lanes, key };
        self
    }

    /// Receives only events whose names match one of `patterns`: exact names
    /// (`user.created`), prefixes (`user.*`) or `*`.
    ///
    /// # Errors
    ///
    /// [`PatternError`] for a `*` anywhere but at the end of a pattern.
    pub fn events<I, S>(mut self, patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for pattern in patterns {
            self.filter = self.filter.event(pattern.as_ref())?;
        }
        Ok(self)
    }

    /// Receives only events that implement protocol `P`.
    pub fn protocol<P: ?Sized + crate::Protocol>(mut self) -> Self {
        self.filter = self.filter.protocol::<P>();
        self
    }

    /// Replaces the filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// How failures are retried before an event is dead-lettered. Default
    /// [`Retry::default`].
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Where the subscription starts reading. Default [`StartFrom::Now`].
    pub fn start_from(mut self, from: StartFrom) -> Self {
        self.from = from;
        self
    }

    /// Checks the settings, opens the subscription's reader and starts its
    /// task.
    ///
    /// # Errors
    ///
    /// [`SubscribeError`] naming the setting that is wrong, the name that is
    /// taken, or the log's refusal.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub async fn start(self) -> Result<Subscription, SubscribeError> {
        let SubscriptionBuilder {
            bus,
            name,
            consumer,
            max_demand,
            min_demand,
            mode,
            filter,
            retry,
            from,
        } = self;
        if name.trim().is_empty() {
            return Err(SubscribeError::EmptyName);
        }
        if max_demand == 0 {
            return Err(SubscribeError::ZeroMaxDemand);
        }
        let min_demand = match min_demand {
            Some(min) if min >= max_demand => {
                return Err(SubscribeError::MinDemandNotBelowMax {
                    min,
                    max: max_demand,
                });
            }
            Some(min) => min,
            None => max_demand * 3 / 4,
        };
        match &mode {
            Mode::Concurrent(0) => return Err(SubscribeError::ZeroConcurrency),
            Mode::Concurrent(n) if *n > MAX_CONCURRENCY => {
                return Err(SubscribeError::ConcurrencyTooHigh(*n));
            }
            Mode::Partitioned { lanes: 0, .. } => return Err(SubscribeError::ZeroLanes),
            _ => {}
        }

        let inner = bus;
        if let (Mode::Concurrent(limit), Some(capacity)) = (&mode, inner.writer.get().capacity())
            && *limit > capacity
        {
            return Err(SubscribeError::ConcurrencyAboveCapacity {
                limit: *limit,
                capacity,
            });
        }
        // Held while the reader opens; given back if this fails or is
        // dropped.
        let reservation = inner.reserve(&name)?;
        let interest = filter.clone().or_interest(consumer.interest()).interest();
        let reader = inner
            .writer
            .get()
            .reader_for(&name, from, &interest)
            .await
            .map_err(SubscribeError::Open)?;
        let settler = reader.settler();
        let start = reader.position();
        let retries = match &inner.retries {
            Some(store) => Some(deliver::RetryBook::load(Arc::clone(store), &name).await?),
            None => None,
        };

        // Failed events are parked where the retry store parks them and
        // the backend does not schedule retries itself.
        let hands_back = settler.is_some() && inner.writer.get().capabilities().schedules_retries;
        let parking = inner
            .retries
            .as_ref()
            .filter(|store| store.parks() && !hands_back)
            .cloned();
        let parked = match &parking {
            Some(store) => store.parked(&name).await.map_err(SubscribeError::Store)?,
            None => 0,
        };

        let name: Arc<str> = Arc::from(name);
        let (flush_tx, flush_rx) = mpsc::channel(4);
        let (replay_tx, replay_rx) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            name: Arc::clone(&name),
            bus: inner.id(),
            stall: Arc::default(),
            counters: Default::default(),
            done: state::Progress::new(start),
            known_head: AtomicU64::new(
                reader
                    .head()
                    .unwrap_or_else(|| start.saturating_add(reader.lag().unwrap_or(0))),
            ),
            sparse: reader.head().is_some(),
            settles: settler.is_some() || reader.finished_elsewhere(),
            finished_elsewhere: reader.finished_elsewhere(),
            live_lag: reader.live_lag(),
            reader_lag: AtomicU64::new(reader.lag().unwrap_or(0)),
            accepted_at_lag: AtomicU64::new(inner.writer.accepted()),
            replays: Arc::new(AtomicU64::new(0)),
            parked: AtomicU64::new(parked),
            parked_changes: AtomicU64::new(0),
            parked_counted: AtomicU64::new(0),
            parked_due: Mutex::default(),
            look_at_parked: Notify::new(),
            stop: AtomicBool::new(false),
            paused: watch::Sender::new(false),
            paused_now: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            wake: Arc::default(),
            flush: flush_tx,
            abort: Mutex::new(None),
            wiring: (filter.clone().or_interest(consumer.interest())).wiring(
                &name,
                &mode,
                consumer.describe(),
            ),
        });
        let dead_letters = inner.dead_letters.writer(
            Arc::clone(&name),
            Arc::clone(&state.counters.dead_lettered),
            Arc::clone(&state.stall),
        );
        // The last wait of the start: no consumer is built before it, so
        // the start's future holds none across an await (a consumer type
        // there would have to be proven `Send` for every lifetime, which
        // fails for a `ProtocolConsumer` started inside `tokio::spawn`).
        // Routed before it runs, with every letter already marked for it
        // queued and counted, so `drain` waits for those replays too.
        let route = Route {
            tx: replay_tx,
            pending: Arc::clone(&state.replays),
            wake: Arc::clone(&state.wake),
            told: Arc::default(),
        };
        if let Err(err) = inner.dead_letters.route(&name, route).await {
            inner.dead_letters.unroute(&name, &state.replays);
            return Err(SubscribeError::Store(err));
        }
        let filter = filter.or_interest(consumer.interest());
        // Whatever the consumer starts (a batcher's task) runs as part of
        // this subscription's handler.
        let built = state.handling().sync_scope(|| {
            consumer.into_consumer(&Context {
                subscription: Arc::clone(&name),
                dead_letters: dead_letters.clone(),
                buffered: Arc::clone(&state.counters.buffered),
            })
        });
        let consumer = match built {
            Ok(consumer) => consumer,
            Err(err) => {
                inner.dead_letters.unroute(&name, &state.replays);
                return Err(SubscribeError::Consumer(err));
            }
        };
        let capabilities = inner.writer.get().capabilities();
        let runner = runner::Runner {
            deliverer: Arc::new(deliver::Deliverer {
                retries,
                consumer,
                retry,
                state: Arc::clone(&state),
                dead_letters,
                metrics: deliver::Metrics::new(&name),
                hands_back,
                parking,
                unflushed: std::sync::Mutex::default(),
                settler,
            }),
            reader,
            durable: capabilities.durable,
            writer: inner.writer.clone(),
            filter: filter::CachedFilter::new(filter),
            config: Config {
                max_demand,
                release_every: (max_demand - min_demand).max(1),
                mode,
            },
            replays: replay_rx,
            flushes: flush_rx,
            read: start,
            claim_lost: false,
            held_back: false,
        };
        let watched = Arc::clone(&state);
        let run = async move {
            // In sequential mode the consumer runs inside this task, so a
            // panic around it (a broken dead-letter or retry store) ends
            // the subscription here. Nothing past the event was released,
            // so a durable log delivers it again after a restart.
            if let Err(panic) = AssertUnwindSafe(runner.run()).catch_unwind().await {
                tracing::error!(
                    subscription = %watched.name,
                    panic = %crate::failure::panic_message(&*panic),
                    "subscription stopped: it panicked outside its consumer",
                );
            }
        };
        // The handler marker is set once per poll of each task that runs
        // the consumer (this one, lanes, concurrent deliveries), not per
        // event: per event it cost a fifth of the throughput at K = 16.
        let task = tokio::spawn(state::Tracked {
            runner: Some(Box::pin(state.handling().scope(run))),
            state: Arc::clone(&state),
        });
        *state.abort.lock().expect("abort lock") = Some(task.abort_handle());
        inner.activate(reservation, Arc::clone(&state));
        tracing::debug!(subscription = %name, "subscription started");
        Ok(Subscription {
            state,
            set: Arc::clone(bus),
        })
    }
}

/// A running subscription. Cheap to clone; dropping it does not stop the
/// subscription, [`stop`](Subscription::stop) or
/// [`Bus::shutdown`](crate::Bus::shutdown) does.
#[derive(Clone)]
pub struct Subscription {
    state: Arc<State>,
    set: Arc<SubscriptionSet>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.state.name)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The subscription's counters now.
    pub fn stats(&self) -> SubscriptionStats {
        let writer = &self.set.writer;
        self.state.stats(writer.appended(), writer.accepted())
    }

    /// Stops the subscription: it reads no further, finishes the events it
    /// already took, flushes its consumer and commits its position, within
    /// the bus's [shutdown timeout](crate::BusBuilder::shutdown_timeout).
    /// Still busy at the deadline, it is stopped where it is, as
    /// [`Bus::shutdown`](crate::Bus::shutdown) does, and the report says so.
    /// Events notified afterwards are not delivered to it.
    ///
    /// Called from inside a handler of the bus, it returns at once
    /// (waiting could wait for that very handler, or for one waiting on
    /// it) with the subscription in
    /// [`still_running`](crate::ShutdownReport::still_running), and the
    /// stop completes in the background. If this future is dropped before
    /// it resolves, the subscription still stops, and a shutdown waits for
    /// it. Stopping a subscription that has stopped already reports nothing.
    pub async fn stop(&self) -> crate::ShutdownReport {
        self.stop_within(self.set.shutdown_timeout).await
    }

    /// Pauses the subscription: it takes no new events from the log and
    /// runs no replays until [`resume`](Subscription::resume)d. Its
    /// position, its name and its retry schedules stay; events it already
    /// handed to a task or a partition lane finish. The log keeps what is
    /// notified meanwhile (on the in-memory bus, a paused subscription
    /// holds the producer back once the buffer is full), and
    /// [`Bus::drain`](crate::Bus::drain) reports it rather than wait.
    /// Returns `false` when it was paused already.
    pub fn pause(&self) -> bool {
        self.state.set_paused(true)
    }

    /// Resumes a [paused](Subscription::pause) subscription where it left
    /// off. Returns `false` when it was not paused.
    pub fn resume(&self) -> bool {
        self.state.set_paused(false)
    }

    /// Whether the subscription is paused.
    pub fn is_paused(&self) -> bool {
        self.state.is_paused()
    }

    /// [`stop`](Subscription::stop) with a deadline of its own.
    pub async fn stop_within(&self, timeout: std::time::Duration) -> crate::ShutdownReport {
        // This run, not whatever runs under the name now: a handle kept
        // past its subscription's end never stops a newer one.
        self.set.stop_one(Arc::clone(&self.state), timeout).await
    }
}
