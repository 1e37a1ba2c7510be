//! Dead letters: events a subscription gave up on after its last attempt.
//!
//! Nothing is dropped silently. An event whose handling kept failing (an
//! error or a panic on every attempt), and every event of a batch its sink
//! kept rejecting, lands here with the error chain, the attempt count and
//! timestamps. Dead letters can be listed, inspected, and replayed into their
//! subscription once the cause is fixed.

use crate::event::AnyEvent;
use crate::log::DeadLetterStore;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

mod error;

pub use self::error::ReplayError;

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

/// The dead letters of a bus: list, inspect, replay. Cheap to clone.
///
/// Returned by [`Bus::dead_letters`](crate::Bus::dead_letters).
#[derive(Clone, Default)]
pub struct DeadLetters {
    inner: Arc<Store>,
}

#[derive(Default)]
struct Store {
    next_id: AtomicU64,
    letters: Mutex<BTreeMap<u64, DeadLetter>>,
    routes: Mutex<HashMap<String, Route>>,
    persist: Option<Arc<dyn DeadLetterStore>>,
}

/// Where replayed events go: the subscription's replay queue.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) tx: mpsc::UnboundedSender<AnyEvent>,
    pub(crate) pending: Arc<AtomicU64>,
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("len", &self.len())
            .finish()
    }
}

impl DeadLetters {
    /// Dead letters kept in `persist` too, starting with what it holds from
    /// earlier runs.
    pub(crate) fn new(persist: Option<Arc<dyn DeadLetterStore>>) -> Self {
        let loaded = persist.as_ref().map(|p| p.load()).unwrap_or_default();
        let next_id = loaded.iter().map(|l| l.id).max().unwrap_or(0);
        DeadLetters {
            inner: Arc::new(Store {
                next_id: AtomicU64::new(next_id),
                letters: Mutex::new(loaded.into_iter().map(|l| (l.id, l)).collect()),
                routes: Mutex::default(),
                persist,
            }),
        }
    }

    /// Every dead letter, oldest first.
    pub fn list(&self) -> Vec<DeadLetter> {
        self.letters().values().cloned().collect()
    }

    /// The dead letters of one subscription, oldest first.
    pub fn list_for(&self, subscription: &str) -> Vec<DeadLetter> {
        self.letters()
            .values()
            .filter(|l| l.subscription == subscription)
            .cloned()
            .collect()
    }

    /// One dead letter.
    pub fn get(&self, id: u64) -> Option<DeadLetter> {
        self.letters().get(&id).cloned()
    }

    /// How many dead letters there are.
    pub fn len(&self) -> usize {
        self.letters().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes a dead letter without replaying it.
    pub async fn discard(&self, id: u64) -> Option<DeadLetter> {
        let letter = self.letters().remove(&id)?;
        self.forget(id).await;
        Some(letter)
    }

    async fn forget(&self, id: u64) {
        if let Some(persist) = &self.inner.persist
            && let Err(err) = persist.remove(id).await
        {
            tracing::error!(id, error = %error_chain(&err).join(": "), "could not remove a stored dead letter; it will come back after a restart");
        }
    }

    /// Sends the event back to its subscription, which handles it again with
    /// a fresh set of attempts, and removes the letter. If it fails again, it
    /// comes back as a new dead letter.
    ///
    /// # Errors
    ///
    /// [`ReplayError::NotFound`] for an unknown id;
    /// [`ReplayError::NoSubscription`] when the subscription has stopped, in
    /// which case the letter stays.
    pub async fn replay(&self, id: u64) -> Result<(), ReplayError> {
        self.replay_now(id)?;
        self.forget(id).await;
        Ok(())
    }

    fn replay_now(&self, id: u64) -> Result<(), ReplayError> {
        let mut letters = self.letters();
        let letter = letters.get(&id).ok_or(ReplayError::NotFound(id))?;
        let route = self
            .inner
            .routes
            .lock()
            .expect("routes lock")
            .get(&letter.subscription)
            .cloned()
            .ok_or_else(|| ReplayError::NoSubscription(letter.subscription.clone()))?;
        route.pending.fetch_add(1, Ordering::SeqCst);
        if route.tx.send(letter.event.clone()).is_err() {
            route.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(ReplayError::NoSubscription(letter.subscription.clone()));
        }
        letters.remove(&id);
        Ok(())
    }

    /// Replays every dead letter of `subscription`; returns how many.
    ///
    /// # Errors
    ///
    /// [`ReplayError::NoSubscription`] when the subscription has stopped.
    pub async fn replay_all(&self, subscription: &str) -> Result<usize, ReplayError> {
        let ids: Vec<u64> = self
            .letters()
            .values()
            .filter(|l| l.subscription == subscription)
            .map(|l| l.id)
            .collect();
        for id in &ids {
            self.replay(*id).await?;
        }
        Ok(ids.len())
    }

    pub(crate) fn writer(
        &self,
        subscription: Arc<str>,
        counter: Arc<AtomicU64>,
    ) -> DeadLetterWriter {
        DeadLetterWriter {
            store: self.clone(),
            subscription,
            counter,
        }
    }

    pub(crate) fn route(&self, subscription: &str, route: Route) {
        self.inner
            .routes
            .lock()
            .expect("routes lock")
            .insert(subscription.to_owned(), route);
    }

    /// Removes the route of one particular run of `subscription` (identified
    /// by its pending counter), leaving a newer run under the same name.
    pub(crate) fn unroute(&self, subscription: &str, pending: &Arc<AtomicU64>) {
        let mut routes = self.inner.routes.lock().expect("routes lock");
        if routes
            .get(subscription)
            .is_some_and(|r| Arc::ptr_eq(&r.pending, pending))
        {
            routes.remove(subscription);
        }
    }

    fn letters(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, DeadLetter>> {
        self.inner.letters.lock().expect("dead letters lock")
    }
}

/// Writes the dead letters of one subscription. Handed to consumers through
/// [`Context::dead_letters`](crate::consumer::Context::dead_letters).
#[derive(Clone)]
pub struct DeadLetterWriter {
    store: DeadLetters,
    subscription: Arc<str>,
    counter: Arc<AtomicU64>,
}

impl fmt::Debug for DeadLetterWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterWriter")
            .field("subscription", &self.subscription)
            .finish()
    }
}

impl DeadLetterWriter {
    /// Records that the subscription gave up on `event`, durably when the
    /// bus's log keeps dead letters.
    pub async fn write(
        &self,
        event: AnyEvent,
        errors: Vec<String>,
        attempts: u32,
        first_failed_at: DateTime<Utc>,
    ) -> u64 {
        let id = self.store.inner.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let letter = DeadLetter {
            id,
            subscription: self.subscription.to_string(),
            event,
            errors,
            attempts,
            first_failed_at,
            last_failed_at: Utc::now(),
        };
        tracing::error!(
            subscription = %letter.subscription,
            event = %letter.event.name(),
            event_id = %letter.event.meta().id,
            attempts,
            error = %letter.errors.join(": "),
            "event dead-lettered",
        );
        metrics::counter!("eventbus_dead_lettered_total", "subscription" => self.subscription.to_string())
            .increment(1);
        self.counter.fetch_add(1, Ordering::Relaxed);
        if let Some(persist) = &self.store.inner.persist
            && let Err(err) = persist.save(&letter).await
        {
            tracing::error!(
                id,
                error = %error_chain(&err).join(": "),
                "could not store a dead letter; it is kept in memory only",
            );
        }
        self.store.letters().insert(id, letter);
        id
    }
}

/// The error and its sources, outermost first.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut chain = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    chain
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
