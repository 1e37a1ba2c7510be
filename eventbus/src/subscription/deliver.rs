//! Delivering one event: attempts at the consumer with retries, the retry
//! schedules a durable log keeps, dead letters, and the count of what is
//! in flight.

use super::state::State;
use crate::backend::{Parked, Position, RetryState, RetryStore, Settle, Settlement};
use crate::consumer::Consumer;
use crate::dead_letter::{DeadLetterWriter, Replay};
use crate::event::AnyEvent;
use crate::failure::{error_chain, panic_message};
use crate::retry::{Attempted, Attempts, Failure, Retry};
use chrono::Utc;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;
use tracing::Instrument;

/// The retry schedules of one subscription, kept in a durable log's
/// [`RetryStore`]. Loaded once at start: only events that were waiting for
/// a retry when the process stopped are in it.
pub(crate) struct RetryBook {
    pub(crate) store: Arc<dyn RetryStore>,
    pub(crate) pending: std::sync::Mutex<std::collections::HashMap<Position, RetryState>>,
}

/// Retry schedules load this many at a time.
const RETRY_PAGE: usize = 1000;

impl RetryBook {
    /// Loads the subscription's schedules, a page at a time.
    pub(crate) async fn load(
        store: Arc<dyn RetryStore>,
        subscription: &str,
    ) -> Result<Self, crate::bus::error::SubscribeError> {
        let mut pending = std::collections::HashMap::new();
        let mut after = None;
        loop {
            let page = store
                .load(subscription, after, RETRY_PAGE)
                .await
                .map_err(crate::bus::error::SubscribeError::Store)?;
            // A store may answer with fewer than asked for and still have
            // more: only an empty page ends the load.
            let Some(&(last, _)) = page.last() else {
                break;
            };
            after = Some(last);
            pending.extend(page);
        }
        Ok(RetryBook {
            store,
            pending: std::sync::Mutex::new(pending),
        })
    }

    fn take(&self, position: Position) -> Option<RetryState> {
        self.pending
            .lock()
            .expect("retry book lock")
            .remove(&position)
    }
}

/// Hands one event to the consumer, with retries and dead-lettering. Shared
/// by the runner and, in concurrent and partitioned modes, by its tasks.
pub(crate) struct Deliverer<C> {
    pub(crate) retries: Option<RetryBook>,
    pub(crate) consumer: C,
    pub(crate) retry: Retry,
    pub(crate) state: Arc<State>,
    pub(crate) dead_letters: DeadLetterWriter,
    pub(crate) metrics: Metrics,
    /// Told what became of each delivery, for a backend that settles each
    /// on its own.
    pub(crate) settler: Option<Arc<dyn Settle>>,
    /// Whether a failed attempt goes back to the backend, which schedules
    /// the next one, instead of waiting here while holding the event.
    pub(crate) hands_back: bool,
    /// The store failed events are parked in until their next attempt,
    /// so the subscription moves on past them; `None` to retry in place.
    pub(crate) parking: Option<Arc<dyn RetryStore>>,
    /// Deliveries handled but not yet told to the settler: the consumer
    /// may only have buffered what they gave it (a batcher), so they are
    /// settled after its next flush, as a log's commit waits for one.
    pub(crate) unflushed: std::sync::Mutex<Vec<Position>>,
}

pub(crate) struct Metrics {
    delivered: metrics::Counter,
    failed: metrics::Counter,
    retried: metrics::Counter,
    pub(super) in_flight: metrics::Gauge,
    pub(super) lag: metrics::Gauge,
}

impl Metrics {
    pub(crate) fn new(subscription: &str) -> Self {
        let label = subscription.to_owned();
        Metrics {
            delivered: metrics::counter!("eventbus_delivered_total", "subscription" => label.clone()),
            failed: metrics::counter!("eventbus_failed_total", "subscription" => label.clone()),
            retried: metrics::counter!("eventbus_retried_total", "subscription" => label.clone()),
            in_flight: metrics::gauge!("eventbus_in_flight", "subscription" => label.clone()),
            lag: metrics::gauge!("eventbus_lag", "subscription" => label),
        }
    }
}

