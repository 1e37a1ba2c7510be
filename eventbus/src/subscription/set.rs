//! The subscriptions of one bus, and what they run on: one type owns the
//! set, with the operations that reserve a name, activate, pause, stop,
//! drain and shut down its members. The bus and the subscription handles
//! both go through it, so neither reaches into the other.

use super::State;
use super::SubscriptionStats;
use crate::backend::writer::Writer;
use crate::backend::{Position, RetryStore};
use crate::bus::error::{DrainError, SubscribeError};
use crate::dead_letter::DeadLetters;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The subscriptions of one bus, by name, and what they need from it.
pub(crate) struct SubscriptionSet {
    slots: Mutex<BTreeMap<String, Slot>>,
    pub(crate) writer: Writer,
    pub(crate) retries: Option<Arc<dyn RetryStore>>,
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

/// Waits for a stopping subscription's task until the deadline, or until
/// the subscription hits a problem retrying cannot fix (a damaged file),
/// which no wait would get it past. Returns whether the task ended.
///
/// A paused subscription reads no further, not even to the end of a closed
/// log: paused before or during the wait, it is stopped where it is, and
/// what it did not take shows as its lag.
async fn finishes_in_time(state: &State, deadline: tokio::time::Instant) -> bool {
    let mut stall = state.stall.watch();
    let fatal = stall.wait_for(|s| s.as_ref().is_some_and(|s| s.fatal));
    let mut paused = state.paused.subscribe();
    let stop_when_paused = async {
        if paused.wait_for(|p| *p).await.is_ok() {
            state.request_stop();
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = state.finished() => true,
        () = tokio::time::sleep_until(deadline) => false,
        _ = fatal => false,
        () = stop_when_paused => unreachable!("never resolves"),
    }
}

/// What [`Bus::shutdown`](crate::Bus::shutdown) or a stop could not finish within its deadline,
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

/// A reserved name, given back if the start fails or its future is
/// dropped before [`SubscriptionSet::activate`].
pub(crate) struct Reservation<'a> {
    set: &'a SubscriptionSet,
    name: String,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut slots = self.set.slots.lock().expect("subscriptions lock");
            if matches!(slots.get(&self.name), Some(Slot::Starting)) {
                slots.remove(&self.name);
            }
        }
    }
}

impl SubscriptionSet {
    pub(crate) fn new(
        writer: Writer,
        retries: Option<Arc<dyn RetryStore>>,
        dead_letters: DeadLetters,
        shutdown_timeout: Duration,
    ) -> Self {
        SubscriptionSet {
            slots: Mutex::new(BTreeMap::new()),
            writer,
            retries,
            dead_letters,
            shutdown_timeout,
            background: Mutex::default(),
        }
    }

    /// What tells this set's handlers apart from another bus's.
    pub(crate) fn id(&self) -> usize {
        self as *const SubscriptionSet as usize
    }

