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
///
/// A replay goes through the store: asking for one marks the letter, and
/// the subscription that owns it takes marked letters when it starts and
/// when told of a new one, in whichever process runs it. A mark outlives
/// a crash or a shutdown, so a replay asked for is a replay run.
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

    /// Removes a letter, marked or not: the end of its replay. `Ok(false)`
    /// when there was none with that id.
    async fn remove(&self, id: u64) -> Result<bool, StoreError>;

    /// Marks letter `id` to be replayed, unless it is marked already.
    async fn request_replay(&self, id: u64) -> Result<ReplayRequest, StoreError>;

    /// Up to `limit` ids of `subscription`'s letters marked for replay, in
    /// id order, after `after`.
    async fn requested(
        &self,
        subscription: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError>;

    /// Removes a letter unless it is marked for replay.
    async fn discard(&self, id: u64) -> Result<Discarded, StoreError>;

    /// Whether processes other than this one use the store, so a letter's
    /// subscription may run elsewhere. Default `false`: a replay of a
    /// letter whose subscription is not running here is refused rather
    /// than marked.
    fn is_shared(&self) -> bool {
        false
    }
}

/// What [`DeadLetterStore::request_replay`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayRequest {
    /// The letter is marked; its subscription replays it.
    Requested {
        /// The letter's subscription.
        subscription: String,
    },
    /// It was marked already.
    AlreadyRequested,
    /// No letter has that id.
    NotFound,
}

/// What [`DeadLetterStore::discard`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Discarded {
    /// The letter is gone.
    Removed,
    /// It is marked for replay and stays.
    Replaying,
    /// No letter has that id.
    NotFound,
}
