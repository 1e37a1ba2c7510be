//! The retry schedules and dead letters of a [`SqliteLog`](super::SqliteLog),
//! in its `retries` and `dead_letters` tables: written through the writer,
//! read on the log's reader connection a page at a time.

use super::Shared;
use super::writer::{DeadLetterRow, Request};
use crate::dead_letter::{DeadLetter, DeadLetterPage, DeadLetterQuery};
use crate::event::AnyEvent;
use crate::log::{DeadLetterStore, LogError, Position, RetryState, RetryStore};
use futures_util::future::BoxFuture;
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

impl RetryStore for Stores {
    fn load(
        &self,
        subscription: &str,
    ) -> BoxFuture<'_, Result<Vec<(Position, RetryState)>, LogError>> {
        let subscription = subscription.to_owned();
        Box::pin(async move {
            self.shared
                .read(move |conn| {
                    let mut stmt = conn.prepare_cached(
                        "SELECT position, attempts, next_attempt_at, first_failed_at
                         FROM retries WHERE subscription = ?1",
                    )?;
                    stmt.query_map([&subscription], |r| {
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
                .await
        })
    }

    fn save(
        &self,
        subscription: &str,
        position: Position,
        state: RetryState,
    ) -> BoxFuture<'_, Result<(), LogError>> {
        let subscription = subscription.to_owned();
        Box::pin(async move {
            self.shared
                .request(|reply| Request::SaveRetry {
                    subscription,
                    position,
                    attempts: state.attempts,
                    next_attempt_at: state.next_attempt_at.timestamp_millis(),
                    first_failed_at: state.first_failed_at.timestamp_millis(),
                    reply,
                })
                .await
                .map(drop)
        })
    }

    fn clear(&self, subscription: &str, position: Position) -> BoxFuture<'_, Result<(), LogError>> {
        let subscription = subscription.to_owned();
        Box::pin(async move {
            self.shared
                .request(|reply| Request::ClearRetry {
                    subscription,
                    position,
                    reply,
                })
                .await
                .map(drop)
        })
    }
}

pub(crate) fn millis_to_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

const LETTER_COLUMNS: &str =
    "id, subscription, name, version, payload, errors, attempts, first_failed_at, last_failed_at";

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
    })
}

/// A stored letter as the bus sees it, or `None` (logged) when its event no
/// longer decodes, such as one written by a newer version. It stays stored.
fn decode_letter(row: DeadLetterRow) -> Option<DeadLetter> {
    match AnyEvent::from_json_bytes(&row.name, row.version, &row.payload) {
        Ok(event) => Some(DeadLetter {
            id: row.id,
            subscription: row.subscription,
            event,
            errors: serde_json::from_str(&row.errors).unwrap_or_else(|_| vec![row.errors]),
            attempts: row.attempts,
            first_failed_at: millis_to_time(row.first_failed_at),
            last_failed_at: millis_to_time(row.last_failed_at),
        }),
        Err(err) => {
            tracing::error!(
                id = row.id,
                event = %row.name,
                error = %err,
                "a stored dead letter no longer decodes; it stays in the dead_letters table",
            );
            None
        }
    }
}

impl DeadLetterStore for Stores {
    fn insert<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<u64, LogError>> {
        let row = letter.event.to_json_bytes().map(|payload| DeadLetterRow {
            id: 0,
            subscription: letter.subscription.clone(),
            name: letter.event.name().to_owned(),
            version: letter.event.version(),
            payload,
            errors: serde_json::to_string(&letter.errors).unwrap_or_default(),
            attempts: letter.attempts,
            first_failed_at: letter.first_failed_at.timestamp_millis(),
            last_failed_at: letter.last_failed_at.timestamp_millis(),
        });
        Box::pin(async move {
            let row = row.map_err(|e| LogError::Backend(Box::new(e)))?;
            self.shared
                .request(|reply| Request::InsertDeadLetter { row, reply })
                .await
        })
    }

    fn get(&self, id: u64) -> BoxFuture<'_, Result<Option<DeadLetter>, LogError>> {
        Box::pin(async move {
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
        })
    }

    fn page<'a>(
        &'a self,
        query: &'a DeadLetterQuery,
    ) -> BoxFuture<'a, Result<DeadLetterPage, LogError>> {
        let after = query.after.map_or(0, |a| a.min(i64::MAX as u64) as i64);
        let limit = query.limit.clamp(1, i64::MAX as usize) as i64;
        let subscription = query.subscription.clone();
        Box::pin(async move {
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
        })
    }

    fn count<'a>(&'a self, subscription: Option<&'a str>) -> BoxFuture<'a, Result<u64, LogError>> {
        let subscription = subscription.map(str::to_owned);
        Box::pin(async move {
            self.shared
                .read(move |conn| {
                    conn.query_row(
                        "SELECT COUNT(*) FROM dead_letters WHERE ?1 IS NULL OR subscription = ?1",
                        [subscription],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .await
                .map(|n| n as u64)
        })
    }

    fn remove(&self, id: u64) -> BoxFuture<'_, Result<bool, LogError>> {
        Box::pin(async move {
            self.shared
                .request(|reply| Request::RemoveDeadLetter { id, reply })
                .await
                .map(|removed| removed > 0)
        })
    }
}