impl<C: Consumer> Deliverer<C> {
    /// Hands `event` (at `position` in the log; `None` for a replay) to the
    /// consumer until it succeeds or runs out of attempts, starting at the
    /// attempt the backend counts.
    pub(crate) async fn deliver(&self, position: Option<Position>, event: &AnyEvent, first: u32) {
        let mut first = first.max(1);
        let mut first_failed_at = None;
        // An event that was waiting for a retry when the process stopped
        // resumes its schedule.
        let book = self.retries.as_ref().zip(position);
        let mut stored = false;
        if let Some((book, position)) = book
            && let Some(state) = book.take(position)
        {
            first = first.max(state.attempts + 1);
            first_failed_at = Some(state.first_failed_at);
            stored = true;
            // The stored time comes from the wall clock, which may have
            // been stepped since; the policy's cap still bounds the wait.
            if let Ok(wait) = (state.next_attempt_at - Utc::now()).to_std() {
                Box::pin(tokio::time::sleep(wait.min(self.retry.cap()))).await;
            }
        }
        // The first attempt is awaited right here, the consumer's future
        // in this one's, and the rest of the retry loop is boxed: every
        // level of future between a delivery and the consumer is copied
        // and polled for every event, which the rate of the whole bus
        // depends on.
        if first > 1 && self.hands_back {
            // The backend's redelivery of an attempt handed back.
            self.state.counters.retried.fetch_add(1, Relaxed);
            self.metrics.retried.increment(1);
        }
        let span = self.span(event, first);
        let handled = AssertUnwindSafe(self.consumer.handle(event)).catch_unwind();
        // With no subscriber listening at debug level the span is disabled;
        // entering and leaving it on every poll would still cost each
        // delivery a wrapper.
        let outcome = if span.is_disabled() {
            handled.await
        } else {
            handled.instrument(span).await
        };
        match self.outcome(outcome) {
            Ok(()) => {
                self.delivered();
                self.settle(position, Settlement::Done);
                if stored {
                    Box::pin(self.forget_retry(book)).await;
                }
            }
            Err(failure) => {
                let delivery = Delivery {
                    deliverer: self,
                    event,
                    position,
                    book,
                    stored,
                };
                Box::pin(delivery.after_failure(first, failure, first_failed_at)).await;
            }
        }
    }

    #[inline]
    fn delivered(&self) {
        self.state.counters.delivered.fetch_add(1, Relaxed);
        self.metrics.delivered.increment(1);
    }
}

/// One event's attempts at its consumer.
struct Delivery<'a, C> {
    deliverer: &'a Deliverer<C>,
    event: &'a AnyEvent,
    position: Option<Position>,
    /// Where its retry schedule is kept, for an event from a durable log.
    book: Option<(&'a RetryBook, Position)>,
    /// Whether a schedule of it is stored, to clear once it finishes.
    stored: bool,
}

impl<C: Consumer> Delivery<'_, C> {
    /// Goes on after attempt `number` failed: retries, then a dead letter
    /// if they all fail. Kept out of [`Deliverer::deliver`], whose future
    /// every event builds.
    async fn after_failure(
        mut self,
        number: u32,
        failure: Failure,
        first_failed_at: Option<chrono::DateTime<Utc>>,
    ) {
        let deliverer = self.deliverer;
        if deliverer.hands_back && self.position.is_some() {
            return self.hand_back(number, failure, first_failed_at).await;
        }
        let failure = match &deliverer.parking {
            Some(store) if self.position.is_some() => {
                match deliverer
                    .park(&**store, self.event, number, failure, first_failed_at)
                    .await
                {
                    Ok(()) => {
                        if self.stored {
                            deliverer.forget_retry(self.book).await;
                        }
                        return;
                    }
                    Err(failure) => failure,
                }
            }
            _ => failure,
        };
        let attempted = deliverer
            .retry
            .after_failure(&mut self, number, failure, first_failed_at)
            .await;
        match attempted {
            Attempted::Succeeded => {
                deliverer.delivered();
                deliverer.settle(self.position, Settlement::Done);
            }
            Attempted::GaveUp {
                attempts,
                errors,
                first_failed_at,
            } => {
                deliverer
                    .dead_letters
                    .write(self.event.clone(), errors, attempts, first_failed_at)
                    .await;
                deliverer.settle(self.position, Settlement::DeadLettered);
            }
        }
        if self.stored {
            deliverer.forget_retry(self.book).await;
        }
    }
}

