//! The task behind each subscription: pull from the cursor up to the demand,
//! hand events to the consumer in the subscription's mode, release finished
//! positions back to the log, and retry or dead-letter failures.

use super::filter::CachedFilter;
use super::state::State;
use super::{Config, Mode};
use crate::backend::{Batch, Position, ReadError, Reader, RetryState, RetryStore, Watermark};
use crate::consumer::Consumer;
use crate::dead_letter::{DeadLetterWriter, Replay};
use crate::event::AnyEvent;
use crate::failure::{error_chain, panic_message};
use crate::retry::{Attempted, Attempts, Retry};
use chrono::Utc;
use futures_util::FutureExt;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::Instrument;

/// Hands one event to the consumer, with retries and dead-lettering. Shared
/// by the runner and, in concurrent and partitioned modes, by its tasks.
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
            let full = page.len() >= RETRY_PAGE;
            after = page.last().map(|(position, _)| *position);
            pending.extend(page);
            if !full {
                break;
            }
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

pub(crate) struct Deliverer<C> {
    pub(crate) retries: Option<RetryBook>,
    pub(crate) consumer: C,
    pub(crate) retry: Retry,
    pub(crate) state: Arc<State>,
    pub(crate) dead_letters: DeadLetterWriter,
    pub(crate) metrics: Metrics,
}

pub(crate) struct Metrics {
    delivered: metrics::Counter,
    failed: metrics::Counter,
    retried: metrics::Counter,
    in_flight: metrics::Gauge,
    lag: metrics::Gauge,
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
        let mut delivery = Delivery {
            deliverer: self,
            event,
            book,
            stored,
        };
        let attempted = self.retry.run(&mut delivery, first, first_failed_at).await;
        if let Attempted::GaveUp {
            attempts,
            errors,
            first_failed_at,
        } = attempted
        {
            Box::pin(
                self.dead_letters
                    .write(event.clone(), errors, attempts, first_failed_at),
            )
            .await;
        } else {
            self.state.counters.delivered.fetch_add(1, Relaxed);
            self.metrics.delivered.increment(1);
        }
        if delivery.stored {
            Box::pin(self.forget_retry(book)).await;
        }
    }
}

/// One event's attempts at its consumer.
struct Delivery<'a, C> {
    deliverer: &'a Deliverer<C>,
    event: &'a AnyEvent,
    /// Where its retry schedule is kept, for an event from a durable log.
    book: Option<(&'a RetryBook, Position)>,
    /// Whether a schedule of it is stored, to clear once it finishes.
    stored: bool,
}

