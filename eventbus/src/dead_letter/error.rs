//! Errors of the dead letters.

/// Returned by [`DeadLetters::replay`](super::DeadLetters::replay) and
/// [`DeadLetters::replay_all`](super::DeadLetters::replay_all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
}
