//! Where a bus keeps its dead letters; implemented in memory here and by
//! durable logs.

use super::{DeadLetter, DeadLetterPage, DeadLetterQuery};
use crate::log::error::LogError;
use futures_util::future::BoxFuture;
use std::fmt::Debug;

/// Where a bus keeps its dead letters: in memory by default, in the log's
/// own storage for a durable [`Log`](crate::Log).
///
/// The bus writes each letter here before the subscription releases the
/// event's position, and removes it only once a replay of it finished, so
/// a dead letter is never lost to a crash. Reads are paged: a store never
/// has to hold every letter in memory.
pub trait DeadLetterStore: Send + Sync + Debug + 'static {
    /// Stores a new letter and returns the id the store gave it. `letter.id`
    /// is ignored: ids come from the store, increase, and are never given
    /// out twice, even after the letter that had one was removed. An insert
    /// never replaces a stored letter.
    fn insert<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<u64, LogError>>;

    /// One letter, if it is stored and decodes.
    fn get(&self, id: u64) -> BoxFuture<'_, Result<Option<DeadLetter>, LogError>>;

    /// Up to `query.limit` letters in id order, after `query.after`.
    fn page<'a>(
        &'a self,
        query: &'a DeadLetterQuery,
    ) -> BoxFuture<'a, Result<DeadLetterPage, LogError>>;

    /// How many letters are stored, of one subscription or of all.
    fn count<'a>(&'a self, subscription: Option<&'a str>) -> BoxFuture<'a, Result<u64, LogError>>;

    /// Removes a letter; `Ok(false)` when there was none with that id.
    fn remove(&self, id: u64) -> BoxFuture<'_, Result<bool, LogError>>;
}