impl<C: Consumer> Delivery<'_, C> {
    /// On a backend that schedules retries: attempt `number` failed, so
    /// the event goes back to the backend with the policy's delay, and
    /// comes back as attempt `number + 1`; or, out of attempts or failed
    /// for good, it is dead-lettered here, since a broker does not
    /// dead-letter by itself.
    async fn hand_back(
        self,
        number: u32,
        failure: Failure,
        first_failed_at: Option<chrono::DateTime<Utc>>,
    ) {
        let deliverer = self.deliverer;
        let retry = &deliverer.retry;
        // Earlier attempts ran as other deliveries, maybe in other
        // processes: the first failure's time is not known here.
        let first_failed_at = first_failed_at.unwrap_or_else(Utc::now);
        if !failure.permanent && number < retry.attempts() {
            let delay = retry.delay_after(number, &failure);
            tracing::warn!(
                subscription = %deliverer.state.name,
                event = %self.event.name(),
                event_id = %self.event.meta().id,
                attempt = number,
                retry_in = ?delay,
                error = %failure.errors.join(": "),
                "event handling failed; the backend delivers it again",
            );
            deliverer.settle(self.position, Settlement::Retry(delay));
            return;
        }
        deliverer
            .dead_letters
            .write(self.event.clone(), failure.errors, number, first_failed_at)
            .await;
        deliverer.settle(self.position, Settlement::DeadLettered);
    }
}

impl<C: Consumer> Deliverer<C> {
    /// Parks `event`, whose attempt `number` failed, until its next attempt
    /// is due, so the subscription moves on. The failure comes back when
    /// it cannot be parked (no attempts left, a permanent failure, a store
    /// that refuses), for the caller to retry in place or dead-letter.
    async fn park(
        &self,
        store: &dyn RetryStore,
        event: &AnyEvent,
        number: u32,
        failure: Failure,
        first_failed_at: Option<chrono::DateTime<Utc>>,
    ) -> Result<(), Failure> {
        if failure.permanent || number >= self.retry.attempts() {
            return Err(failure);
        }
        let first_failed_at = first_failed_at.unwrap_or_else(Utc::now);
        let (delay, state) = self.next_retry(event, number, &failure, first_failed_at);
        match store
            .park(&self.state.name, event, state, &failure.errors)
            .await
        {
            Ok(()) => {
                self.state.parked_changed();
                self.state.parked_for(delay);
                Ok(())
            }
            Err(err) => {
                tracing::warn!(
                    subscription = %self.state.name,
                    event = %event.name(),
                    error = %error_chain(&err).join(": "),
                    "could not park a failed event; retrying it in place",
                );
                Err(failure)
            }
        }
    }

    /// When `event`'s next attempt is due after attempt `number` failed,
    /// and its retry state then; the failure is logged.
    fn next_retry(
        &self,
        event: &AnyEvent,
        number: u32,
        failure: &Failure,
        first_failed_at: chrono::DateTime<Utc>,
    ) -> (Duration, RetryState) {
        let delay = self.retry.delay_after(number, failure);
        tracing::warn!(
            subscription = %self.state.name,
            event = %event.name(),
            event_id = %event.meta().id,
            attempt = number,
            retry_in = ?delay,
            error = %failure.errors.join(": "),
            "event handling failed; parking it until its retry, while the subscription goes on",
        );
        let state = RetryState {
            attempts: number,
            next_attempt_at: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
            first_failed_at,
        };
        (delay, state)
    }

