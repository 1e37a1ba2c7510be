//! Errors of the log.

use crate::event::AnyEvent;

/// Returned by [`Log::try_append`](super::Log::try_append): the event could
/// not be appended without waiting. The event is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryAppendError {
    /// The slowest subscription is a full buffer behind.
    #[error("log is full")]
    Full(AnyEvent),
    /// Storing the event needs I/O; use [`Log::append`](super::Log::append).
    #[error("appending would block")]
    WouldBlock(AnyEvent),
    /// The log was closed.
    #[error("log is closed")]
    Closed(AnyEvent),
}

/// A backend failure: returned by the log and cursor operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The log was closed, and the event is handed back.
    #[error("log is closed")]
    Closed(AnyEvent),
    /// The log cannot do what was asked, for the reason given.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The backend failed, for a reason it explains.
    #[error("log backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend's storage is damaged: retrying will not help, a person
    /// has to repair or restore it. The source says where and how.
    #[error("the log's storage is damaged")]
    Damaged(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LogError {
    /// Whether retrying cannot fix the failure ([`LogError::Damaged`]), so
    /// waiting for a subscription that hit it is pointless.
    pub fn is_fatal(&self) -> bool {
        matches!(self, LogError::Damaged(_))
    }
}
