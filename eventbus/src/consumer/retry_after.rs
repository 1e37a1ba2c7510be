//! Failures that say when to try again.

use super::BoxError;
use super::permanent::find_in;
use std::error::Error;
use std::fmt;
use std::time::Duration;

/// A failure whose next attempt must wait at least a while: return it from
/// a consumer (or a [`Sink`](crate::Sink)) when the service you called
/// said when to come back (an HTTP 429 or 503 with `Retry-After`, a rate
/// limit's reset). The next attempt waits the longer of that and the
/// [`Retry`](crate::Retry) policy's own delay; at the last attempt the
/// event is dead-lettered at once, with no wait.
///
/// Like [`Permanent`](crate::Permanent), it reads as the error it wraps,
/// and the bus finds it anywhere in a returned error's chain of sources
/// (a `Permanent` inside it still dead-letters at once). A wait over
/// [`RetryAfter::MAX_WAIT`] (30 days) counts as 30 days.
///
/// # Examples
///
/// ```
/// use eventbus::{AnyEvent, BoxError, Consumer, RetryAfter};
/// use std::time::Duration;
///
/// struct Crm;
///
/// impl Consumer for Crm {
///     async fn handle(&self, _event: &AnyEvent) -> Result<(), BoxError> {
///         // The CRM answered 429 with `Retry-After: 30`.
///         let asked = Duration::from_secs(30);
///         Err(RetryAfter::new(asked.min(Duration::from_secs(300)), "CRM rate limit reached").into())
///     }
/// }
/// ```
pub struct RetryAfter {
    wait: Duration,
    pub(super) inner: BoxError,
}

impl RetryAfter {
    /// The longest wait honoured: 30 days.
    pub const MAX_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);

    /// Marks `error` as one whose next attempt waits at least `wait`.
    pub fn new(wait: Duration, error: impl Into<BoxError>) -> Self {
        RetryAfter {
            wait,
            inner: error.into(),
        }
    }

    /// The least wait before the next attempt, at most
    /// [`MAX_WAIT`](Self::MAX_WAIT).
    pub fn wait(&self) -> Duration {
        self.wait.min(Self::MAX_WAIT)
    }

    /// The error it wraps.
    pub fn into_inner(self) -> BoxError {
        self.inner
    }

    /// The wait asked for by the first `RetryAfter` in `error`'s chain of
    /// sources, if any.
    pub fn find_in(error: &(dyn Error + 'static)) -> Option<Duration> {
        find_in::<RetryAfter>(error).map(RetryAfter::wait)
    }
}

impl fmt::Debug for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryAfter")
            .field("wait", &self.wait)
            .field("inner", &self.inner)
            .finish()
    }
}

/// The wrapped error's own text: the mark changes when the bus tries
/// again, not what the failure says.
impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl Error for RetryAfter {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.inner.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_through_sources_and_inside_io_errors() {
        let plain: BoxError = "timeout".into();
        assert_eq!(RetryAfter::find_in(&*plain), None);
        let marked: BoxError = RetryAfter::new(Duration::from_secs(3), "429 slow down").into();
        assert_eq!(RetryAfter::find_in(&*marked), Some(Duration::from_secs(3)));
        assert_eq!(marked.to_string(), "429 slow down");
        let io = std::io::Error::other(RetryAfter::new(Duration::from_secs(1), "busy"));
        assert_eq!(RetryAfter::find_in(&io), Some(Duration::from_secs(1)));
        let huge: BoxError = RetryAfter::new(Duration::MAX, "later").into();
        assert_eq!(RetryAfter::find_in(&*huge), Some(RetryAfter::MAX_WAIT));
    }

    #[test]
    fn each_mark_is_found_inside_the_other() {
        let permanent_inside: BoxError =
            RetryAfter::new(Duration::from_secs(1), crate::Permanent::msg("400")).into();
        assert!(crate::Permanent::is_in(&*permanent_inside));
        assert_eq!(
            RetryAfter::find_in(&*permanent_inside),
            Some(Duration::from_secs(1))
        );
        let in_io: BoxError = RetryAfter::new(
            Duration::from_secs(1),
            std::io::Error::other(crate::Permanent::msg("400")),
        )
        .into();
        assert!(crate::Permanent::is_in(&*in_io));
        let retry_inside: BoxError =
            crate::Permanent::new(RetryAfter::new(Duration::from_secs(2), "429")).into();
        assert_eq!(
            RetryAfter::find_in(&*retry_inside),
            Some(Duration::from_secs(2))
        );
    }
}