    /// One attempt at a parked event whose retry is due: then it is
    /// forgotten (handled, or dead-lettered at its last attempt) or parked
    /// again with one attempt more. A store that fails, or a claim that
    /// ran out meanwhile, leaves it to whoever holds it now.
    pub(super) async fn run_parked(&self, parked: Parked) {
        let Some(store) = &self.parking else {
            // Only a subscription that parks claims parked events.
            return;
        };
        let Parked {
            id,
            event,
            state,
            claim,
        } = parked;
        let number = state.attempts + 1;
        self.state.counters.retried.fetch_add(1, Relaxed);
        self.metrics.retried.increment(1);
        let handled = AssertUnwindSafe(self.consumer.handle(&event))
            .catch_unwind()
            .instrument(self.span(&event, number));
        let updated = match self.outcome(handled.await) {
            Ok(()) => {
                self.delivered();
                // A batching consumer has only queued the payload.
                self.flush().await;
                store.unpark(id, claim).await
            }
            Err(failure) if !failure.permanent && number < self.retry.attempts() => {
                let (delay, state) =
                    self.next_retry(&event, number, &failure, state.first_failed_at);
                let reparked = store.repark(id, claim, state, &failure.errors).await;
                if matches!(reparked, Ok(true)) {
                    self.state.parked_for(delay);
                }
                reparked
            }
            Err(Failure { errors, .. }) => {
                self.dead_letters
                    .write(event.clone(), errors, number, state.first_failed_at)
                    .await;
                self.flush().await;
                store.unpark(id, claim).await
            }
        };
        self.parked_updated(id, updated);
    }

    /// Counts a change to parked event `id`, or says why there was none.
    fn parked_updated(&self, id: u64, updated: Result<bool, crate::backend::StoreError>) {
        match updated {
            Ok(true) => self.state.parked_changed(),
            Ok(false) => tracing::warn!(
                subscription = %self.state.name,
                id,
                "a parked event's claim ran out while it ran; whoever claimed it since runs it again",
            ),
            Err(err) => tracing::error!(
                subscription = %self.state.name,
                id,
                error = %error_chain(&err).join(": "),
                "could not update a parked event; it runs again once its claim runs out",
            ),
        }
    }
}

impl<C: Consumer> Attempts for Delivery<'_, C> {
    async fn attempt(&mut self, number: u32, retry: bool) -> Result<(), Failure> {
        let (deliverer, event) = (self.deliverer, self.event);
        if retry {
            deliverer.state.counters.retried.fetch_add(1, Relaxed);
            deliverer.metrics.retried.increment(1);
        }
        let handled = AssertUnwindSafe(deliverer.consumer.handle(event))
            .catch_unwind()
            .instrument(deliverer.span(event, number));
        deliverer.outcome(handled.await)
    }

    async fn retrying(
        &mut self,
        number: u32,
        errors: &[String],
        delay: Duration,
        first_failed_at: chrono::DateTime<Utc>,
    ) {
        let (deliverer, event) = (self.deliverer, self.event);
        if let Some((book, position)) = self.book {
            let state = RetryState {
                attempts: number,
                next_attempt_at: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                first_failed_at,
            };
            match book
                .store
                .save(&deliverer.state.name, position, state)
                .await
            {
                Ok(()) => self.stored = true,
                Err(err) => tracing::warn!(
                    subscription = %deliverer.state.name,
                    error = %error_chain(&err).join(": "),
                    "could not store the retry schedule; a restart would start it over",
                ),
            }
        }
        tracing::warn!(
            subscription = %deliverer.state.name,
            event = %event.name(),
            event_id = %event.meta().id,
            attempt = number,
            retry_in = ?delay,
            error = %errors.join(": "),
            "event handling failed; retrying",
        );
    }
}

impl<C> Deliverer<C> {
    /// Tells a backend that settles each delivery what became of the one
    /// at `position` (`None`: a replay, which no backend delivered).
    #[inline]
    pub(super) fn settle(&self, position: Option<Position>, settlement: Settlement) {
        if let (Some(settler), Some(position)) = (&self.settler, position) {
            if settlement == Settlement::Done {
                self.unflushed
                    .lock()
                    .expect("unflushed lock")
                    .push(position);
            } else {
                settler.settle(position, settlement);
            }
        }
    }

    /// The span of attempt `number` at `event`. Not even built below debug level: with
    /// tracing's `log` feature on (another crate may turn it on), building
    /// a disabled span still formats its fields for `log`, a cost on every
    /// event.
    fn span(&self, event: &AnyEvent, number: u32) -> tracing::Span {
        if !tracing::level_enabled!(tracing::Level::DEBUG) {
            return tracing::Span::none();
        }
        tracing::debug_span!(
            "eventbus.deliver",
            subscription = %self.state.name,
            event = %event.name(),
            event_id = %event.meta().id,
            correlation_id = %event.meta().correlation_id,
            attempt = number,
        )
    }

