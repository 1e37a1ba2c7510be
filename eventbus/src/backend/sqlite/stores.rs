//! The retry schedules and dead letters of a [`SqliteLog`](super::SqliteLog),
//! in its `retries` and `dead_letters` tables: written through the writer,
//! read on the log's reader connection a page at a time.

use super::writer::{DeadLetterRow, Request};
use super::{Shared, SqliteError};
use crate::backend::{DeadLetterStore, Position, RetryState, RetryStore, StoreError};
use crate::dead_letter::store::StoredLetter;
use crate::dead_letter::{DeadLetter, DeadLetterPage, DeadLetterQuery, Discarded, ReplayRequest};
use async_trait::async_trait;
use rusqlite::OptionalExtension;
use std::fmt;
use std::sync::Arc;

/// The retry schedules and dead letters of a [`SqliteLog`], in its
/// `retries` and `dead_letters` tables.
pub(crate) struct Stores {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stores")
            .field("path", &self.shared.path)
            .finish()
    }
}

#[async_trait]
impl RetryStore for Stores {
    async fn load(
        &self,
        subscription: &str,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<(Position, RetryState)>, StoreError> {
        let subscription = subscription.to_owned();
        let after = after.map_or(-1, |a| a.min(i64::MAX as u64) as i64);
        let limit = limit.clamp(1, i64::MAX as usize) as i64;
        Ok(self
            .shared
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT position, attempts, next_attempt_at, first_failed_at
                     FROM retries WHERE subscription = ?1 AND position > ?2
                     ORDER BY position LIMIT ?3",
                )?;
                stmt.query_map(rusqlite::params![subscription, after, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as Position,
                        RetryState {
                            attempts: r.get(1)?,
                            next_attempt_at: millis_to_time(r.get(2)?),
                            first_failed_at: millis_to_time(r.get(3)?),
                        },
                    ))
                })?
                .collect()
            })
            .await?)
    }

    async fn save(
        &self,
        subscription: &str,
        position: Position,
        state: RetryState,
    ) -> Result<(), StoreError> {
        self.shared
            .request(|reply| Request::SaveRetry {
                subscription: subscription.to_owned(),
                position,
                attempts: state.attempts,
                next_attempt_at: state.next_attempt_at.timestamp_millis(),
                first_failed_at: state.first_failed_at.timestamp_millis(),
                reply,
            })
            .await?;
        Ok(())
    }

    async fn clear(&self, subscription: &str, position: Position) -> Result<(), StoreError> {
        self.shared
            .request(|reply| Request::ClearRetry {
                subscription: subscription.to_owned(),
                position,
                reply,
            })
            .await?;
        Ok(())
    }
}

pub(crate) fn millis_to_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

const LETTER_COLUMNS: &str = "id, subscription, name, version, payload, errors, attempts, first_failed_at, last_failed_at, replay_requested_at";

/// Reads a letter loosely: a column of an unexpected type (text where
/// bytes were written, a NULL) makes the letter fail to decode, and so be
/// skipped and logged, instead of failing the whole page.
fn letter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetterRow> {
    use rusqlite::types::ValueRef;
    let bytes = |i: usize| -> rusqlite::Result<Vec<u8>> {
        Ok(match r.get_ref(i)? {
            ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
            _ => Vec::new(),
        })
    };
    let text = |i: usize| -> rusqlite::Result<String> {
        Ok(String::from_utf8_lossy(&bytes(i)?).into_owned())
    };
    let int = |i: usize| -> rusqlite::Result<i64> {
        Ok(match r.get_ref(i)? {
            ValueRef::Integer(v) => v,
            _ => 0,
        })
    };
    Ok(DeadLetterRow {
        id: int(0)? as u64,
        subscription: text(1)?,
        name: text(2)?,
        version: u32::try_from(int(3)?).unwrap_or(0),
        payload: bytes(4)?,
        errors: text(5)?,
        attempts: u32::try_from(int(6)?).unwrap_or(0),
        first_failed_at: int(7)?,
        last_failed_at: int(8)?,
        replaying: !matches!(r.get_ref(9)?, ValueRef::Null),
    })
}

/// A stored letter as the bus sees it, or `None` (logged) when its event no
/// longer decodes. It stays stored.
fn decode_letter(row: DeadLetterRow) -> Option<DeadLetter> {
    StoredLetter {
        id: row.id,
        subscription: row.subscription,
        name: &row.name,
        version: i64::from(row.version),
        payload: &row.payload,
        errors: row.errors,
        attempts: row.attempts,
        first_failed_at: millis_to_time(row.first_failed_at),
        last_failed_at: millis_to_time(row.last_failed_at),
        replaying: row.replaying,
    }
    .decode()
}