impl<C: Consumer> Attempts for Delivery<'_, C> {
    async fn attempt(&mut self, number: u32, retry: bool) -> Result<(), Vec<String>> {
        let (deliverer, event) = (self.deliverer, self.event);
        let counters = &deliverer.state.counters;
        if retry {
            counters.retried.fetch_add(1, Relaxed);
            deliverer.metrics.retried.increment(1);
        }
        let span = tracing::debug_span!(
            "eventbus.deliver",
            subscription = %deliverer.state.name,
            event = %event.name(),
            event_id = %event.meta().id,
            correlation_id = %event.meta().correlation_id,
            attempt = number,
        );
        let handled = crate::retry::attempt(deliverer.consumer.handle(event));
        // With no subscriber listening at debug level the span is disabled;
        // entering and leaving it on every poll would still cost each
        // delivery a wrapper.
        let outcome = if span.is_disabled() {
            handled.await
        } else {
            handled.instrument(span).await
        };
        if outcome.is_err() {
            counters.failed.fetch_add(1, Relaxed);
            deliverer.metrics.failed.increment(1);
        }
        outcome
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
    /// A partition key that panicked: it would fail every attempt alike, so
    /// it is one failed attempt, then a dead letter.
    async fn key_failed(&self, event: &AnyEvent, panic: String) {
        self.state.counters.failed.fetch_add(1, Relaxed);
        self.metrics.failed.increment(1);
        let errors = vec![format!("panicked: partition key: {panic}")];
        self.dead_letters
            .write(event.clone(), errors, 1, Utc::now())
            .await;
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

pub(crate) struct Runner<C> {
    pub(crate) deliverer: Arc<Deliverer<C>>,
    pub(crate) reader: Box<dyn Reader>,
    /// Whether the backend keeps events across a restart: then the
    /// consumer is flushed before every commit.
    pub(crate) durable: bool,
    pub(crate) filter: CachedFilter,
    pub(crate) config: Config,
    pub(crate) replays: mpsc::UnboundedReceiver<Replay>,
    pub(crate) flushes: mpsc::Receiver<oneshot::Sender<()>>,
    /// Everything before this was read from the cursor.
    pub(crate) read: Position,
    /// Set when the backend said this process lost the subscription: the
    /// runner then stops, and commits nothing more.
    pub(crate) claim_lost: bool,
}

/// How the runner hands events over, by mode.
enum Lanes {
    Sequential,
    Concurrent {
        permits: Arc<Semaphore>,
        watermark: Arc<Watermark>,
        /// The tasks in flight: deliveries and fan-outs (see [`Pending`]).
        /// Dropping the set (when the runner is aborted at a shutdown
        /// deadline) aborts them, and an aborted fan-out aborts its
        /// deliveries; the subscription's `aborted` flag, set first, keeps
        /// any of them from resuming the consumer in between.
        tasks: JoinSet<()>,
        pending: Pending,
    },
    Partitioned {
        senders: Vec<mpsc::Sender<Work>>,
        tasks: JoinSet<()>,
        key: super::KeyFn,
        watermark: Arc<Watermark>,
    },
}

impl Lanes {
    /// Starts the concurrent deliveries that are waiting for a fan-out.
    fn launch<C: Consumer>(&mut self, deliverer: &Arc<Deliverer<C>>) {
        if let Lanes::Concurrent {
            tasks,
            pending,
            watermark,
            ..
        } = self
        {
            pending.launch(tasks, deliverer, watermark);
        }
    }

    fn watermark(&self) -> Option<&Arc<Watermark>> {
        match self {
            Lanes::Sequential => None,
            Lanes::Concurrent { watermark, .. } | Lanes::Partitioned { watermark, .. } => {
                Some(watermark)
            }
        }
    }
}

/// What a partition lane is handed: an event from the log, or a dead
/// letter's event replayed into the lane of its key.
enum Work {
    /// An event, its position and the attempt the backend counts.
    Event(Position, AnyEvent, u32),
    Replay(Replay),
}

/// How many concurrent deliveries one fan-out task spawns.
const FAN_OUT: usize = 32;

/// Fewer pending deliveries than this are spawned by the runner itself.
const FAN_OUT_FROM: usize = 4;

/// An event that holds a concurrency permit and waits to be spawned.
struct Started {
    position: Position,
    event: AnyEvent,
    attempt: u32,
    permit: OwnedSemaphorePermit,
}

/// Concurrent deliveries the runner has admitted but not spawned yet.
///
/// The runner spawns one task per event, and spawning costs more than
/// everything else it does per event. When many events are admitted at once
/// (a burst into a subscription with free permits) the runner hands them over
/// [`FAN_OUT`] at a time to a fan-out task that spawns them, so the spawning
/// runs on every worker thread instead of queueing behind the one runner.
/// Fewer than [`FAN_OUT_FROM`] are spawned directly, so a trickle pays no
/// extra hop. The runner launches what is pending before every wait, so an
/// admitted event never sits behind a permit or a release.
#[derive(Default)]
struct Pending(Vec<Started>);

impl Pending {
    fn push(&mut self, started: Started) {
        if self.0.capacity() == 0 {
            self.0.reserve_exact(FAN_OUT);
        }
        self.0.push(started);
    }

    fn is_full(&self) -> bool {
        self.0.len() >= FAN_OUT
    }

    fn launch<C: Consumer>(
        &mut self,
        tasks: &mut JoinSet<()>,
        deliverer: &Arc<Deliverer<C>>,
        watermark: &Arc<Watermark>,
    ) {
        match self.0.len() {
            // A fan-out would cost a spawn and a set of its own; a few
            // deliveries are cheaper to spawn here.
            0..FAN_OUT_FROM => {
                for started in self.0.drain(..) {
                    tasks.spawn(deliver_one(
                        Arc::clone(deliverer),
                        Arc::clone(watermark),
                        started,
                    ));
                }
            }
            _ => {
                let batch = std::mem::take(&mut self.0);
                let deliverer = Arc::clone(deliverer);
                let watermark = Arc::clone(watermark);
                tasks.spawn(async move {
                    // A set, not a list awaited in order: each finished
                    // delivery is reaped (and its task freed) at once, even
                    // while a slow one of the same group runs on. Dropping
                    // the set, when this task is aborted, aborts them.
                    let mut deliveries = JoinSet::new();
                    for started in batch {
                        deliveries.spawn(deliver_one(
                            Arc::clone(&deliverer),
                            Arc::clone(&watermark),
                            started,
                        ));
                    }
                    while let Some(joined) = deliveries.join_next().await {
                        report_joined(&deliverer.state.name, joined);
                    }
                });
            }
        }
    }
}

/// Logs a delivery that panicked. The consumer's own panics are caught and
/// retried inside the delivery, so this is a panic around it (writing a dead
/// letter or a retry schedule): the event stays unfinished, and holds back
/// the subscription's position rather than being lost.
fn report_panic(subscription: &str, panic: &(dyn std::any::Any + Send)) {
    tracing::error!(
        subscription,
        panic = %panic_message(panic),
        "a delivery panicked outside the consumer; its event stays unfinished",
    );
}

/// [`report_panic`] for a joined delivery task.
fn report_joined(subscription: &str, joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined
        && err.is_panic()
    {
        report_panic(subscription, &*err.into_panic());
    }
}

/// Runs `work` as a handler of the subscription, unless it is stopped at
/// a deadline: an abort reaches a task spawned by a fan-out one hop later
/// than the runner, and until then the flag keeps the consumer from being
/// resumed. `None` when it was stopped.
async fn unless_aborted<T>(state: &State, work: impl Future<Output = T>) -> Option<T> {
    let mut work = pin!(work);
    state
        .handling()
        .scope(poll_fn(|cx| {
            if state.aborted.load(Relaxed) {
                return Poll::Ready(None);
            }
            work.as_mut().poll(cx).map(Some)
        }))
        .await
}

/// One concurrent delivery, from admission to its finished position.
async fn deliver_one<C: Consumer>(
    deliverer: Arc<Deliverer<C>>,
    watermark: Arc<Watermark>,
    started: Started,
) {
    let Started {
        position,
        event,
        attempt,
        permit,
    } = started;
    let state = &deliverer.state;
    let delivered = unless_aborted(state, deliverer.deliver(Some(position), &event, attempt)).await;
    if delivered.is_some() {
        state.counters.in_flight.fetch_sub(1, Relaxed);
        watermark.finish(position);
    }
    drop(permit);
}

impl<C: Consumer> Runner<C> {
    pub(crate) async fn run(mut self) {
        let mut lanes = self.lanes();
        let state = Arc::clone(&self.deliverer.state);
        let never = Arc::new(Watermark::default());
        let mut read_failures = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            if state.stop.load(SeqCst) || self.claim_lost {
                break;
            }
            let progressed = lanes.watermark().unwrap_or(&never).clone();
            let max = self.config.max_demand;
            // Paused, the runner reads nothing and runs no replay, but it
            // still flushes and releases what finishes.
            let running = !state.is_paused();
            tokio::select! {
                biased;
                () = state.wake.notified() => {}
                Some(ack) = self.flushes.recv() => {
                    Self::flush_consumer(&self.deliverer).await;
                    let _ = ack.send(());
                }
                Some(replay) = self.replays.recv(), if running => {
                    self.replay_in(&mut lanes, replay).await;
                }
                () = progressed.progressed(), if lanes.watermark().is_some() => {
                    let done = progressed.done(self.read);
                    self.release(done).await;
                }
                batch = self.reader.next(max), if running => match batch {
                    Ok(Some(batch)) => {
                        if read_failures.reset() {
                            state.stall.clear();
                        }
                        self.process(&batch, &mut lanes).await;
                    }
                    Ok(None) => break,
                    Err(ReadError::ClaimLost(reason)) => {
                        self.lose_claim(&reason);
                        break;
                    }
                    Err(err) => {
                        let wait = read_failures.next();
                        let reason = format!(
                            "cannot read the backend, so the subscription tries again in {wait:?}: {}",
                            error_chain(&err).join(": "),
                        );
                        tracing::error!(subscription = %state.name, "{reason}");
                        state.stall.set(reason, err.is_fatal());
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                },
            }
        }
        self.finish(lanes).await;
    }

    fn lanes(&self) -> Lanes {
        match &self.config.mode {
            Mode::Sequential => Lanes::Sequential,
            Mode::Concurrent(limit) => Lanes::Concurrent {
                permits: Arc::new(Semaphore::new(*limit)),
                watermark: Arc::default(),
                tasks: JoinSet::new(),
                pending: Pending::default(),
            },
            Mode::Partitioned { lanes, key } => {
                let watermark: Arc<Watermark> = Arc::default();
                let depth = (self.config.max_demand / lanes).max(1);
                let mut tasks = JoinSet::new();
                let senders = (0..*lanes)
                    .map(|_| {
                        let (tx, mut rx) = mpsc::channel::<Work>(depth);
                        let deliverer = Arc::clone(&self.deliverer);
                        let watermark = Arc::clone(&watermark);
                        let handling = deliverer.state.handling();
                        tasks.spawn(handling.scope(async move {
                            while let Some(work) = rx.recv().await {
                                match work {
                                    Work::Event(pos, event, attempt) => {
                                        let delivered = AssertUnwindSafe(deliverer.deliver(
                                            Some(pos),
                                            &event,
                                            attempt,
                                        ))
                                        .catch_unwind()
                                        .await;
                                        deliverer.state.counters.in_flight.fetch_sub(1, Relaxed);
                                        match delivered {
                                            Ok(()) => watermark.finish(pos),
                                            // The lane goes on; the event stays
                                            // unfinished, like a concurrent one.
                                            Err(panic) => {
                                                report_panic(&deliverer.state.name, &*panic);
                                            }
                                        }
                                    }
                                    Work::Replay(replay) => {
                                        let replayed =
                                            AssertUnwindSafe(Self::replay(&deliverer, replay))
                                                .catch_unwind()
                                                .await;
                                        // The letter stays; the lane goes on.
                                        if let Err(panic) = replayed {
                                            report_panic(&deliverer.state.name, &*panic);
                                        }
                                    }
                                }
                            }
                        }));
                        tx
                    })
                    .collect();
                Lanes::Partitioned {
                    senders,
                    tasks,
                    key: Arc::clone(key),
                    watermark,
                }
            }
        }
    }

    async fn process(&mut self, batch: &Batch, lanes: &mut Lanes) {
        if let Lanes::Concurrent { tasks, .. } = lanes {
            // Reap finished tasks once a read, so the set holds about what
            // is in flight.
            while let Some(joined) = tasks.try_join_next() {
                report_joined(&self.deliverer.state.name, joined);
            }
        }
        let deliverer = Arc::clone(&self.deliverer);
        let counters = &deliverer.state.counters;
        let mut filtered = 0;
        let mut since_release = 0;
        let mut stopped = false;
        for i in 0..batch.len() {
            let (pos, event) = batch.get(i);
            if deliverer.state.is_paused() {
                // Paused mid-read: what already started goes on, the rest
                // of the read waits here. Stopped instead of resumed, it is
                // left unreleased, for a durable log to deliver again.
                lanes.launch(&self.deliverer);
                if !deliverer.state.resumed().await {
                    stopped = true;
                    break;
                }
            }
            if !self.filter.matches(event) {
                filtered += 1;
            } else {
                match lanes {
                    Lanes::Sequential => {
                        counters.in_flight.store(1, Relaxed);
                        self.deliverer
                            .deliver(Some(pos), event, batch.attempt(i))
                            .await;
                        counters.in_flight.store(0, Relaxed);
                    }
                    Lanes::Concurrent {
                        permits,
                        watermark,
                        tasks,
                        pending,
                    } => {
                        let permit = match Arc::clone(permits).try_acquire_owned() {
                            Ok(permit) => permit,
                            Err(_) => {
                                // Whatever already holds a permit starts
                                // before the runner waits for the next one.
                                pending.launch(tasks, &self.deliverer, watermark);
                                Arc::clone(permits)
                                    .acquire_owned()
                                    .await
                                    .expect("the runner never closes its semaphore")
                            }
                        };
                        watermark.start(pos);
                        counters.in_flight.fetch_add(1, Relaxed);
                        pending.push(Started {
                            position: pos,
                            event: event.clone(),
                            attempt: batch.attempt(i),
                            permit,
                        });
                        if pending.is_full() {
                            pending.launch(tasks, &self.deliverer, watermark);
                        }
                    }
                    Lanes::Partitioned {
                        senders,
                        key,
                        watermark,
                        ..
                    } => {
                        let key = std::panic::catch_unwind(AssertUnwindSafe(|| key(event)));
                        let key = match key {
                            Ok(key) => key,
                            Err(panic) => {
                                deliverer.key_failed(event, panic_message(&*panic)).await;
                                continue;
                            }
                        };
                        let lane = (key % senders.len() as u64) as usize;
                        watermark.start(pos);
                        counters.in_flight.fetch_add(1, Relaxed);
                        if senders[lane]
                            .send(Work::Event(pos, event.clone(), batch.attempt(i)))
                            .await
                            .is_err()
                        {
                            // Lanes end only when the runner drops them, so
                            // this is a lane task that died; say so loudly
                            // rather than stall the subscription.
                            tracing::error!(
                                subscription = %self.deliverer.state.name,
                                lane,
                                "partition lane stopped; event not delivered",
                            );
                            counters.in_flight.fetch_sub(1, Relaxed);
                            watermark.finish(pos);
                        }
                    }
                }
            }
            since_release += 1;
            if since_release >= self.config.release_every {
                since_release = 0;
                lanes.launch(&self.deliverer);
                self.read = pos + 1;
                let done = lanes.watermark().map_or(pos + 1, |w| w.done(pos + 1));
                self.release(done).await;
            }
        }
        lanes.launch(&self.deliverer);
        if filtered > 0 {
            counters.filtered.fetch_add(filtered, Relaxed);
        }
        if !stopped && let Some(end) = batch.end() {
            self.read = end;
            let done = lanes.watermark().map_or(end, |w| w.done(end));
            self.release(done).await;
        }
    }

    async fn release(&mut self, done: Position) {
        let state = &self.deliverer.state;
        if done <= *state.done.borrow() {
            return;
        }
        if self.durable {
            // What the consumer buffered must be written before the log
            // forgets it: at-least-once, not at-most-once, across a crash.
            Self::flush_consumer(&self.deliverer).await;
        }
        let state = &self.deliverer.state;
        // A position that cannot be committed is tried again until it is:
        // nothing past it is reported finished in the meantime. Only a
        // stopping subscription on a damaged log gives up, leaving the
        // events to be delivered again after a restart.
        let mut failures = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while let Err(err) = self.reader.commit(done).await {
            if let ReadError::ClaimLost(reason) = &err {
                self.lose_claim(reason);
                return;
            }
            let wait = failures.next();
            let fatal = err.is_fatal();
            let reason = format!(
                "cannot commit the subscription's position {done} to the log, so it tries again in {wait:?}: {}",
                error_chain(&err).join(": "),
            );
            tracing::error!(subscription = %state.name, "{reason}");
            state.stall.set(reason, fatal);
            if fatal && state.stop.load(SeqCst) {
                return;
            }
            tokio::time::sleep(wait).await;
        }
        if failures.reset() {
            state.stall.clear();
        }
        state.set_done(done);
        let metrics = &self.deliverer.metrics;
        metrics
            .in_flight
            .set(state.counters.in_flight.load(Relaxed) as f64);
        if let Some(lag) = self.reader.lag() {
            state.backlog.store(lag, Relaxed);
            metrics.lag.set(lag as f64);
        }
    }

    /// The backend says another process holds the subscription now: stop,
    /// commit nothing more, and say so.
    fn lose_claim(&mut self, reason: &str) {
        let state = &self.deliverer.state;
        let reason = format!(
            "this process lost its claim on the subscription ({reason}); it stopped without committing, and the process that holds it now delivers what this one had not finished"
        );
        tracing::error!(subscription = %state.name, "{reason}");
        state.stall.set(reason, true);
        self.claim_lost = true;
    }

    /// Finishes in-flight work and buffered batches before the task ends.
    async fn finish(mut self, lanes: Lanes) {
        let state = Arc::clone(&self.deliverer.state);
        let watermark = lanes.watermark().cloned();
        match lanes {
            Lanes::Sequential => {}
            Lanes::Concurrent {
                mut tasks, pending, ..
            } => {
                debug_assert!(pending.0.is_empty(), "launched before every wait");
                while let Some(joined) = tasks.join_next().await {
                    report_joined(&state.name, joined);
                }
            }
            Lanes::Partitioned {
                senders, mut tasks, ..
            } => {
                drop(senders);
                while tasks.join_next().await.is_some() {}
            }
        }
        // Refuse new replays (the letter stays) and finish the queued ones;
        // a paused subscription runs none, and its queued letters stay.
        self.replays.close();
        while let Some(replay) = self.replays.recv().await {
            if state.is_paused() {
                // Not run: its claim goes with it, the letter stays stored.
                drop(replay);
                state.replays.fetch_sub(1, SeqCst);
                state.done.send_modify(|_| {});
                continue;
            }
            let counters = &self.deliverer.state.counters;
            counters.in_flight.fetch_add(1, Relaxed);
            Self::replay(&self.deliverer, replay).await;
        }
        Self::flush_consumer(&self.deliverer).await;
        // Every task has ended, but one that panicked around its consumer
        // left its event unfinished: the watermark stops before it, so a
        // durable log delivers it again rather than skipping it.
        // A process that lost its claim commits nothing: the one that holds
        // the subscription now delivers what this one had not committed.
        if !self.claim_lost {
            let read = self.read;
            let done = watermark.map_or(read, |w| w.done(read));
            self.release(done).await;
        }
        self.deliverer.metrics.lag.set(0.0);
        state.mark_finished();
    }

    /// Hands a dead letter's event to the consumer again; the letter goes
    /// once that finished, and stays if this is cut short.
    async fn replay(deliverer: &Deliverer<C>, replay: Replay) {
        let _counted = ReplayDone(&deliverer.state);
        deliverer.deliver(None, &replay.event, 1).await;
        // A batching consumer has only queued the payload: the letter goes
        // once its sink has it (or has dead-lettered it again).
        Self::flush_consumer(deliverer).await;
        replay.finish().await;
    }

    /// Hands a replay to the subscription's mode, as a new event would be:
    /// in sequential mode here, in concurrent mode as a task holding one of
    /// the permits, in partitioned mode to the lane of its key, behind the
    /// events of that key already there.
    async fn replay_in(&mut self, lanes: &mut Lanes, replay: Replay) {
        let deliverer = Arc::clone(&self.deliverer);
        let counters = &deliverer.state.counters;
        match lanes {
            Lanes::Sequential => {
                counters.in_flight.fetch_add(1, Relaxed);
                Self::replay(&deliverer, replay).await;
            }
            Lanes::Concurrent {
                permits,
                tasks,
                pending,
                watermark,
            } => {
                // Whatever already holds a permit starts first.
                pending.launch(tasks, &deliverer, watermark);
                let permit = Arc::clone(permits)
                    .acquire_owned()
                    .await
                    .expect("the runner never closes its semaphore");
                counters.in_flight.fetch_add(1, Relaxed);
                tasks.spawn(async move {
                    unless_aborted(&deliverer.state, Self::replay(&deliverer, replay)).await;
                    drop(permit);
                });
            }
            Lanes::Partitioned { senders, key, .. } => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| key(&replay.event))) {
                    Ok(key) => {
                        let lane = (key % senders.len() as u64) as usize;
                        counters.in_flight.fetch_add(1, Relaxed);
                        if let Err(refused) = senders[lane].send(Work::Replay(replay)).await {
                            // A lane that died; run it here rather than lose
                            // the replay's place in the count.
                            if let Work::Replay(replay) = refused.0 {
                                Self::replay(&deliverer, replay).await;
                            }
                        }
                    }
                    Err(panic) => {
                        // As for a new event: one failed attempt, then a new
                        // letter; the old one goes with the finished replay.
                        counters.in_flight.fetch_add(1, Relaxed);
                        let _counted = ReplayDone(&deliverer.state);
                        deliverer
                            .key_failed(&replay.event, panic_message(&*panic))
                            .await;
                        replay.finish().await;
                    }
                }
            }
        }
    }

    /// A panicking flush is logged, not allowed to end the subscription.
    async fn flush_consumer(deliverer: &Deliverer<C>) {
        let flushed = AssertUnwindSafe(deliverer.consumer.flush())
            .catch_unwind()
            .await;
        if let Err(panic) = flushed {
            tracing::error!(
                subscription = %deliverer.state.name,
                panic = %panic_message(&*panic),
                "consumer panicked while flushing",
            );
        }
    }
}

/// Waits that double from `first` up to `max` while failures repeat.
struct Backoff {
    first: Duration,
    max: Duration,
    next: Option<Duration>,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: None,
        }
    }

    /// The wait after one more failure.
    fn next(&mut self) -> Duration {
        let wait = self.next.unwrap_or(self.first);
        self.next = Some((wait * 2).min(self.max));
        wait
    }

    /// Forgets the failures; returns whether there were any.
    fn reset(&mut self) -> bool {
        self.next.take().is_some()
    }
}

/// Counts a replay as finished when it goes, however it goes (a panic in a
/// lane included), so `drain` never waits on a replay that will not end.
/// The replay counted in flight when it was handed to the mode; it leaves
/// in-flight first, so whoever `drain` wakes sees both counts settled.
struct ReplayDone<'a>(&'a State);

impl Drop for ReplayDone<'_> {
    fn drop(&mut self) {
        // A stop at a deadline zeroes the counts itself, and the tasks it
        // aborts may be dropped after that.
        if self.0.aborted.load(SeqCst) {
            return;
        }
        self.0.counters.in_flight.fetch_sub(1, Relaxed);
        self.0.replays.fetch_sub(1, SeqCst);
        self.0.done.send_modify(|_| {});
    }
}
