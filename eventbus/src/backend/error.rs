//! Errors of the backends: writing, reading and the stores each have their
//! own type, and each keeps the backend's error as its source.

use crate::event::AnyEvent;

type Source = Box<dyn std::error::Error + Send + Sync>;

/// Returned by [`Backend::append`](super::Backend::append): the event was
/// not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The backend was closed; the event is handed back.
    #[error("the backend is closed; the event was not stored")]
    Closed(AnyEvent),
    /// The backend failed, for a reason its source explains.
    #[error("the backend could not store the event")]
    Failed(#[source] Source),
    /// The backend's storage is damaged: retrying will not help, a person
    /// has to repair or restore it. The source says where and how.
    #[error("the backend's storage is damaged")]
    Damaged(#[source] Source),
}

/// Returned by [`Backend::reader`](super::Backend::reader) and the
/// [`Reader`](super::Reader) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The backend failed, for a reason its source explains; the runtime
    /// tries again.
    #[error("the backend could not be read")]
    Failed(#[source] Source),
    /// The backend's storage is damaged: retrying will not help.
    #[error("the backend's storage is damaged")]
    Damaged(#[source] Source),
    /// This process no longer holds the subscription (a lease expired and
    /// another process took it over). The subscription stops without
    /// committing, so the new holder delivers what this one had not
    /// finished.
    #[error("this process lost its claim on the subscription: {0}")]
    ClaimLost(String),
    /// The backend cannot do what was asked, for the reason given.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Returned by the [`DeadLetterStore`](super::DeadLetterStore) and
/// [`RetryStore`](super::RetryStore) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store failed, for a reason its source explains.
    #[error("the store failed")]
    Failed(#[source] Source),
    /// The store's storage is damaged: retrying will not help.
    #[error("the store's storage is damaged")]
    Damaged(#[source] Source),
}

impl WriteError {
    /// Whether retrying cannot fix the failure.
    pub fn is_fatal(&self) -> bool {
        matches!(self, WriteError::Damaged(_))
    }
}

impl ReadError {
    /// Whether retrying cannot fix the failure: damaged storage, or a claim
    /// this process lost.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ReadError::Damaged(_) | ReadError::ClaimLost(_))
    }
}

impl StoreError {
    /// Whether retrying cannot fix the failure.
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Damaged(_))
    }
}

/// Returned by the in-memory log's append without waiting, inside the bus.
#[derive(Debug)]
pub(crate) enum TryAppendError {
    /// The slowest cursor is a full buffer behind.
    Full(AnyEvent),
    /// The log was closed.
    Closed(AnyEvent),
}
