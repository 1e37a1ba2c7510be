//! The bus: where services notify events and subscriptions pull them.
//!
//! A [`Bus`] owns a [`Backend`] (in memory by default) and the
//! subscriptions reading it. [`Bus::notify`] returns once the event is in the
//! log and waits while the slowest subscription is a full buffer behind;
//! [`Bus::try_notify`] returns [`TryNotifyError::Full`] instead of waiting.

mod builder;
mod error;

pub use self::builder::BusBuilder;
pub use self::error::{BuildError, DrainError, NotifyError, SubscribeError, TryNotifyError};

use crate::backend::error::TryAppendError;
use crate::backend::{Backend, MemoryLog, Position, RetryStore};
use crate::consumer::Consumer;
use crate::dead_letter::{DeadLetters, MemoryDeadLetters};
use crate::event::AnyEvent;
use crate::subscription::{State, SubscriptionBuilder, SubscriptionStats};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) writer: Writer,
    /// The same backend as `writer`, as the trait.
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) closed: AtomicBool,
    /// On a backend other than the in-memory log: how many events this bus
    /// accepted, and the position after the last of them.
    accepted: AtomicU64,
    appended: AtomicU64,
    pub(crate) retries: Option<Arc<dyn RetryStore>>,
    pub(crate) subscriptions: Mutex<BTreeMap<String, Slot>>,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) shutdown_timeout: Duration,
    /// What stops and shutdowns finished in the background (called from
    /// inside a handler) reported, for the next shutdown's report.
    background: Mutex<ShutdownReport>,
}

/// A subscription's entry: reserved while its cursor opens, then running,
/// then stopping. An entry leaves only once its runner has ended, so a
/// shutdown always finds (and waits for, or reports) every subscription
/// that might still run.
pub(crate) enum Slot {
    Starting,
    Running(Arc<State>),
    /// Stopping: the name stays taken until the runner has ended, so a new
    /// subscription under it never overlaps the old one's cursor.
    Stopping(Arc<State>),
}

impl Slot {
    fn running(&self) -> Option<&Arc<State>> {
        match self {
            Slot::Running(state) => Some(state),
            Slot::Starting | Slot::Stopping(_) => None,
        }
    }

    /// The subscription behind the entry, running or stopping.
    fn state(&self) -> Option<&Arc<State>> {
        match self {
            Slot::Running(state) | Slot::Stopping(state) => Some(state),
            Slot::Starting => None,
        }
    }
}

/// Where the bus writes: the in-memory ring through its own fast path
/// (appending without a future while there is room), or any backend.
#[derive(Clone)]
pub(crate) enum Writer {
    Memory(Arc<MemoryLog>),
    Backend(Arc<dyn Backend>),
}

impl Writer {
    pub(crate) fn memory(log: Arc<MemoryLog>) -> Self {
        Writer::Memory(log)
    }

    pub(crate) fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Writer::Memory(log) => Arc::clone(log) as Arc<dyn Backend>,
            Writer::Backend(backend) => Arc::clone(backend),
        }
    }
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Writer::Memory(log) => log.fmt(f),
            Writer::Backend(backend) => backend.fmt(f),
        }
    }
}

impl Inner {
    /// The position after the last event this bus accepted: what `drain`
    /// waits for.
    pub(crate) fn appended(&self) -> Position {
        match &self.writer {
            Writer::Memory(log) => log.head(),
            Writer::Backend(_) => self.appended.load(SeqCst),
        }
    }

    fn accepted(&self, position: Position) {
        self.accepted.fetch_add(1, SeqCst);
        self.appended.fetch_max(position + 1, SeqCst);
    }
}

/// Waits for a stopping subscription's task until the deadline, or until
/// the subscription hits a problem retrying cannot fix (a damaged file),
/// which no wait would get it past. Returns whether the task ended.
async fn finishes_in_time(state: &State, deadline: tokio::time::Instant) -> bool {
    let mut stall = state.stall.watch();
    let fatal = stall.wait_for(|s| s.as_ref().is_some_and(|s| s.fatal));
    tokio::select! {
        () = state.finished() => true,
        () = tokio::time::sleep_until(deadline) => false,
        _ = fatal => false,
    }
}