    /// Counts an attempt's outcome, and turns a failure into its error
    /// chain or panic message.
    #[inline]
    fn outcome(
        &self,
        outcome: std::thread::Result<Result<(), crate::BoxError>>,
    ) -> Result<(), Failure> {
        let failure = match outcome {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) => Failure::of(&*err),
            Err(panic) => Failure::panicked(&*panic),
        };
        self.state.counters.failed.fetch_add(1, Relaxed);
        self.metrics.failed.increment(1);
        Err(failure)
    }

    /// A partition key that panicked: it would fail every attempt alike, so
    /// it is one failed attempt, then a dead letter.
    pub(super) async fn key_failed(
        &self,
        position: Option<Position>,
        event: &AnyEvent,
        panic: String,
    ) {
        self.state.counters.failed.fetch_add(1, Relaxed);
        self.metrics.failed.increment(1);
        let errors = vec![format!("panicked: partition key: {panic}")];
        self.dead_letters
            .write(event.clone(), errors, 1, Utc::now())
            .await;
        self.settle(position, Settlement::DeadLettered);
    }

    async fn forget_retry(&self, book: Option<(&RetryBook, Position)>) {
        if let Some((book, position)) = book
            && let Err(err) = book.store.clear(&self.state.name, position).await
        {
            tracing::warn!(
                subscription = %self.state.name,
                error = %error_chain(&err).join(": "),
                "could not clear a finished retry schedule",
            );
        }
    }
}

impl<C: Consumer> Deliverer<C> {
    /// A panicking flush is logged, not allowed to end the subscription.
    /// Then tells a backend that settles each delivery that what was
    /// handled before the flush is done.
    pub(super) async fn flush(&self) {
        let handled = match &self.settler {
            Some(_) => std::mem::take(&mut *self.unflushed.lock().expect("unflushed lock")),
            None => Vec::new(),
        };
        let flushed = AssertUnwindSafe(self.consumer.flush()).catch_unwind().await;
        if let Err(panic) = flushed {
            tracing::error!(
                subscription = %self.state.name,
                panic = %panic_message(&*panic),
                "consumer panicked while flushing",
            );
        }
        if let Some(settler) = &self.settler {
            for position in handled {
                settler.settle(position, Settlement::Done);
            }
        }
    }

    /// Hands a dead letter's event to the consumer again; the letter goes
    /// once that finished, and stays if this is cut short.
    pub(super) async fn replay(&self, replay: Replay) {
        self.deliver(None, &replay.event, 1).await;
        // A batching consumer has only queued the payload: the letter goes
        // once its sink has it (or has dead-lettered it again).
        self.flush().await;
        replay.finish().await;
    }
}

/// Work a subscription runs outside its log's order, through its mode's
/// limits and lanes as a new event would: a dead letter's replay, or a
/// parked event whose retry is due.
pub(crate) enum Rerun {
    Letter(Replay),
    Parked(Parked),
}

impl Rerun {
    pub(super) fn event(&self) -> &AnyEvent {
        match self {
            Rerun::Letter(replay) => &replay.event,
            Rerun::Parked(parked) => &parked.event,
        }
    }

    pub(super) fn is_letter(&self) -> bool {
        matches!(self, Rerun::Letter(_))
    }
}

impl<C: Consumer> Deliverer<C> {
    /// Runs `rerun`.
    pub(super) async fn rerun(&self, rerun: Rerun) {
        match rerun {
            Rerun::Letter(replay) => self.replay(replay).await,
            Rerun::Parked(parked) => self.run_parked(parked).await,
        }
    }
}

impl<C: Consumer> Deliverer<C> {
    /// `rerun`'s event was dead-lettered without running (its partition
    /// key panicked): the old letter, or the parked event, goes.
    pub(super) async fn rerun_dead_lettered(&self, rerun: Rerun) {
        match rerun {
            Rerun::Letter(replay) => replay.finish().await,
            Rerun::Parked(parked) => {
                if let Some(store) = &self.parking {
                    let gone = store.unpark(parked.id, parked.claim).await;
                    self.parked_updated(parked.id, gone);
                }
            }
        }
    }
}

