//! The task behind each subscription: pull from the reader up to the
//! demand, hand events to the subscription's mode, commit finished
//! positions back to the backend, and finish what it took when it stops.

use super::Config;
use super::deliver::{Deliverer, InFlight, Rerun, guarded, survived};
use super::filter::CachedFilter;
use super::mode::Dispatch;
use super::state::State;
use crate::backend::{Batch, Parked, Position, ReadError, Reader, Settlement, Watermark};
use crate::consumer::Consumer;
use crate::failure::error_chain;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub(crate) struct Runner<C> {
    pub(crate) deliverer: Arc<Deliverer<C>>,
    pub(crate) reader: Box<dyn Reader>,
    /// Whether the backend keeps events across a restart: then the
    /// consumer is flushed before every commit.
    pub(crate) durable: bool,
    /// The bus's writer, for how many events this process accepted.
    pub(crate) writer: crate::backend::writer::Writer,
    pub(crate) filter: CachedFilter,
    pub(crate) config: Config,
    /// Ids of letters marked for replay.
    pub(crate) replays: mpsc::UnboundedReceiver<u64>,
    pub(crate) flushes: mpsc::Receiver<oneshot::Sender<()>>,
    /// Everything before this was read from the cursor.
    pub(crate) read: Position,
    /// Set when the backend said this process lost the subscription: the
    /// runner then stops, and commits nothing more.
    pub(crate) claim_lost: bool,
    /// Whether the stats show the backend holding events back.
    pub(crate) held_back: bool,
}

