//! Retry policies: exponential backoff with jitter and a bounded number of
//! attempts, after which an event is dead-lettered.

use std::time::Duration;

/// How a subscription retries an event whose handling failed.
///
/// The delay before attempt `n + 1` is `initial * multiplier^(n - 1)`, capped
/// at `max_delay`, then jittered: "full jitter" picks uniformly between zero
/// and that delay, so many failing events do not retry in lockstep.
///
/// The default is 5 attempts, starting at 100 ms, doubling, capped at 30 s,
/// with full jitter.
///
/// # Examples
///
/// ```
/// use eventbus::Retry;
/// use std::time::Duration;
///
/// let retry = Retry::exponential(Duration::from_millis(50))
///     .max_attempts(8)
///     .max_delay(Duration::from_secs(10));
/// assert_eq!(retry.attempts(), 8);
/// assert!(retry.delay(1) <= Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    max_attempts: u32,
    initial: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: bool,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 5,
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl Retry {
    /// Exponential backoff from `initial`, with the default attempts, cap and
    /// jitter.
    pub fn exponential(initial: Duration) -> Self {
        Retry {
            initial,
            ..Retry::default()
        }
    }

    /// One attempt: a failure goes straight to the dead letters.
    pub fn never() -> Self {
        Retry {
            max_attempts: 1,
            ..Retry::default()
        }
    }

    /// The most attempts, the first included. Values below 1 count as 1.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The longest delay between two attempts.
    #[must_use]
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// The factor between consecutive delays; values below 1 count as 1.
    #[must_use]
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Turns jitter off, for delays that are exactly the schedule.
    #[must_use]
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The most attempts, the first included.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The longest delay between two attempts.
    pub(crate) fn cap(&self) -> Duration {
        self.max_delay
    }

    /// The delay after failed attempt `attempt` (counting from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let capped = self.initial.as_secs_f64() * exp;
        let capped = capped.min(self.max_delay.as_secs_f64());
        let delay = if self.jitter {
            capped * fastrand::f64()
        } else {
            capped
        };
        Duration::from_secs_f64(delay.max(0.0))
    }
}