/// Counts one event (or replay) in flight from the moment a mode takes it
/// until it is finished, however it finishes: handled, dead-lettered,
/// panicked around, or dropped at a stop. The one place `in_flight`
/// changes.
pub(super) struct InFlight {
    state: Arc<State>,
    replay: bool,
}

impl InFlight {
    pub(super) fn event(state: &Arc<State>) -> Self {
        state.counters.in_flight.fetch_add(1, Relaxed);
        InFlight {
            state: Arc::clone(state),
            replay: false,
        }
    }

    /// A replay: counted in `replaying` since it was sent, and in flight
    /// from now on.
    pub(super) fn replay(state: &Arc<State>) -> Self {
        let mut in_flight = InFlight::event(state);
        in_flight.replay = true;
        in_flight
    }

    /// A rerun: a replay counted as one, a parked event as an event.
    pub(super) fn rerun(state: &Arc<State>, rerun: &Rerun) -> Self {
        if rerun.is_letter() {
            InFlight::replay(state)
        } else {
            InFlight::event(state)
        }
    }
}

/// [`InFlight`] for sequential mode, where the runner's own task runs one
/// event or replay at a time: the count is 1 or 0, so it is set rather
/// than counted, and the state is borrowed rather than shared. Both are
/// on the path of every event, where an atomic read-modify-write and a
/// reference count cost a measurable share of the rate.
pub(super) struct Alone<'a> {
    state: &'a State,
    replay: bool,
}

impl<'a> Alone<'a> {
    #[inline]
    pub(super) fn event(state: &'a State) -> Self {
        state.counters.in_flight.store(1, Relaxed);
        Alone {
            state,
            replay: false,
        }
    }

    pub(super) fn rerun(state: &'a State, rerun: &Rerun) -> Self {
        state.counters.in_flight.store(1, Relaxed);
        Alone {
            state,
            replay: rerun.is_letter(),
        }
    }
}

impl Drop for Alone<'_> {
    #[inline]
    fn drop(&mut self) {
        let state = self.state;
        if state.aborted.load(SeqCst) {
            return;
        }
        state.counters.in_flight.store(0, Relaxed);
        if self.replay {
            state.replays.fetch_sub(1, SeqCst);
            state.done.ping();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.state;
        // A stop at a deadline zeroes the counts itself, and the work it
        // aborts may be dropped after that.
        if state.aborted.load(SeqCst) {
            return;
        }
        state.counters.in_flight.fetch_sub(1, Relaxed);
        if self.replay {
            // Leaves in flight first, so whoever `drain` wakes sees both
            // counts settled.
            state.replays.fetch_sub(1, SeqCst);
            state.done.ping();
        }
    }
}

/// Runs one piece of a subscription's work (a delivery, a replay), in any
/// mode. The consumer's own panics are caught and retried inside the
/// delivery; a panic around it is a bug in a store or in the runtime, and
/// this is the one policy for it: the event stays unfinished, the
/// subscription stops without committing past it (a durable log delivers
/// it again after a restart), and its stall says why. `false` when it
/// panicked.
pub(super) async fn guarded<F: std::future::Future<Output = ()>>(state: &State, work: F) -> bool {
    let caught = AssertUnwindSafe(work).catch_unwind().await;
    survived(state, caught)
}

/// [`guarded`]'s verdict on a delivery whose panic was caught by the
/// caller: sequential mode catches in place, so the delivery's future is
/// not moved into another one for every event.
#[inline]
pub(super) fn survived(state: &State, caught: std::thread::Result<()>) -> bool {
    match caught {
        Ok(()) => true,
        Err(panic) => {
            stop_after_panic(state, &*panic);
            false
        }
    }
}

#[cold]
#[inline(never)]
fn stop_after_panic(state: &State, panic: &(dyn std::any::Any + Send)) {
    let reason = format!(
        "a delivery panicked outside its consumer ({}); the subscription stopped without committing past its event, which a durable log delivers again after a restart",
        panic_message(panic),
    );
    tracing::error!(subscription = %state.name, "{reason}");
    state.stall.set(reason, true);
    state.request_stop();
}
