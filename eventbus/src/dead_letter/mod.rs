//! Dead letters: events a subscription gave up on after its last attempt.
//!
//! Nothing is dropped silently. An event whose handling kept failing (an
//! error or a panic on every attempt), and every event of a batch its sink
//! kept rejecting, lands here with the error chain, the attempt count and
//! timestamps. Dead letters can be listed, inspected, and replayed into their
//! subscription once the cause is fixed.
//!
//! Letters live in a [`DeadLetterStore`]: in memory by default, in the log's
//! own storage for a durable log, so they survive a restart. A letter leaves
//! the store only when its replay has finished (handled, or dead-lettered
//! again under a new id) or when it is discarded; a replay cut short by a
//! crash or a shutdown deadline leaves it where it was.

use crate::backend::StoreError;
use crate::event::AnyEvent;
use crate::failure::error_chain;
use crate::stall::Stall;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

mod error;
mod memory;
pub(crate) mod store;

pub use self::error::{DiscardError, ReplayError};
pub(crate) use self::memory::MemoryDeadLetters;
pub use self::store::{DeadLetterStore, Discarded, ReplayRequest};

/// One event a subscription gave up on.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Unique within the bus, in the order letters were written.
    pub id: u64,
    /// The subscription that gave up.
    pub subscription: String,
    /// The event, as it was notified.
    pub event: AnyEvent,
    /// The last error and its sources, outermost first. A panic is one entry
    /// starting with `panicked: `.
    pub errors: Vec<String>,
    /// How many attempts were made.
    pub attempts: u32,
    /// When the first attempt failed.
    pub first_failed_at: DateTime<Utc>,
    /// When the last attempt failed.
    pub last_failed_at: DateTime<Utc>,
    /// Whether a replay of it was asked for and has not finished: it stays
    /// stored (and listed) until then, across a crash or a restart too.
    pub replaying: bool,
}

impl fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dead letter {} in `{}`: {} {} after {} attempt(s): {}",
            self.id,
            self.subscription,
            self.event.name(),
            self.event.meta().id,
            self.attempts,
            self.errors.join(": "),
        )
    }
}

/// Which dead letters a [`page`](DeadLetters::page) returns: oldest first,
/// after a given id, at most `limit`.
///
/// # Examples
///
/// ```
/// use eventbus::dead_letter::DeadLetterQuery;
///
/// let first = DeadLetterQuery::new().subscription("webhooks").limit(50);
/// assert_eq!(first.limit, 50);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterQuery {
    /// Only letters of this subscription; `None` for all.
    pub subscription: Option<String>,
    /// Only letters with a larger id: the [`next`](DeadLetterPage::next) of
    /// the page before.
    pub after: Option<u64>,
    /// The most letters in the page. Default 100.
    pub limit: usize,
}

impl Default for DeadLetterQuery {
    fn default() -> Self {
        DeadLetterQuery {
            subscription: None,
            after: None,
            limit: 100,
        }
    }
}

impl DeadLetterQuery {
    /// Every letter, 100 a page.
    pub fn new() -> Self {
        DeadLetterQuery::default()
    }

    /// Only letters of `subscription`.
    #[must_use]
    pub fn subscription(mut self, subscription: impl Into<String>) -> Self {
        self.subscription = Some(subscription.into());
        self
    }

    /// Only letters with an id above `id`.
    #[must_use]
    pub fn after(mut self, id: u64) -> Self {
        self.after = Some(id);
        self
    }

    /// At most `limit` letters; values below 1 count as 1.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit.max(1);
        self
    }
}

/// One page of dead letters; from [`DeadLetters::page`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DeadLetterPage {
    /// The letters, oldest first.
    pub letters: Vec<DeadLetter>,
    /// Where the next page starts (its [`after`](DeadLetterQuery::after)),
    /// or `None` when this was the last. A page can hold fewer letters than
    /// the limit and still have a next one: a stored letter that no longer
    /// decodes (written by a newer version) is skipped and logged.
    pub next: Option<u64>,
}

