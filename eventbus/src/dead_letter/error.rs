//! Errors of the dead letters.

use crate::backend::StoreError;

/// Returned by [`DeadLetters::replay`](super::DeadLetters::replay) and
/// [`DeadLetters::replay_all`](super::DeadLetters::replay_all).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// No dead letter has this id.
    #[error("no dead letter with id {0}")]
    NotFound(u64),
    /// The subscription has stopped; the letter stays.
    #[error(
        "subscription `{0}` is not running, so its dead letter cannot be replayed; restart it and replay again"
    )]
    NoSubscription(String),
    /// The letter's replay is queued or running; it leaves the store once
    /// that delivery finished.
    #[error("dead letter {0} is being replayed already; it is removed once that replay finished")]
    InProgress(u64),
    /// The dead-letter store could not be read.
    #[error("the dead-letter store could not be read")]
    Store(#[source] StoreError),
}

/// Returned by [`DeadLetters::discard`](super::DeadLetters::discard).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscardError {
    /// The letter's replay has not finished; discard it once it has (if the
    /// replay fails again, its new letter can be discarded).
    #[error("dead letter {0} is being replayed; discard it once the replay finished")]
    InProgress(u64),
    /// The dead-letter store could not be written; the letter stays.
    #[error("the dead-letter store could not be written")]
    Store(#[source] StoreError),
}
