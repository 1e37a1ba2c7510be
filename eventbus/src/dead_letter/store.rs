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

    /// Takes the replay of marked letter `id` for this process, for a
    /// store whose letters several processes may replay at once (every
    /// process reading a broker's shared subscription): only the process
    /// that gets `Ok(true)` runs it. Default `Ok(true)`: one process holds
    /// each subscription, so nothing else could run it.
    async fn claim_replay(&self, id: u64) -> Result<bool, StoreError> {
        let _ = id;
        Ok(true)
    }

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

/// A dead letter as a store keeps it: the event as its name, version and
/// JSON, and the errors as a JSON list. Used by the durable backends' stores.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "nats"))]
pub(crate) struct StoredLetter<'a> {
    pub(crate) id: u64,
    pub(crate) subscription: String,
    pub(crate) name: &'a str,
    /// As stored: a version no event has (such as a negative one) does not
    /// decode.
    pub(crate) version: i64,
    pub(crate) payload: &'a [u8],
    pub(crate) errors: String,
    pub(crate) attempts: u32,
    pub(crate) first_failed_at: chrono::DateTime<chrono::Utc>,
    pub(crate) last_failed_at: chrono::DateTime<chrono::Utc>,
    pub(crate) replaying: bool,
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "nats"))]
impl StoredLetter<'_> {
    /// The letter as the bus sees it, or `None` (logged) when its event no
    /// longer decodes, such as one written by a newer version. It stays
    /// stored.
    pub(crate) fn decode(self) -> Option<DeadLetter> {
        let decoded = u32::try_from(self.version)
            .map_err(|_| format!("the stored version {} is not a version", self.version))
            .and_then(|version| {
                crate::registry::registry()
                    .decode(self.name, version, self.payload)
                    .map_err(|err| err.to_string())
            });
        let event = match decoded {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(
                    id = self.id,
                    event = %self.name,
                    %error,
                    "a stored dead letter no longer decodes; it stays in the dead_letters table",
                );
                return None;
            }
        };
        Some(DeadLetter {
            id: self.id,
            subscription: self.subscription,
            event,
            errors: serde_json::from_str(&self.errors).unwrap_or_else(|_| vec![self.errors]),
            attempts: self.attempts,
            first_failed_at: self.first_failed_at,
            last_failed_at: self.last_failed_at,
            replaying: self.replaying,
        })
    }
}