impl DeadLetterPage {
    /// A page for a [`DeadLetterStore`] to return: `next` is the id of the
    /// last stored letter it read, or `None` when nothing follows.
    pub fn new(letters: Vec<DeadLetter>, next: Option<u64>) -> Self {
        DeadLetterPage { letters, next }
    }
}

/// The dead letters of a bus: list, inspect, replay, discard. Cheap to
/// clone.
///
/// Returned by [`Bus::dead_letters`](crate::Bus::dead_letters).
#[derive(Clone)]
pub struct DeadLetters {
    inner: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn DeadLetterStore>,
    /// The subscriptions running in this process, told of each replay
    /// asked for here.
    routes: Mutex<HashMap<String, Route>>,
}

/// How a running subscription is told of a replay: the letter's id, and
/// its count of replays not yet finished (which `drain` waits for).
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) tx: mpsc::UnboundedSender<u64>,
    pub(crate) pending: Arc<AtomicU64>,
    /// The runner's wake-up, raised after each id sent.
    pub(crate) wake: Arc<crate::signal::Signal>,
    /// Ids sent and not yet finished, so a letter found marked again by
    /// a later look at the store is not sent twice.
    pub(crate) told: Arc<Mutex<HashSet<u64>>>,
}

/// A letter marked for replay, taken by its subscription.
pub(crate) struct Replay {
    pub(crate) id: u64,
    pub(crate) event: AnyEvent,
    subscription: String,
    letters: Weak<Shared>,
}

impl Replay {
    /// The replayed delivery finished: handled, or dead-lettered again
    /// under a new id. Either way the old letter goes. Dropped before
    /// this, the letter stays marked, and is replayed when its
    /// subscription next starts.
    pub(crate) async fn finish(self) {
        let Some(shared) = self.letters.upgrade() else {
            return;
        };
        if let Err(err) = shared.store.remove(self.id).await {
            tracing::error!(
                id = self.id,
                error = %error_chain(&err).join(": "),
                "a replayed dead letter could not be removed; it stays and is replayed again",
            );
        }
        DeadLetters { inner: shared }.untell(&self.subscription, self.id);
    }
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// Dead letters kept in `store`.
    pub(crate) fn new(store: Arc<dyn DeadLetterStore>) -> Self {
        DeadLetters {
            inner: Arc::new(Shared {
                store,
                routes: Mutex::default(),
            }),
        }
    }

