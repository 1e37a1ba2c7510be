use super::{BuildError, Bus};
use crate::log::{Log, MemoryLog};
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
    log: Option<Arc<dyn Log>>,
    shutdown_timeout: Option<Duration>,
}

impl BusBuilder {
    /// How many unfinished events the in-memory log holds: the producer waits
    /// when the slowest subscription is this far behind. Default 4096.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Runs the bus on `log` instead of the in-memory default.
    pub fn log(mut self, log: impl Log) -> Self {
        self.log = Some(Arc::new(log));
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
        let log: Arc<dyn Log> = match (self.log, self.capacity) {
            (Some(_), Some(_)) => return Err(BuildError::CapacityWithCustomLog),
            (Some(log), None) => log,
            (None, Some(0)) => return Err(BuildError::ZeroCapacity),
            (None, capacity) => Arc::new(MemoryLog::new(capacity.unwrap_or(4096))),
        };
        Ok(Bus::from_log(
            log,
            self.shutdown_timeout.unwrap_or(Duration::from_secs(30)),
        ))
    }
}
