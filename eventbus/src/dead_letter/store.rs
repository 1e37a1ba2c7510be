//! Where a bus keeps its dead letters; implemented in memory here and by
//! durable logs.

use super::{DeadLetter, DeadLetterPage, DeadLetterQuery};
use crate::backend::StoreError;
use async_trait::async_trait;
use std::fmt::Debug;

/// Where a bus keeps its dead letters: in memory by default, in the log's
/// own storage for a durable [`Backend`](crate::Backend), or one given to
/// [`BusBuilder::dead_letter_store`](crate::BusBuilder::dead_letter_store).
///
/// The bus writes each letter here before the subscription releases the
/// event's position, and removes it only once a replay of it finished, so
/// a dead letter is never lost to a crash. Reads are paged: a store never
/// has to hold every letter in memory.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + Debug + 'static {
    /// Stores a new letter and returns the id the store gave it. `letter.id`
    /// is ignored: ids come from the store, increase, and are never given
    /// out twice, even after the letter that had one was removed. An insert
    /// never replaces a stored letter.
    async fn insert(&self, letter: &DeadLetter) -> Result<u64, StoreError>;

    /// One letter, if it is stored and decodes.
    async fn get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError>;

    /// Up to `query.limit` letters in id order, after `query.after`.
    async fn page(&self, query: &DeadLetterQuery) -> Result<DeadLetterPage, StoreError>;

    /// How many letters are stored, of one subscription or of all.
    async fn count(&self, subscription: Option<&str>) -> Result<u64, StoreError>;

    /// Removes a letter; `Ok(false)` when there was none with that id.
    async fn remove(&self, id: u64) -> Result<bool, StoreError>;
}
