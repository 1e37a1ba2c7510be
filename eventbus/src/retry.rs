//! Retry policies: exponential backoff with jitter and a bounded number of
//! attempts, after which an event is dead-lettered.

use std::future::Future;
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

    /// The delay after failed attempt `attempt`, at least what the failure
    /// asked for with [`RetryAfter`](crate::RetryAfter).
    pub(crate) fn delay_after(&self, attempt: u32, failure: &Failure) -> Duration {
        let delay = self.delay(attempt);
        failure.not_before.map_or(delay, |wait| delay.max(wait))
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

/// What a run of attempts came to.
pub(crate) enum Attempted {
    /// An attempt succeeded.
    Succeeded,
    /// The last attempt the policy allows failed.
    GaveUp {
        /// Attempts made, all failed.
        attempts: u32,
        /// The last attempt's error chain, or its panic.
        errors: Vec<String>,
        first_failed_at: chrono::DateTime<chrono::Utc>,
    },
}

/// A failed attempt.
pub(crate) struct Failure {
    /// Its error chain, outermost first, or its panic message.
    pub(crate) errors: Vec<String>,
    /// A [`Permanent`](crate::Permanent) error, which no retry fixes.
    pub(crate) permanent: bool,
    /// The least wait before the next attempt, from a
    /// [`RetryAfter`](crate::RetryAfter) error.
    pub(crate) not_before: Option<Duration>,
}

impl Failure {
    /// The failure an error returned by a consumer or a sink makes.
    pub(crate) fn of(err: &(dyn std::error::Error + 'static)) -> Self {
        Failure {
            errors: crate::failure::error_chain(err),
            permanent: crate::Permanent::is_in(err),
            not_before: crate::RetryAfter::find_in(err),
        }
    }

    /// The failure a caught panic makes: an ordinary one, since the next
    /// attempt may not panic.
    pub(crate) fn panicked(panic: &(dyn std::any::Any + Send)) -> Self {
        Failure {
            errors: vec![format!(
                "panicked: {}",
                crate::failure::panic_message(panic)
            )],
            permanent: false,
            not_before: None,
        }
    }
}

/// The work a retry loop repeats, and what it records between attempts:
/// a delivery to a consumer, or a batch to a sink.
pub(crate) trait Attempts {
    /// Attempt `number` (from 1; `retry` when an earlier one of this run
    /// failed).
    fn attempt(
        &mut self,
        number: u32,
        retry: bool,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Attempt `number` failed; the next one follows after `delay`.
    fn retrying(
        &mut self,
        number: u32,
        errors: &[String],
        delay: Duration,
        first_failed_at: chrono::DateTime<chrono::Utc>,
    ) -> impl Future<Output = ()> + Send;
}

impl Retry {
    /// Runs `work` from attempt `first` until an attempt succeeds or the
    /// policy's last one fails, sleeping the policy's delay in between.
    /// `first_failed_at` carries a schedule resumed after a restart.
    pub(crate) async fn run<W: Attempts + Send>(
        &self,
        work: &mut W,
        first: u32,
        first_failed_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Attempted {
        let number = first.max(1);
        match work.attempt(number, false).await {
            Ok(()) => Attempted::Succeeded,
            Err(failure) => {
                Box::pin(self.after_failure(work, number, failure, first_failed_at)).await
            }
        }
    }

    /// Goes on after attempt `number` of `work` failed: the rest of
    /// [`run`](Retry::run). A permanent failure ends it at once. Kept apart (and boxed by callers), so
    /// the future of a first attempt that succeeds, the path of nearly
    /// every event, stays small.
    pub(crate) async fn after_failure<W: Attempts + Send>(
        &self,
        work: &mut W,
        mut number: u32,
        mut failure: Failure,
        mut first_failed_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Attempted {
        loop {
            let first_failed_at = *first_failed_at.get_or_insert_with(chrono::Utc::now);
            if failure.permanent || number >= self.attempts() {
                return Attempted::GaveUp {
                    attempts: number,
                    errors: failure.errors,
                    first_failed_at,
                };
            }
            let delay = self.delay_after(number, &failure);
            work.retrying(number, &failure.errors, delay, first_failed_at)
                .await;
            tokio::time::sleep(delay).await;
            number += 1;
            match work.attempt(number, true).await {
                Ok(()) => return Attempted::Succeeded,
                Err(next) => failure = next,
            }
        }
    }
}

/// Runs one attempt, catching a panic.
pub(crate) async fn attempt<F>(work: F) -> Result<(), Failure>
where
    F: Future<Output = Result<(), crate::BoxError>>,
{
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(Failure::of(&*err)),
        Err(panic) => Err(Failure::panicked(&*panic)),
    }
}