    /// Every dead letter, oldest first. Reads the store a page at a time;
    /// use [`page`](DeadLetters::page) to hold only one page in memory.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    pub async fn list(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.collect(DeadLetterQuery::new().limit(1000)).await
    }

    /// The dead letters of one subscription, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    pub async fn list_for(&self, subscription: &str) -> Result<Vec<DeadLetter>, StoreError> {
        self.collect(
            DeadLetterQuery::new()
                .subscription(subscription)
                .limit(1000),
        )
        .await
    }

    async fn collect(&self, mut query: DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        let mut all = Vec::new();
        loop {
            let page = self.page(&query).await?;
            all.extend(page.letters);
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// One page of dead letters.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    ///
    /// # Examples
    ///
    /// ```
    /// use eventbus::dead_letter::DeadLetterQuery;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bus = eventbus::Bus::builder().build()?;
    /// let mut query = DeadLetterQuery::new().subscription("webhooks").limit(50);
    /// loop {
    ///     let page = bus.dead_letters().page(&query).await?;
    ///     for letter in &page.letters {
    ///         println!("{letter}");
    ///     }
    ///     match page.next {
    ///         Some(next) => query = query.after(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn page(&self, query: &DeadLetterQuery) -> Result<DeadLetterPage, StoreError> {
        self.inner.store.page(query).await
    }

    /// One dead letter.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    pub async fn get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.inner.store.get(id).await
    }

    /// How many dead letters are stored. Counts letters that no longer
    /// decode too, which the lists skip.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    pub async fn count(&self) -> Result<u64, StoreError> {
        self.inner.store.count(None).await
    }

    /// How many dead letters one subscription has.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    pub async fn count_for(&self, subscription: &str) -> Result<u64, StoreError> {
        self.inner.store.count(Some(subscription)).await
    }

    /// Whether the letter's replay was asked for and has not finished. It
    /// stays listed until then.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    pub async fn is_replaying(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .store
            .get(id)
            .await?
            .is_some_and(|letter| letter.replaying))
    }

    /// Removes a dead letter without replaying it; returns whether there
    /// was one with that id. Removes letters that no longer decode too,
    /// which the lists skip.
    ///
    /// # Errors
    ///
    /// [`DiscardError::InProgress`] while a replay of it was asked for and
    /// its subscription runs, until the replay finished (it would
    /// otherwise come back if the replay failed again);
    /// [`DiscardError::Store`] when the store cannot be written, and the
    /// letter stays.
    pub async fn discard(&self, id: u64) -> Result<bool, DiscardError> {
        let store = &self.inner.store;
        if !store.is_shared()
            && let Some(letter) = store.get(id).await.map_err(DiscardError::Store)?
            && letter.replaying
            && !self.is_routed(&letter.subscription)
        {
            // Marked, but its subscription runs nowhere (the store is this
            // process's alone): no replay can be under way, so the mark
            // does not hold the letter back.
            return store.remove(id).await.map_err(DiscardError::Store);
        }
        match store.discard(id).await {
            Ok(Discarded::Removed) => Ok(true),
            Ok(Discarded::NotFound) => Ok(false),
            Ok(Discarded::Replaying) => Err(DiscardError::InProgress(id)),
            Err(err) => Err(DiscardError::Store(err)),
        }
    }

    /// Sends the event back to its subscription, which handles it again with
    /// a fresh set of attempts, through the same limits and lanes as a new
    /// event. The letter stays stored (and listed) until that delivery has
    /// finished: then it is removed, and if the event failed again it comes
    /// back as a new dead letter.
    ///
    /// The request is kept in the store with the letter: a crash, a
    /// shutdown or a pause before the replay finished leaves the letter
    /// marked ([`replaying`](DeadLetter::replaying)), and its subscription
    /// replays it when it next starts. A marked letter whose subscription
    /// runs nowhere can still be [discarded](DeadLetters::discard).
    ///
    /// On a store that several processes share (the PostgreSQL outbox),
    /// any process may ask: the process holding the subscription finds the
    /// mark within about a second and runs the replay; a process standing
    /// by leaves it to the holder.
    ///
    /// # Errors
    ///
    /// [`ReplayError::NotFound`] for an unknown id;
    /// [`ReplayError::NoSubscription`] when the subscription is not running
    /// (and the store is this process's alone, so nothing else could run
    /// it); nothing is marked then;
    /// [`ReplayError::InProgress`] when the letter's replay has not finished
    /// yet; [`ReplayError::Store`] when the store cannot be read.
    pub async fn replay(&self, id: u64) -> Result<(), ReplayError> {
        let store = &self.inner.store;
        if !store.is_shared() {
            // Nothing else could run it: refused rather than marked when
            // its subscription is not running here.
            let letter = store
                .get(id)
                .await
                .map_err(ReplayError::Store)?
                .ok_or(ReplayError::NotFound(id))?;
            if !self.is_routed(&letter.subscription) {
                return Err(ReplayError::NoSubscription(letter.subscription));
            }
        }
        match store.request_replay(id).await.map_err(ReplayError::Store)? {
            ReplayRequest::Requested { subscription } => {
                self.tell(&subscription, id);
                Ok(())
            }
            ReplayRequest::AlreadyRequested => Err(ReplayError::InProgress(id)),
            ReplayRequest::NotFound => Err(ReplayError::NotFound(id)),
        }
    }

    /// Replays every dead letter of `subscription` that is not being
    /// replayed already; returns how many were sent. See
    /// [`replay`](DeadLetters::replay).
    ///
    /// # Errors
    ///
    /// [`ReplayError::NoSubscription`] when the subscription is not running;
    /// [`ReplayError::Store`] when the store cannot be read.
    pub async fn replay_all(&self, subscription: &str) -> Result<usize, ReplayError> {
        let mut query = DeadLetterQuery::new().subscription(subscription).limit(500);
        let mut sent = 0;
        loop {
            let page = self.page(&query).await.map_err(ReplayError::Store)?;
            for letter in page.letters.iter().filter(|l| !l.replaying) {
                match self.replay(letter.id).await {
                    Ok(()) => sent += 1,
                    // Being replayed, or replayed and gone since the page
                    // was read: another call has it.
                    Err(ReplayError::InProgress(_) | ReplayError::NotFound(_)) => {}
                    Err(err) => return Err(err),
                }
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(sent),
            }
        }
    }

    fn is_routed(&self, subscription: &str) -> bool {
        self.inner
            .routes
            .lock()
            .expect("routes lock")
            .contains_key(subscription)
    }

    /// Tells the subscription, if it runs here, of a letter to replay,
    /// unless it was told already and has not finished it.
    fn tell(&self, subscription: &str, id: u64) {
        let routes = self.inner.routes.lock().expect("routes lock");
        if let Some(route) = routes.get(subscription) {
            if !route.told.lock().expect("told lock").insert(id) {
                return;
            }
            route.pending.fetch_add(1, Ordering::SeqCst);
            if route.tx.send(id).is_err() {
                // Stopped meanwhile: the mark stays for its next start.
                route.pending.fetch_sub(1, Ordering::SeqCst);
                route.told.lock().expect("told lock").remove(&id);
            } else {
                route.wake.raise();
            }
        }
    }

    /// Forgets that the subscription was told of `id`: its replay ended,
    /// or was left to another process. A later look at the store tells it
    /// again if the letter is still marked.
    pub(crate) fn untell(&self, subscription: &str, id: u64) {
        let routes = self.inner.routes.lock().expect("routes lock");
        if let Some(route) = routes.get(subscription) {
            route.told.lock().expect("told lock").remove(&id);
        }
    }

    /// Whether the store is shared by processes, so letters may be marked
    /// for replay in another one.
    pub(crate) fn is_shared(&self) -> bool {
        self.inner.store.is_shared()
    }

    /// Tells a subscription running here of every letter of it marked for
    /// replay and not yet told: marks made by other processes reach it so.
    pub(crate) async fn look_for_marks(&self, subscription: &str) -> Result<(), StoreError> {
        let mut after = None;
        loop {
            let ids = self
                .inner
                .store
                .requested(subscription, after, REQUESTED_PAGE)
                .await?;
            // Only an empty page ends it: a store may answer with fewer
            // than asked for and still have more.
            let Some(&last) = ids.last() else {
                return Ok(());
            };
            for &id in &ids {
                self.tell(subscription, id);
            }
            after = Some(last);
        }
    }

    /// Takes letter `id` for `subscription`'s replay, if it is still there
    /// and marked; logged and `None` otherwise.
    pub(crate) async fn take(&self, subscription: &str, id: u64) -> Option<Replay> {
        let taken = self.take_marked(id).await;
        if taken.is_none() {
            self.untell(subscription, id);
        }
        taken
    }

    async fn take_marked(&self, id: u64) -> Option<Replay> {
        let letter = match self.inner.store.get(id).await {
            Ok(Some(letter)) if letter.replaying => letter,
            Ok(_) => return None,
            Err(err) => {
                tracing::error!(
                    id,
                    error = %error_chain(&err).join(": "),
                    "a dead letter to replay could not be read; it stays marked and is replayed at the next start",
                );
                return None;
            }
        };
        match self.inner.store.claim_replay(id).await {
            Ok(true) => Some(Replay {
                id,
                event: letter.event,
                subscription: letter.subscription,
                letters: Arc::downgrade(&self.inner),
            }),
            // Another process runs it.
            Ok(false) => None,
            Err(err) => {
                tracing::error!(
                    id,
                    error = %error_chain(&err).join(": "),
                    "the replay of a dead letter could not be claimed; it stays marked and is tried again",
                );
                None
            }
        }
    }

    /// Routes replays to a subscription starting here, and tells it of
    /// every letter of it already marked (asked for before a crash, a
    /// restart, or by another process).
    pub(crate) async fn route(&self, subscription: &str, route: Route) -> Result<(), StoreError> {
        self.inner
            .routes
            .lock()
            .expect("routes lock")
            .insert(subscription.to_owned(), route);
        self.look_for_marks(subscription).await
    }

    pub(crate) fn writer(
        &self,
        subscription: Arc<str>,
        counter: Arc<AtomicU64>,
        stall: Arc<Stall>,
    ) -> DeadLetterWriter {
        DeadLetterWriter {
            store: self.clone(),
            subscription,
            counter,
            stall,
        }
    }

    pub(crate) fn unroute(&self, subscription: &str, pending: &Arc<AtomicU64>) {
        let mut routes = self.inner.routes.lock().expect("routes lock");
        if routes
            .get(subscription)
            .is_some_and(|r| Arc::ptr_eq(&r.pending, pending))
        {
            routes.remove(subscription);
        }
    }
}