impl<C: Consumer> Runner<C> {
    pub(crate) async fn run(mut self) {
        let mut mode = Dispatch::new(&self.config.mode, self.config.max_demand, &self.deliverer);
        let state = Arc::clone(&self.deliverer.state);
        let never = Arc::new(Watermark::default());
        let mut read_failures = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        // On a store that processes share, letters are marked for replay
        // in other processes too: the holder looks for them now and then.
        let mut marks = self.deliverer.dead_letters.letters().is_shared().then(|| {
            let mut every = tokio::time::interval(LOOK_FOR_MARKS);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every
        });
        // Where failed events are parked: looked at once at the start, then
        // when a retry parked here is due, and now and then for the rest.
        // Its timer is boxed: the loop's future stays small without it.
        let parking = self.deliverer.parking.is_some();
        let mut look_at = parking.then(tokio::time::Instant::now);
        let mut parked_timer =
            parking.then(|| Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())));
        loop {
            if state.stop.load(SeqCst) || self.claim_lost {
                break;
            }
            if parking && let Some(due) = state.parked_due.lock().expect("parked_due lock").take() {
                look_at = Some(look_at.map_or(due, |at| at.min(due)));
            }
            if let (Some(timer), Some(at)) = (parked_timer.as_mut(), look_at)
                && timer.deadline() != at
            {
                timer.as_mut().reset(at);
            }
            let progressed = mode.watermark().unwrap_or(&never).clone();
            let max = self.config.max_demand;
            // Paused, the runner reads nothing and runs no replay, but it
            // still flushes and releases what finishes.
            let running = !state.is_paused();
            tokio::select! {
                biased;
                // One wake-up for every request, the channels looked at
                // only when it fires: each channel polled here would cost
                // every event a waker registration of its own.
                () = state.wake.taken() => {
                    // Boxed, like every rare path here: the loop's own
                    // future stays small, which the rate of every event
                    // depends on.
                    Box::pin(self.requests(&mut mode)).await;
                }
                _ = async { marks.as_mut().expect("checked").tick().await }, if running && marks.is_some() => {
                    Box::pin(self.look_for_marks()).await;
                }
                () = async { parked_timer.as_mut().expect("checked").as_mut().await }, if running && parked_timer.is_some() => {
                    look_at = Some(Box::pin(self.look_at_parked(&mut mode)).await);
                }
                () = state.look_at_parked.notified(), if parking => {
                    // Counted again at once after a change made here, paused
                    // or not, so `drain` sees it.
                    if state.parked_stale() {
                        Box::pin(self.count_parked()).await;
                    }
                }
                () = progressed.progressed(), if mode.watermark().is_some() => {
                    let done = progressed.done(self.read);
                    self.release(done).await;
                }
                batch = self.reader.next(max), if running => match batch {
                    Ok(Some(batch)) => {
                        if read_failures.reset() {
                            state.stall.clear();
                        }
                        self.process(&batch, &mut mode).await;
                        self.report_held_back();
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
        self.finish(mode).await;
    }

    async fn process(&mut self, batch: &Batch, mode: &mut Dispatch<C>) {
        mode.reap();
        let state = Arc::clone(&self.deliverer.state);
        let mut filtered = 0;
        let mut since_release = 0;
        let mut stopped = false;
        for i in 0..batch.len() {
            let (pos, event) = batch.get(i);
            if state.is_paused() {
                // Paused mid-read: what already started goes on, the rest
                // of the read waits here. Stopped instead of resumed, the
                // rest is left uncommitted, for a durable log to deliver
                // again; what was handled before is committed.
                mode.launch();
                if !state.resumed().await {
                    self.read = pos;
                    stopped = true;
                    break;
                }
            }
            let taken = if !self.filter.matches(event) {
                filtered += 1;
                self.deliverer.settle(Some(pos), Settlement::Done);
                true
            } else if let Some(sequential) = mode.sequential() {
                // Awaited in this future, not in one of the mode's: see
                // `Sequential::take`.
                let (deliverer, _in_flight) = sequential.take();
                let delivery = deliverer.deliver(Some(pos), event, batch.attempt(i));
                let caught = AssertUnwindSafe(delivery).catch_unwind().await;
                survived(&deliverer.state, caught)
            } else {
                mode.event(pos, event, batch.attempt(i)).await
            };
            if !taken {
                // A panic around a delivery: nothing from its event on is
                // committed.
                self.read = pos;
                stopped = true;
                break;
            }
            since_release += 1;
            if since_release >= self.config.release_every {
                since_release = 0;
                mode.launch();
                self.read = pos + 1;
                let done = mode.watermark().map_or(pos + 1, |w| w.done(pos + 1));
                self.release(done).await;
                if self.claim_lost {
                    // Another process holds the subscription now: it
                    // delivers the rest of this read.
                    stopped = true;
                    break;
                }
            }
        }
        mode.launch();
        if filtered > 0 {
            state.counters.filtered.fetch_add(filtered, Relaxed);
        }
        if !stopped && let Some(end) = batch.end() {
            self.read = end;
            let done = mode.watermark().map_or(end, |w| w.done(end));
            self.release(done).await;
        }
    }

    async fn release(&mut self, done: Position) {
        // Positions of a reader that says its head may start over lower
        // (a partition taken over), and a read after it may end where an
        // earlier one did: such a reader is always asked, and commits what
        // it holds below `done`, if anything.
        if !self.sparse() && done <= self.deliverer.state.done.get() {
            return;
        }
        self.commit(done).await;
    }

    /// Commits `done` (again, if need be), and takes the lag the reader
    /// counts with it.
    async fn commit(&mut self, done: Position) {
        // A backend that settles each delivery hears of the handled ones
        // at the flush, durable or not.
        if self.durable || self.deliverer.settler.is_some() {
            // What the consumer buffered must be written before the log
            // forgets it: at-least-once, not at-most-once, across a crash.
            self.deliverer.flush().await;
        }
        let state = &self.deliverer.state;
        // A position that cannot be committed is tried again until it is:
        // nothing past it is reported finished in the meantime. Only a
        // stopping subscription on a damaged log gives up, leaving the
        // events to be delivered again after a restart.
        let mut failures = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // Read before the commit, which counts the reader's lag: every
        // event accepted by then was stored before the count, so is in it,
        // and every one accepted after is added to it in the stats.
        let accepted = self.writer.accepted();
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
            let head = self.reader.head().unwrap_or(done.saturating_add(lag));
            state.known_head.fetch_max(head, Relaxed);
            state.accepted_at_lag.store(accepted, Relaxed);
            state.reader_lag.store(lag, Relaxed);
            metrics.lag.set(lag as f64);
        }
    }

    /// Counts the lag again, for a reader that counts events itself (a
    /// shared log whose positions do not add up to a count), when `drain`
    /// asks for a flush. The count at the last commit may have taken an
    /// event whose `notify` had not returned yet, and then counted it again
    /// once it had: every `notify` of this process that `drain` waits for
    /// has returned by now, so this count is exact.
    async fn recount(&mut self) {
        if self.sparse()
            && self.reader.lag().is_some()
            && self.deliverer.settler.is_none()
            && !self.claim_lost
        {
            // No position is below 0: nothing is committed, and the reader
            // counts its lag as after every commit.
            self.commit(0).await;
        }
    }

    /// Whether the reader says its head itself: positions then number
    /// transactions, not events, and may start over lower after a
    /// partition is taken over, so the finished position alone is what
    /// may be committed.
    fn sparse(&self) -> bool {
        self.reader.head().is_some()
    }

    /// Shows in the stats why the backend holds events back, or that it no
    /// longer does.
    #[inline]
    fn report_held_back(&mut self) {
        let held_back = self.reader.held_back();
        if held_back.is_none() && !self.held_back {
            return;
        }
        let state = &self.deliverer.state;
        match held_back {
            Some(reason) => {
                if !self.held_back {
                    tracing::warn!(subscription = %state.name, "{reason}");
                }
                state.stall.set(reason, false);
                self.held_back = true;
            }
            None if self.held_back => {
                state.stall.clear();
                self.held_back = false;
            }
            None => {}
        }
    }

    /// Runs the flushes and, unless paused or stopping, the replays asked
    /// for. Paused, the ids stay queued, and the resume raises the wake-up
    /// again; stopping, `finish` runs them.
    async fn requests(&mut self, mode: &mut Dispatch<C>) {
        while let Ok(ack) = self.flushes.try_recv() {
            self.deliverer.flush().await;
            self.recount().await;
            let _ = ack.send(());
        }
        let state = Arc::clone(&self.deliverer.state);
        while !state.is_paused()
            && !state.stop.load(SeqCst)
            && let Ok(id) = self.replays.try_recv()
        {
            if self.reader.holds_claim() {
                self.replay(mode, id).await;
            } else {
                self.leave_replay(id);
            }
        }
    }

    /// Leaves letter `id` to the process that holds the subscription: it
    /// finds the mark when it next looks at the store.
    fn leave_replay(&self, id: u64) {
        let letters = self.deliverer.dead_letters.letters();
        letters.untell(&self.deliverer.state.name, id);
        drop(InFlight::replay(&self.deliverer.state));
    }

    /// Looks for letters marked for replay in other processes, while this
    /// one holds the subscription.
    async fn look_for_marks(&mut self) {
        if !self.reader.holds_claim() {
            return;
        }
        let state = &self.deliverer.state;
        let letters = self.deliverer.dead_letters.letters();
        if let Err(err) = letters.look_for_marks(&state.name).await {
            tracing::warn!(
                subscription = %state.name,
                error = %error_chain(&err).join(": "),
                "cannot look for dead letters marked for replay; trying again later",
            );
        }
    }

    /// Claims the parked events that are due, a page at most, and hands
    /// them to the mode, while the subscription runs and this process
    /// holds it; counts what is parked, in any case. Returns when to look
    /// again.
    async fn look_at_parked(&mut self, mode: &mut Dispatch<C>) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let Some(store) = self.deliverer.parking.clone() else {
            return now + PARKED_IDLE;
        };
        let state = Arc::clone(&self.deliverer.state);
        let mut next = now + PARKED_IDLE;
        if self.reader.holds_claim() {
            let limit = self.config.max_demand.min(PARKED_PAGE);
            match store.due(&state.name, limit, PARKED_LEASE).await {
                Ok(due) => {
                    let claimed = due.parked.len();
                    let mut parked = due.parked.into_iter();
                    for one in parked.by_ref() {
                        if state.is_paused() || state.stop.load(SeqCst) {
                            // Given back, for when it runs again.
                            Self::give_back(&*store, &state, one).await;
                            break;
                        }
                        if !mode.rerun(Rerun::Parked(one)).await {
                            break;
                        }
                    }
                    for one in parked {
                        Self::give_back(&*store, &state, one).await;
                    }
                    next = if claimed == limit {
                        // More may be due: once the mode has taken these.
                        tokio::time::Instant::now()
                    } else {
                        match due.next_at {
                            Some(at) => {
                                let wait =
                                    (at - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO);
                                now + wait.min(PARKED_BUSY)
                            }
                            None => now + PARKED_IDLE,
                        }
                    };
                }
                Err(err) => {
                    tracing::warn!(
                        subscription = %state.name,
                        error = %error_chain(&err).join(": "),
                        "cannot look for parked events whose retry is due; trying again later",
                    );
                    next = now + PARKED_BUSY;
                }
            }
        }
        self.count_parked().await;
        if state.parked.load(SeqCst) > 0 {
            // Others' parks too: a process that holds none of the
            // subscription still counts what `drain` waits for.
            next = next.min(now + PARKED_BUSY);
        }
        next
    }

    /// Gives back the claim of a parked event not handed to the mode.
    async fn give_back(store: &dyn crate::backend::RetryStore, state: &State, parked: Parked) {
        if let Err(err) = store.release(parked.id, parked.claim).await {
            tracing::warn!(
                subscription = %state.name,
                id = parked.id,
                error = %error_chain(&err).join(": "),
                "could not give a parked event's claim back; it runs once the claim runs out",
            );
        }
    }

    /// Counts the parked events again: the changes this process made up
    /// to now are in the count.
    async fn count_parked(&mut self) {
        let Some(store) = &self.deliverer.parking else {
            return;
        };
        let state = &self.deliverer.state;
        let changes = state.parked_changes.load(SeqCst);
        match store.parked(&state.name).await {
            Ok(count) => {
                state.parked.store(count, SeqCst);
                state.parked_counted.store(changes, SeqCst);
                state.done.ping();
            }
            Err(err) => tracing::warn!(
                subscription = %state.name,
                error = %error_chain(&err).join(": "),
                "cannot count parked events",
            ),
        }
    }

    /// Takes letter `id` and hands it to the mode.
    async fn replay(&mut self, mode: &mut Dispatch<C>, id: u64) {
        let letters = self.deliverer.dead_letters.letters();
        match letters.take(&self.deliverer.state.name, id).await {
            Some(replay) => {
                mode.rerun(Rerun::Letter(replay)).await;
            }
            // Gone or unreadable: not run, no longer counted.
            None => drop(InFlight::replay(&self.deliverer.state)),
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
    async fn finish(mut self, mode: Dispatch<C>) {
        let state = Arc::clone(&self.deliverer.state);
        let watermark = mode.watermark().cloned();
        mode.finish().await;
        // Refuse new replays (the letter stays) and finish the queued ones;
        // a paused subscription runs none, and its queued letters stay.
        self.replays.close();
        while let Some(id) = self.replays.recv().await {
            let in_flight = InFlight::replay(&state);
            // Paused, it is not run: the letter stays marked, for the
            // subscription's next start.
            if !state.is_paused()
                && self.reader.holds_claim()
                && let Some(replay) = self
                    .deliverer
                    .dead_letters
                    .letters()
                    .take(&state.name, id)
                    .await
            {
                guarded(&state, self.deliverer.replay(replay)).await;
            }
            drop(in_flight);
        }
        self.deliverer.flush().await;
        // Every task has ended, but one that panicked around its consumer
        // left its event unfinished: the watermark stops before it, so a
        // durable log delivers it again rather than skipping it.
        // A process that lost its claim commits nothing: the one that holds
        // the subscription now delivers what this one had not committed.
        if !self.claim_lost {
            let read = self.read;
            let done = watermark.map_or(read, |w| w.done(read));
            // A reader whose positions may start over lower (a partition
            // taken over) commits what finished here and nothing past it:
            // read rows between `done` and an earlier run's place were not
            // handled.
            let up_to = if self.sparse() {
                done
            } else {
                done.max(self.deliverer.state.done.get())
            };
            // Committed even where nothing moved, for the lag the final
            // stats report: counted now, every write of this process has
            // returned, where the count at the last commit may have taken
            // an event that was stored but whose write had not returned
            // yet for one not yet counted.
            self.commit(up_to).await;
        }
        if !self.claim_lost
            && let Err(err) = self.reader.stop().await
        {
            tracing::warn!(
                subscription = %state.name,
                error = %error_chain(&err).join(": "),
                "could not give the subscription up; another process takes it once its claim runs out",
            );
        }
        self.deliverer.metrics.lag.set(0.0);
        state.mark_finished();
    }
}

/// How often the holder of a subscription on a shared store looks for
/// letters marked for replay in other processes.
const LOOK_FOR_MARKS: Duration = Duration::from_secs(1);

/// How often a subscription looks at its parked events while some are
/// parked (by any process), and while none are: retries this process
/// parks are looked for when due, whatever these say.
const PARKED_BUSY: Duration = Duration::from_secs(1);
const PARKED_IDLE: Duration = Duration::from_secs(5);

/// How long a claimed parked event is left to the process that claimed
/// it, before another may run it; and how many are claimed at a time, so
/// a page is handed out well within that.
const PARKED_LEASE: Duration = Duration::from_secs(300);
const PARKED_PAGE: usize = 64;

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
