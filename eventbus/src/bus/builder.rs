use super::{BuildError, Bus};
use crate::backend::writer::Writer;
use crate::backend::{Backend, DeadLetterStore, MemoryLog, RetryStore};
use crate::dead_letter::{DeadLetters, MemoryDeadLetters};
use crate::subscription::set::SubscriptionSet;
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

/// Configures a [`Bus`]; from [`Bus::builder`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let bus = eventbus::Bus::builder()
///     .capacity(16_384)
///     .shutdown_timeout(Duration::from_secs(10))
///     .build()?;
/// # let _ = bus;
/// # Ok::<(), eventbus::BuildError>(())
/// ```
///
/// A setting that cannot work is an error that names it:
///
/// ```
/// let err = eventbus::Bus::builder().capacity(0).build().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "`capacity` must be at least 1: it is how many unfinished events the bus holds",
/// );
/// ```
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BusBuilder {
    capacity: Option<usize>,
    backend: Option<Writer>,
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
    retries: Option<Arc<dyn RetryStore>>,
    shutdown_timeout: Option<Duration>,
}

impl BusBuilder {
    /// How many unfinished events the in-memory log holds: the producer waits
    /// when the slowest subscription is this far behind. Default 4096.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Runs the bus on `backend` instead of the in-memory default. Its own
    /// dead-letter and retry stores, if it brings them, come with it unless
    /// others are set.
    pub fn backend<B: Backend>(mut self, backend: B) -> Self {
        // The in-memory log keeps its fast path (appending without a
        // future) even when it is passed in explicitly.
        let any: Box<dyn Any> = Box::new(backend);
        self.backend = Some(match any.downcast::<MemoryLog>() {
            Ok(memory) => Writer::memory(Arc::new(*memory)),
            Err(any) => Writer::backend(Arc::new(
                *any.downcast::<B>().expect("the value boxed just above"),
            )),
        });
        self
    }

    /// Keeps dead letters in `store` instead of the backend's own store
    /// (or memory, for a backend without one).
    pub fn dead_letter_store(mut self, store: impl DeadLetterStore) -> Self {
        self.dead_letters = Some(Arc::new(store));
        self
    }

    /// Keeps retry schedules in `store` instead of the backend's own store
    /// (or nowhere, for a backend without one: a restart starts schedules
    /// over). Schedules are kept by position, so this needs a durable
    /// backend: [`build`](BusBuilder::build) refuses it on another.
    pub fn retry_store(mut self, store: impl RetryStore) -> Self {
        self.retries = Some(Arc::new(store));
        self
    }

    /// How long [`Bus::shutdown`] waits for subscriptions to finish. Default
    /// 30 seconds.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }

    /// Builds the bus.
    ///
    /// # Errors
    ///
    /// [`BuildError`] naming the setting that cannot work.
    pub fn build(self) -> Result<Bus, BuildError> {
        let writer = match (self.backend, self.capacity) {
            (Some(_), Some(_)) => return Err(BuildError::CapacityWithCustomBackend),
            (Some(writer), None) => writer,
            (None, Some(0)) => return Err(BuildError::ZeroCapacity),
            (None, capacity) => Writer::memory(Arc::new(MemoryLog::new(capacity.unwrap_or(4096)))),
        };
        let backend = writer.get();
        if self.retries.is_some() && !backend.capabilities().durable {
            return Err(BuildError::RetryStoreWithoutDurableBackend);
        }
        let dead_letters = self
            .dead_letters
            .or_else(|| backend.dead_letter_store())
            .unwrap_or_else(|| Arc::new(MemoryDeadLetters::default()));
        let retries = self.retries.or_else(|| backend.retry_store());
        Ok(Bus::new(SubscriptionSet::new(
            writer,
            retries,
            DeadLetters::new(dead_letters),
            self.shutdown_timeout.unwrap_or(Duration::from_secs(30)),
        )))
    }
}