/// Marked letters are read this many at a time when a subscription starts.
const REQUESTED_PAGE: usize = 500;

/// The longest wait between two attempts to store a dead letter.
const MAX_STORE_WAIT: Duration = Duration::from_secs(5);

/// Writes the dead letters of one subscription. Handed to consumers through
/// [`Context::dead_letters`](crate::consumer::Context::dead_letters).
#[derive(Clone)]
pub struct DeadLetterWriter {
    store: DeadLetters,
    subscription: Arc<str>,
    counter: Arc<AtomicU64>,
    stall: Arc<Stall>,
}

impl fmt::Debug for DeadLetterWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterWriter")
            .field("subscription", &self.subscription)
            .finish()
    }
}

impl DeadLetterWriter {
    /// The dead letters it writes to.
    pub(crate) fn letters(&self) -> &DeadLetters {
        &self.store
    }

    /// Records that the subscription gave up on `event`, durably when the
    /// bus's log keeps dead letters, and returns the letter's id.
    ///
    /// Returns only once the letter is stored. When the store refuses it (a
    /// full disk, a locked file), this waits and tries again, with the
    /// reason in the subscription's [stats](crate::SubscriptionStats), so
    /// the event is never released without its letter.
    pub async fn write(
        &self,
        event: AnyEvent,
        errors: Vec<String>,
        attempts: u32,
        first_failed_at: DateTime<Utc>,
    ) -> u64 {
        let mut letter = DeadLetter {
            id: 0,
            subscription: self.subscription.to_string(),
            event,
            errors,
            attempts,
            first_failed_at,
            last_failed_at: Utc::now(),
            replaying: false,
        };
        let mut wait = Duration::from_millis(100);
        letter.id = loop {
            match self.store.inner.store.insert(&letter).await {
                Ok(id) => break id,
                Err(err) => {
                    let reason = format!(
                        "could not store the dead letter of {} {}, so the subscription holds it unfinished and tries again in {wait:?}: {}",
                        letter.event.name(),
                        letter.event.meta().id,
                        error_chain(&err).join(": "),
                    );
                    tracing::error!(subscription = %self.subscription, "{reason}");
                    // Damaged storage will not take it however long the
                    // subscription waits: `drain` says so instead of
                    // waiting; the event stays held back all the same.
                    self.stall.set(reason, err.is_fatal());
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_STORE_WAIT);
                }
            }
        };
        self.stall.clear();
        tracing::error!(
            subscription = %letter.subscription,
            id = letter.id,
            event = %letter.event.name(),
            event_id = %letter.event.meta().id,
            attempts,
            error = %letter.errors.join(": "),
            "event dead-lettered",
        );
        metrics::counter!("eventbus_dead_lettered_total", "subscription" => self.subscription.to_string())
            .increment(1);
        self.counter.fetch_add(1, Ordering::Relaxed);
        letter.id
    }
}
