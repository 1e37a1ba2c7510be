//! Failures that retrying cannot fix.

use super::BoxError;
use std::error::Error;
use std::fmt;

/// An error that retrying will not fix: return it from a consumer (or a
/// [`Sink`](crate::Sink)) and the bus dead-letters the event (or the
/// batch's events) at once, without the attempts its [`Retry`](crate::Retry)
/// policy has left.
///
/// It reads as the error it wraps: the dead letter's error chain is the
/// wrapped error's own. The bus finds it anywhere in a returned error's
/// chain of sources, so it may be wrapped again (in an error of your own,
/// say) on its way out.
///
/// # Examples
///
/// ```
/// use eventbus::{AnyEvent, BoxError, Consumer, Permanent};
///
/// struct Mailer;
///
/// impl Consumer for Mailer {
///     async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
///         let address = event.to_json()?["email"].as_str().unwrap_or_default().to_owned();
///         if !address.contains('@') {
///             // No retry makes this address valid.
///             return Err(Permanent::msg(format!("invalid address {address:?}")).into());
///         }
///         Ok(())
///     }
/// }
/// ```
pub struct Permanent {
    pub(super) inner: BoxError,
}

impl Permanent {
    /// Marks `error` as one retrying will not fix.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Permanent {
            inner: error.into(),
        }
    }

    /// A permanent failure with `message` as its text.
    pub fn msg(message: impl Into<String>) -> Self {
        Permanent::new(message.into())
    }

    /// The error it wraps.
    pub fn into_inner(self) -> BoxError {
        self.inner
    }

    /// Whether `error`, or any error in its chain of sources, is a
    /// `Permanent`. An `io::Error` made with `io::Error::other(permanent)`
    /// counts too, though it does not give its inner error as a source.
    pub fn is_in(error: &(dyn Error + 'static)) -> bool {
        find_in::<Permanent>(error).is_some()
    }
}

/// The first `T` in `error`'s chain of sources, looking inside errors
/// that do not give the error they wrap as a source: `io::Error`s made
/// with `io::Error::other`, and the marks [`Permanent`] and
/// [`RetryAfter`](super::RetryAfter), which read as what they wrap, so one
/// mark inside the other is found.
pub(super) fn find_in<'e, T: Error + 'static>(error: &'e (dyn Error + 'static)) -> Option<&'e T> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        let wrapped: Option<&(dyn Error + 'static)> =
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                io.get_ref().map(|inner| inner as &(dyn Error + 'static))
            } else if let Some(mark) = error.downcast_ref::<Permanent>() {
                Some(&*mark.inner)
            } else if let Some(mark) = error.downcast_ref::<super::RetryAfter>() {
                Some(&*mark.inner)
            } else {
                None
            };
        if let Some(found) = wrapped.and_then(find_in::<T>) {
            return Some(found);
        }
        next = error.source();
    }
    None
}

impl fmt::Debug for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Permanent").field(&self.inner).finish()
    }
}

/// The wrapped error's own text: the mark changes what the bus does, not
/// what the failure says.
impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl Error for Permanent {
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
        assert!(!Permanent::is_in(&*plain));
        let marked: BoxError = Permanent::msg("550 no such mailbox").into();
        assert!(Permanent::is_in(&*marked));
        assert_eq!(marked.to_string(), "550 no such mailbox");
        let io = std::io::Error::other(Permanent::msg("refused"));
        assert!(Permanent::is_in(&io));
        let io = std::io::Error::other("refused");
        assert!(!Permanent::is_in(&io));
    }
}