/// What [`Bus::shutdown`] or a stop could not finish within its deadline,
/// and the final counters of what it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Subscriptions stopped at the deadline with work left, or earlier
    /// when a problem retrying cannot fix held them back (their `stalled`
    /// says which), and their counters at that moment (`lag` is what they
    /// had not finished).
    pub timed_out: Vec<SubscriptionStats>,
    /// Subscriptions not waited for because `shutdown` was called from
    /// inside a handler of the bus. They finish what was notified in the
    /// background, within the deadline; a later `shutdown` from outside the
    /// handlers waits for them.
    pub still_running: Vec<String>,
    /// The final counters of every subscription this call stopped, so they
    /// outlive the subscriptions.
    pub stats: Vec<SubscriptionStats>,
}

impl ShutdownReport {
    /// Whether every subscription finished everything.
    pub fn is_clean(&self) -> bool {
        self.timed_out.is_empty() && self.still_running.is_empty()
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .inner
            .subscriptions
            .lock()
            .expect("subscriptions lock")
            .keys()
            .cloned()
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
        Self::new(bus.running().iter().map(|s| s.wiring.clone()))
    }
}

impl Bus {
    /// Starts configuring a bus. See [`BusBuilder`].
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    pub(crate) fn new(
        writer: Writer,
        dead_letters: Option<Arc<dyn crate::backend::DeadLetterStore>>,
        retries: Option<Arc<dyn RetryStore>>,
        shutdown_timeout: Duration,
    ) -> Self {
        Bus {
            inner: Arc::new(Inner {
                dead_letters: DeadLetters::new(
                    dead_letters.unwrap_or_else(|| Arc::new(MemoryDeadLetters::default())),
                ),
                backend: writer.backend(),
                writer,
                closed: AtomicBool::new(false),
                accepted: AtomicU64::new(0),
                appended: AtomicU64::new(0),
                retries,
                subscriptions: Mutex::new(BTreeMap::new()),
                shutdown_timeout,
                background: Mutex::default(),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
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
        match &self.inner.writer {
            Writer::Memory(log) => match log.try_append(event.into()) {
                Ok(_) => Ok(()),
                Err(TryAppendError::Full(event)) => {
                    log.append(event).await.map(drop).map_err(NotifyError::from)
                }
                Err(TryAppendError::Closed(event)) => Err(NotifyError::Closed(event)),
            },
            Writer::Backend(backend) => {
                let event = event.into();
                if self.inner.closed.load(SeqCst) {
                    return Err(NotifyError::Closed(event));
                }
                let position = backend.append(event).await?;
                self.inner.accepted(position);
                Ok(())
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
        let event = event.into();
        match &self.inner.writer {
            Writer::Memory(log) => match log.try_append(event) {
                Ok(_) => Ok(()),
                Err(TryAppendError::Full(e)) => Err(TryNotifyError::Full(e)),
                Err(TryAppendError::Closed(e)) => Err(TryNotifyError::Closed(e)),
            },
            Writer::Backend(_) if self.inner.closed.load(SeqCst) => {
                Err(TryNotifyError::Closed(event))
            }
            Writer::Backend(_) => Err(TryNotifyError::WouldBlock(event)),
        }
    }

    /// Starts configuring a subscription named `name` that hands events to
    /// `consumer`. Nothing runs until
    /// [`start`](SubscriptionBuilder::start).
    pub fn subscribe<C: Consumer>(
        &self,
        name: impl Into<String>,
        consumer: C,
    ) -> SubscriptionBuilder<'_, C> {
        SubscriptionBuilder::new(self, name.into(), consumer)
    }

    /// Resolves when every running subscription has finished every event
    /// this bus notified before the call (handled, or dead-lettered after
    /// its last attempt), the backlog its backend reported (a durable log's
    /// events from before a restart) and every pending replay, and has
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
        if let Some(own) = self.own_handler() {
            return Err(DrainError::InsideHandler(own.name.to_string()));
        }
        let head = self.inner.appended();
        for state in self.running() {
            let mut done = state.done.subscribe();
            let mut stall = state.stall.watch();
            let mut paused = state.paused.subscribe();
            // What this process notified, and what the backend said was
            // left when the subscription last committed.
            let target = head.max(*state.done.borrow() + state.backlog.load(SeqCst));
            loop {
                if let Some(stalled) = stall.borrow_and_update().clone()
                    && stalled.fatal
                {
                    return Err(DrainError::Stalled {
                        subscription: state.name.to_string(),
                        reason: stalled.reason,
                    });
                }
                // Replays change no position; their runner pings `done`
                // when one finishes, which re-runs this check.
                if state.finished.load(SeqCst)
                    || (*done.borrow_and_update() >= target && state.replays.load(SeqCst) == 0)
                {
                    break;
                }
                // After the check above: a paused subscription with nothing
                // left holds no drain back.
                if *paused.borrow_and_update() {
                    return Err(DrainError::Paused(state.name.to_string()));
                }
                tokio::select! {
                    _ = done.changed() => {}
                    _ = stall.changed() => {}
                    _ = paused.changed() => {}
                }
            }
            let (ack, acked) = tokio::sync::oneshot::channel();
            if state.flush.send(ack).await.is_ok() {
                let _ = acked.await;
            }
        }
        Ok(())
    }

    /// The subscription of this bus whose handler the current task is in.
    fn own_handler(&self) -> Option<Arc<State>> {
        let handling = self.handling()?;
        let subscriptions = self.inner.subscriptions.lock().expect("subscriptions lock");
        subscriptions
            .values()
            .filter_map(Slot::state)
            .find(|state| state.handling() == handling)
            .cloned()
    }

    /// Whether the current task runs a handler of this bus, and whose.
    fn handling(&self) -> Option<crate::handling::Handling> {
        crate::handling::current().filter(|h| h.bus == Arc::as_ptr(&self.inner) as usize)
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
        self.inner.closed.store(true, SeqCst);
        self.inner.backend.close();
        let deadline = tokio::time::Instant::now() + self.inner.shutdown_timeout;
        if self.handling().is_some() {
            let still_running = self
                .stopping()
                .iter()
                .filter(|state| !state.finished.load(SeqCst))
                .map(|state| state.name.to_string())
                .collect();
            tracing::warn!("shutdown called from inside a handler; it finishes in the background");
            self.in_background(self.stopping(), deadline);
            return ShutdownReport {
                still_running,
                ..ShutdownReport::default()
            };
        }
        let mut report = self.wait_for_stop(deadline).await;
        // What stops finished in the background reported, once.
        let background =
            std::mem::take(&mut *self.inner.background.lock().expect("background lock"));
        report.timed_out.extend(background.timed_out);
        report.stats.extend(background.stats);
        report
    }

    /// Every subscription that may still run: running or stopping.
    fn stopping(&self) -> Vec<Arc<State>> {
        self.inner
            .subscriptions
            .lock()
            .expect("subscriptions lock")
            .values()
            .filter_map(Slot::state)
            .cloned()
            .collect()
    }

    /// Waits for every subscription to end, stopping those still busy at
    /// the deadline, and takes them off the bus.
    async fn wait_for_stop(&self, deadline: tokio::time::Instant) -> ShutdownReport {
        self.stop_all(self.stopping(), deadline).await
    }

    /// Waits for `states` to end, stopping those still busy at the
    /// deadline, takes them off the bus, and reports.
    async fn stop_all(
        &self,
        states: Vec<Arc<State>>,
        deadline: tokio::time::Instant,
    ) -> ShutdownReport {
        let mut report = ShutdownReport::default();
        for state in states {
            // What was left is counted before the stop, which drops the
            // replays and deliveries it cuts short.
            let mut left = None;
            // A paused subscription reads no further, not even to the end
            // of a closed log: it stops where it is, and what it did not
            // take shows as its lag.
            if state.is_paused() {
                state.request_stop();
            }
            if !finishes_in_time(&state, deadline).await {
                left = Some(state.stats(self.inner.appended()));
                // The flag stops deliveries at once, wherever they were
                // spawned; the abort drops the runner and its tasks, and is
                // waited for, so nothing of the subscription runs once this
                // returns.
                state.abort().await;
            }
            let stats = state.stats(self.inner.appended());
            // Reported by every call that waited for it, including one whose
            // own deadline had not passed when another's did.
            let left = left.unwrap_or_else(|| stats.clone());
            let unfinished =
                left.lag > 0 || left.in_flight > 0 || left.replaying > 0 || left.buffered > 0;
            if state.aborted.load(SeqCst) && unfinished {
                tracing::warn!(
                    subscription = %left.name,
                    unfinished = left.lag,
                    "deadline passed; subscription stopped with work left",
                );
                report.timed_out.push(left);
            }
            report.stats.push(stats);
            self.forget(&state);
        }
        report
    }

    /// Takes an ended subscription off the bus, unless a newer one has its
    /// name by now.
    fn forget(&self, state: &Arc<State>) {
        let mut subscriptions = self.inner.subscriptions.lock().expect("subscriptions lock");
        if subscriptions
            .get(&*state.name)
            .and_then(Slot::state)
            .is_some_and(|s| Arc::ptr_eq(s, state))
        {
            subscriptions.remove(&*state.name);
        }
        drop(subscriptions);
        self.inner.dead_letters.unroute(&state.name, &state.replays);
    }

    /// The counters of every running subscription, by name.
    pub fn stats(&self) -> Vec<SubscriptionStats> {
        let head = self.inner.appended();
        self.stopping().iter().map(|s| s.stats(head)).collect()
    }

    /// The dead letters of every subscription of this bus.
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.inner.dead_letters
    }

    /// How many events this bus accepted since it was built. A durable
    /// backend's own history, and events other processes wrote to a shared
    /// one, are not counted.
    pub fn notified(&self) -> u64 {
        match &self.inner.writer {
            Writer::Memory(log) => log.head(),
            Writer::Backend(_) => self.inner.accepted.load(SeqCst),
        }
    }

    /// What the bus's backend offers: durable, schedules its own retries,
    /// shared subscriptions, ordered.
    pub fn capabilities(&self) -> crate::backend::Capabilities {
        self.inner.backend.capabilities()
    }

    /// Pauses the running subscription named `name`; see
    /// [`Subscription::pause`](crate::Subscription::pause). `None` when no
    /// subscription of that name is running, otherwise whether it changed
    /// (`false`: it was paused already).
    pub fn pause(&self, name: &str) -> Option<bool> {
        Some(self.running_named(name)?.set_paused(true))
    }

    /// Resumes the paused subscription named `name`. `None` when no
    /// subscription of that name is running, otherwise whether it changed
    /// (`false`: it was not paused).
    pub fn resume(&self, name: &str) -> Option<bool> {
        Some(self.running_named(name)?.set_paused(false))
    }

    fn running_named(&self, name: &str) -> Option<Arc<State>> {
        let subscriptions = self.inner.subscriptions.lock().expect("subscriptions lock");
        subscriptions.get(name)?.running().cloned()
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
        self.remove(name, self.inner.shutdown_timeout).await
    }

    pub(crate) async fn remove(&self, name: &str, timeout: Duration) -> Option<ShutdownReport> {
        let state = {
            let subscriptions = self.inner.subscriptions.lock().expect("subscriptions lock");
            Arc::clone(subscriptions.get(name)?.state()?)
        };
        Some(self.stop_one(state, timeout).await)
    }

    /// Stops one run of a subscription, running or stopping already, within
    /// `timeout`. A second stop of a subscription that is stopping waits
    /// for it too, with a deadline of its own; a run that has ended (its
    /// name may be another run's by now) reports nothing.
    pub(crate) async fn stop_one(&self, state: Arc<State>, timeout: Duration) -> ShutdownReport {
        {
            let mut subscriptions = self.inner.subscriptions.lock().expect("subscriptions lock");
            match subscriptions.get_mut(&*state.name) {
                Some(slot) if slot.state().is_some_and(|s| Arc::ptr_eq(s, &state)) => {
                    if matches!(slot, Slot::Running(_)) {
                        *slot = Slot::Stopping(Arc::clone(&state));
                    }
                }
                _ => return ShutdownReport::default(),
            }
        }
        state.request_stop();
        let deadline = tokio::time::Instant::now() + timeout;
        if self.handling().is_some() {
            // From inside a handler, waiting could wait on this very
            // handler, or on one that waits for us: the stop completes in
            // the background, and a shutdown still finds it.
            let name = state.name.to_string();
            self.in_background(vec![state], deadline);
            return ShutdownReport {
                still_running: vec![name],
                ..ShutdownReport::default()
            };
        }
        // Cancel safe: dropped here, the entry stays `Stopping` until a
        // stop, a shutdown (or a new subscription under the name, once the
        // runner has ended) takes it.
        self.stop_all(vec![state], deadline).await
    }

    /// Finishes stopping `states` from a task of its own, for a call made
    /// inside a handler; what it reports goes into the next shutdown's
    /// report, so the final counters are not lost.
    fn in_background(&self, states: Vec<Arc<State>>, deadline: tokio::time::Instant) {
        let bus = self.clone();
        tokio::spawn(async move {
            let report = bus.stop_all(states, deadline).await;
            let mut kept = bus.inner.background.lock().expect("background lock");
            kept.timed_out.extend(report.timed_out);
            kept.stats.extend(report.stats);
        });
    }

    fn running(&self) -> Vec<Arc<State>> {
        self.inner
            .subscriptions
            .lock()
            .expect("subscriptions lock")
            .values()
            .filter_map(|slot| slot.running().cloned())
            .collect()
    }
}