    /// Holds `name` while its subscription starts.
    pub(crate) fn reserve(&self, name: &str) -> Result<Reservation<'_>, SubscribeError> {
        let mut slots = self.slots.lock().expect("subscriptions lock");
        if self.writer.is_closed() {
            return Err(SubscribeError::Closed);
        }
        match slots.get(name) {
            // A stop whose caller gave up waiting leaves the slot behind;
            // once its runner has ended the name is free.
            // So does a subscription that ended by itself (its claim was
            // lost, its log ended).
            Some(Slot::Stopping(old) | Slot::Running(old)) if old.finished.load(SeqCst) => {}
            Some(_) => return Err(SubscribeError::DuplicateName(name.to_owned())),
            None => {}
        }
        slots.insert(name.to_owned(), Slot::Starting);
        Ok(Reservation {
            set: self,
            name: name.to_owned(),
            armed: true,
        })
    }

    /// The reserved subscription is running.
    pub(crate) fn activate(&self, mut reservation: Reservation<'_>, state: Arc<State>) {
        reservation.armed = false;
        self.slots
            .lock()
            .expect("subscriptions lock")
            .insert(reservation.name.clone(), Slot::Running(state));
    }

    /// [`Bus::drain`](crate::Bus::drain).
    pub(crate) async fn drain(&self) -> Result<(), DrainError> {
        if let Some(own) = self.own_handler() {
            return Err(DrainError::InsideHandler(own.name.to_string()));
        }
        let head = self.writer.appended();
        let running = self.running();
        // Asked once up front for every subscription a backend settles on
        // its own, so the stats of each hold the backend's count even when
        // a paused one ends the drain early.
        for state in running.iter().filter(|s| s.settles) {
            self.settled(state, state.asked_up_to(head)).await;
        }
        for state in running {
            let _watching = state.done.watch();
            let mut stall = state.stall.watch();
            let mut paused = state.paused.subscribe();
            // What this process notified, and what the backend said it
            // held when the subscription last committed.
            let target = head.max(state.known_head.load(SeqCst));
            // A backend that settles each delivery on its own is asked
            // whether the subscription finished what this process
            // notified, from time to time, while the loop below waits.
            let mut asking = state.settles.then(|| {
                let mut every = tokio::time::interval(SETTLED_POLL);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every
            });
            // `None`: the backend leaves it to the reader's commits.
            let mut settled = Some(false);
            loop {
                // Made before the checks below, so a change between them
                // and the wait is not missed.
                let changed = state.done.changed();
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
                let reached = state.done.get();
                let finished = match settled.filter(|_| state.settles) {
                    Some(settled) => settled,
                    None => reached >= target,
                };
                // Parked events are finished for the log, not for drain.
                let rerunning = state.replays.load(SeqCst)
                    + state.parked.load(SeqCst)
                    + u64::from(state.parked_stale());
                if state.finished.load(SeqCst) || (finished && rerunning == 0) {
                    break;
                }
                // After the check above: a paused subscription with nothing
                // left holds no drain back.
                if *paused.borrow_and_update() {
                    // What the backend says now, not at its last answer.
                    if state.settles && settled == Some(false) {
                        settled = self.settled(&state, state.asked_up_to(head)).await;
                        if settled == Some(true) && rerunning == 0 {
                            break;
                        }
                    }
                    return Err(DrainError::Paused(state.name.to_string()));
                }
                tokio::select! {
                    () = changed => {}
                    _ = stall.changed() => {}
                    _ = paused.changed() => {}
                    _ = async { asking.as_mut().expect("checked").tick().await }, if asking.is_some() => {
                        settled = self.settled(&state, state.asked_up_to(head)).await;
                    }
                }
            }
            let (ack, acked) = tokio::sync::oneshot::channel();
            if state.flush.send(ack).await.is_ok() {
                state.wake.raise();
                let _ = acked.await;
            }
        }
        Ok(())
    }

    /// Whether the backend says `state`'s subscription finished every event
    /// before `head`, for a backend that settles each delivery on its own.
    /// A failure to ask is logged and asked again; `None` when the backend
    /// leaves it to the reader's commits.
    async fn settled(&self, state: &State, head: Position) -> Option<bool> {
        match self.writer.get().finished_before(&state.name, head).await {
            Ok(finished) => finished,
            Err(err) => {
                // Asked every 20 ms: said once every few seconds.
                static LAST_SAID: std::sync::atomic::AtomicU64 =
                    std::sync::atomic::AtomicU64::new(0);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                if LAST_SAID.load(SeqCst).saturating_add(5) <= now {
                    LAST_SAID.store(now, SeqCst);
                    tracing::warn!(
                        subscription = %state.name,
                        error = %crate::failure::error_chain(&err).join(": "),
                        "cannot ask the backend whether the subscription finished; drain asks again",
                    );
                }
                Some(false)
            }
        }
    }

    /// The subscription of this bus whose handler the current task is in.
    fn own_handler(&self) -> Option<Arc<State>> {
        let handling = self.handling()?;
        let subscriptions = self.slots.lock().expect("subscriptions lock");
        subscriptions
            .values()
            .filter_map(Slot::state)
            .find(|state| state.handling() == handling)
            .cloned()
    }

    /// Whether the current task runs a handler of this bus, and whose.
    fn handling(&self) -> Option<crate::handling::Handling> {
        crate::handling::current().filter(|h| h.bus == self.id())
    }

    /// [`Bus::shutdown`](crate::Bus::shutdown).
    pub(crate) async fn shutdown(self: &Arc<Self>) -> ShutdownReport {
        self.writer.close();
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
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
        // A `notify` that was writing when the bus closed may still be
        // accepted: the subscriptions' last counts wait for it, so an event
        // accepted then is delivered or counted as left, never neither. A
        // backend that does not answer by the deadline is not waited for.
        let _ = tokio::time::timeout_at(deadline, self.writer.returned()).await;
        let mut report = self.wait_for_stop(deadline).await;
        // What stops finished in the background reported, once.
        let background = std::mem::take(&mut *self.background.lock().expect("background lock"));
        report.timed_out.extend(background.timed_out);
        report.stats.extend(background.stats);
        report
    }

    /// Every subscription that may still run: running or stopping.
    pub(crate) fn stopping(&self) -> Vec<Arc<State>> {
        self.slots
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
            if !finishes_in_time(&state, deadline).await {
                if state.settles {
                    // The backend's own count of what is left, bounded by
                    // the deadline like the rest of the stop.
                    let asked = self.settled(&state, self.writer.appended());
                    let _ = tokio::time::timeout(LAST_COUNT, asked).await;
                }
                left = Some(state.stats(self.writer.appended(), self.writer.accepted()));
                // The flag stops deliveries at once, wherever they were
                // spawned; the abort drops the runner and its tasks, and is
                // waited for, so nothing of the subscription runs once this
                // returns.
                state.abort().await;
            }
            let stats = state.stats(self.writer.appended(), self.writer.accepted());
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
        let mut subscriptions = self.slots.lock().expect("subscriptions lock");
        if subscriptions
            .get(&*state.name)
            .and_then(Slot::state)
            .is_some_and(|s| Arc::ptr_eq(s, state))
        {
            subscriptions.remove(&*state.name);
        }
        drop(subscriptions);
        self.dead_letters.unroute(&state.name, &state.replays);
    }

    /// [`Bus::stats`](crate::Bus::stats).
    pub(crate) fn stats(&self) -> Vec<SubscriptionStats> {
        let (head, accepted) = (self.writer.appended(), self.writer.accepted());
        self.stopping()
            .iter()
            .map(|s| s.stats(head, accepted))
            .collect()
    }

    /// [`Bus::pause`](crate::Bus::pause).
    pub(crate) fn pause(&self, name: &str) -> Option<bool> {
        Some(self.running_named(name)?.set_paused(true))
    }

    /// [`Bus::resume`](crate::Bus::resume).
    pub(crate) fn resume(&self, name: &str) -> Option<bool> {
        Some(self.running_named(name)?.set_paused(false))
    }

    fn running_named(&self, name: &str) -> Option<Arc<State>> {
        let subscriptions = self.slots.lock().expect("subscriptions lock");
        subscriptions.get(name)?.running().cloned()
    }

    /// [`Bus::unsubscribe`](crate::Bus::unsubscribe).
    pub(crate) async fn unsubscribe(self: &Arc<Self>, name: &str) -> Option<ShutdownReport> {
        self.remove(name, self.shutdown_timeout).await
    }

    pub(crate) async fn remove(
        self: &Arc<Self>,
        name: &str,
        timeout: Duration,
    ) -> Option<ShutdownReport> {
        let state = {
            let subscriptions = self.slots.lock().expect("subscriptions lock");
            Arc::clone(subscriptions.get(name)?.state()?)
        };
        Some(self.stop_one(state, timeout).await)
    }

    /// Stops one run of a subscription, running or stopping already, within
    /// `timeout`. A second stop of a subscription that is stopping waits
    /// for it too, with a deadline of its own; a run that has ended (its
    /// name may be another run's by now) reports nothing.
    pub(crate) async fn stop_one(
        self: &Arc<Self>,
        state: Arc<State>,
        timeout: Duration,
    ) -> ShutdownReport {
        {
            let mut subscriptions = self.slots.lock().expect("subscriptions lock");
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
    fn in_background(self: &Arc<Self>, states: Vec<Arc<State>>, deadline: tokio::time::Instant) {
        let set = Arc::clone(self);
        tokio::spawn(async move {
            if set.writer.is_closed() {
                // A shutdown: its last counts wait for the notifies still
                // being written, as in `shutdown` itself.
                let _ = tokio::time::timeout_at(deadline, set.writer.returned()).await;
            }
            let report = set.stop_all(states, deadline).await;
            let mut kept = set.background.lock().expect("background lock");
            kept.timed_out.extend(report.timed_out);
            kept.stats.extend(report.stats);
        });
    }

    pub(crate) fn running(&self) -> Vec<Arc<State>> {
        self.slots
            .lock()
            .expect("subscriptions lock")
            .values()
            .filter_map(|slot| slot.running().cloned())
            .collect()
    }
}

/// How often [`Bus::drain`](crate::Bus::drain) asks a backend that settles
/// each delivery on its own whether a subscription finished.
const SETTLED_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// How long a stop past its deadline waits for a backend that settles each
/// delivery on its own to count what is left.
const LAST_COUNT: std::time::Duration = std::time::Duration::from_secs(1);