#[async_trait]
impl DeadLetterStore for Stores {
    async fn insert(&self, letter: &DeadLetter) -> Result<u64, StoreError> {
        let payload = letter
            .event
            .to_json_bytes()
            .map_err(|e| SqliteError::encode(&self.shared.path, e))?;
        let row = DeadLetterRow {
            id: 0,
            subscription: letter.subscription.clone(),
            name: letter.event.name().to_owned(),
            version: letter.event.version(),
            payload,
            errors: serde_json::to_string(&letter.errors).unwrap_or_default(),
            attempts: letter.attempts,
            first_failed_at: letter.first_failed_at.timestamp_millis(),
            last_failed_at: letter.last_failed_at.timestamp_millis(),
            replaying: false,
        };
        Ok(self
            .shared
            .request(|reply| Request::InsertDeadLetter { row, reply })
            .await?)
    }

    async fn get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        let row = self
            .shared
            .read(move |conn| {
                conn.query_row(
                    &format!("SELECT {LETTER_COLUMNS} FROM dead_letters WHERE id = ?1"),
                    [id as i64],
                    letter_row,
                )
                .optional()
            })
            .await?;
        Ok(row.and_then(decode_letter))
    }

    async fn page(&self, query: &DeadLetterQuery) -> Result<DeadLetterPage, StoreError> {
        let after = query.after.map_or(0, |a| a.min(i64::MAX as u64) as i64);
        let limit = query.limit.clamp(1, i64::MAX as usize) as i64;
        let subscription = query.subscription.clone();
        let rows = self
            .shared
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {LETTER_COLUMNS} FROM dead_letters
                     WHERE id > ?1 AND (?2 IS NULL OR subscription = ?2)
                     ORDER BY id LIMIT ?3"
                ))?;
                stmt.query_map(rusqlite::params![after, subscription, limit], letter_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        let next = rows
            .last()
            .map(|r| r.id)
            .filter(|_| rows.len() as i64 >= limit);
        let letters = rows.into_iter().filter_map(decode_letter).collect();
        Ok(DeadLetterPage::new(letters, next))
    }

    async fn count(&self, subscription: Option<&str>) -> Result<u64, StoreError> {
        let subscription = subscription.map(str::to_owned);
        Ok(self
            .shared
            .read(move |conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM dead_letters WHERE ?1 IS NULL OR subscription = ?1",
                    [subscription],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await? as u64)
    }

    async fn remove(&self, id: u64) -> Result<bool, StoreError> {
        let removed = self
            .shared
            .request(|reply| Request::RemoveDeadLetter { id, reply })
            .await?;
        Ok(removed > 0)
    }

    async fn request_replay(&self, id: u64) -> Result<ReplayRequest, StoreError> {
        let marked = self
            .shared
            .request(|reply| Request::MarkReplay { id, reply })
            .await?;
        // Read after the commit: the row as the mark left it.
        let row = self.subscription_of(id).await?;
        Ok(match (marked, row) {
            (_, None) => ReplayRequest::NotFound,
            (0, Some(_)) => ReplayRequest::AlreadyRequested,
            (_, Some(subscription)) => ReplayRequest::Requested { subscription },
        })
    }

    async fn requested(
        &self,
        subscription: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let subscription = subscription.to_owned();
        let after = after.map_or(0, |a| a.min(i64::MAX as u64) as i64);
        let limit = limit.clamp(1, i64::MAX as usize) as i64;
        Ok(self
            .shared
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id FROM dead_letters
                     WHERE subscription = ?1 AND id > ?2 AND replay_requested_at IS NOT NULL
                     ORDER BY id LIMIT ?3",
                )?;
                stmt.query_map(rusqlite::params![subscription, after, limit], |r| {
                    Ok(r.get::<_, i64>(0)? as u64)
                })?
                .collect()
            })
            .await?)
    }

    async fn discard(&self, id: u64) -> Result<Discarded, StoreError> {
        let removed = self
            .shared
            .request(|reply| Request::DiscardDeadLetter { id, reply })
            .await?;
        if removed > 0 {
            return Ok(Discarded::Removed);
        }
        Ok(match self.subscription_of(id).await? {
            Some(_) => Discarded::Replaying,
            None => Discarded::NotFound,
        })
    }
}

impl Stores {
    /// The subscription of letter `id`, if it is stored.
    async fn subscription_of(&self, id: u64) -> Result<Option<String>, SqliteError> {
        self.shared
            .read(move |conn| {
                conn.query_row(
                    "SELECT subscription FROM dead_letters WHERE id = ?1",
                    [id as i64],
                    |r| r.get(0),
                )
                .optional()
            })
            .await
    }
}
