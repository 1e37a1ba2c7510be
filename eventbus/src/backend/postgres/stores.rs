//! The retry schedules, parked events and dead letters of a
//! [`PostgresLog`](super::PostgresLog), in `{schema}.retries`,
//! `{schema}.parked` and `{schema}.dead_letters`. Dead letters: any process lists them and marks them for
//! replay; the process holding the letter's subscription runs the replay.

// Every dynamic statement only puts in the schema name, which is
// checked to be a plain identifier when the outbox connects.
use super::Inner;
use super::error::PostgresError;
use crate::backend::{DeadLetterStore, Due, Parked, Position, RetryState, RetryStore, StoreError};
use crate::dead_letter::store::StoredLetter;
use crate::dead_letter::{DeadLetter, DeadLetterPage, DeadLetterQuery, Discarded, ReplayRequest};
use crate::event::AnyEvent;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use std::fmt;
use std::sync::Arc;

pub(crate) struct PgStores {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for PgStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStores")
            .field("schema", &self.inner.schema)
            .finish()
    }
}

/// A stored letter's columns, as read.
type LetterRow = (
    i64,
    String,
    String,
    i32,
    String,
    String,
    i32,
    DateTime<Utc>,
    DateTime<Utc>,
    bool,
);

const LETTER_COLUMNS: &str = "id, subscription, name, version, payload::text, errors::text, attempts, first_failed_at, last_failed_at, replay_requested_at IS NOT NULL";

/// A stored letter as the bus sees it, or `None` (logged) when its event no
/// longer decodes. It stays stored.
fn decode_letter(row: LetterRow) -> Option<DeadLetter> {
    let (id, subscription, name, version, payload, errors, attempts, first, last, replaying) = row;
    StoredLetter {
        id: id as u64,
        subscription,
        name: &name,
        version: i64::from(version),
        payload: payload.as_bytes(),
        errors,
        attempts: attempts.max(0) as u32,
        first_failed_at: first,
        last_failed_at: last,
        replaying,
    }
    .decode()
}

fn to_i64(id: u64) -> i64 {
    id.min(i64::MAX as u64) as i64
}

#[async_trait]
impl DeadLetterStore for PgStores {
    async fn insert(&self, letter: &DeadLetter) -> Result<u64, StoreError> {
        let payload = letter
            .event
            .to_json_bytes()
            .map_err(PostgresError::Encode)?;
        let payload = String::from_utf8(payload).expect("serde_json writes UTF-8");
        let errors = serde_json::to_string(&letter.errors).map_err(PostgresError::Encode)?;
        let id: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO {}.dead_letters
             (subscription, name, version, payload, errors, attempts, first_failed_at, last_failed_at)
             VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8) RETURNING id",
            self.inner.schema
        )))
        .bind(&letter.subscription)
        .bind(letter.event.name())
        .bind(letter.event.version() as i32)
        .bind(payload)
        .bind(errors)
        .bind(letter.attempts.min(i32::MAX as u32) as i32)
        .bind(letter.first_failed_at)
        .bind(letter.last_failed_at)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(PostgresError::query("storing a dead letter"))?;
        Ok(id as u64)
    }

    async fn get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        let row: Option<LetterRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {LETTER_COLUMNS} FROM {}.dead_letters WHERE id = $1",
            self.inner.schema
        )))
        .bind(to_i64(id))
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(PostgresError::query("reading a dead letter"))?;
        Ok(row.and_then(decode_letter))
    }

    async fn page(&self, query: &DeadLetterQuery) -> Result<DeadLetterPage, StoreError> {
        let limit = query.limit.clamp(1, i64::MAX as usize) as i64;
        let rows: Vec<LetterRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {LETTER_COLUMNS} FROM {}.dead_letters
             WHERE id > $1 AND ($2::text IS NULL OR subscription = $2)
             ORDER BY id LIMIT $3",
            self.inner.schema
        )))
        .bind(query.after.map_or(0, to_i64))
        .bind(query.subscription.as_deref())
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(PostgresError::query("listing dead letters"))?;
        let next = rows
            .last()
            .map(|r| r.0 as u64)
            .filter(|_| rows.len() as i64 >= limit);
        let letters = rows.into_iter().filter_map(decode_letter).collect();
        Ok(DeadLetterPage::new(letters, next))
    }

    async fn count(&self, subscription: Option<&str>) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.dead_letters WHERE $1::text IS NULL OR subscription = $1",
            self.inner.schema
        )))
        .bind(subscription)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(PostgresError::query("counting dead letters"))?;
        Ok(count as u64)
    }

    async fn remove(&self, id: u64) -> Result<bool, StoreError> {
        let removed = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {}.dead_letters WHERE id = $1",
            self.inner.schema
        )))
        .bind(to_i64(id))
        .execute(&self.inner.pool)
        .await
        .map_err(PostgresError::query("removing a dead letter"))?;
        Ok(removed.rows_affected() > 0)
    }

    async fn request_replay(&self, id: u64) -> Result<ReplayRequest, StoreError> {
        // One statement: the mark, and the letter's subscription whether or
        // not this call made the mark.
        let row: Option<(String, bool)> = sqlx::query_as(AssertSqlSafe(format!(
            "WITH marked AS (
                 UPDATE {schema}.dead_letters SET replay_requested_at = now()
                 WHERE id = $1 AND replay_requested_at IS NULL RETURNING id
             )
             SELECT subscription, EXISTS (SELECT 1 FROM marked) FROM {schema}.dead_letters WHERE id = $1",
            schema = self.inner.schema
        )))
        .bind(to_i64(id))
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(PostgresError::query("marking a dead letter for replay"))?;
        Ok(match row {
            None => ReplayRequest::NotFound,
            Some((subscription, true)) => ReplayRequest::Requested { subscription },
            Some((_, false)) => ReplayRequest::AlreadyRequested,
        })
    }

    async fn requested(
        &self,
        subscription: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT id FROM {}.dead_letters
             WHERE subscription = $1 AND id > $2 AND replay_requested_at IS NOT NULL
             ORDER BY id LIMIT $3",
            self.inner.schema
        )))
        .bind(subscription)
        .bind(after.map_or(0, to_i64))
        .bind(limit.clamp(1, i64::MAX as usize) as i64)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(PostgresError::query(
            "listing dead letters marked for replay",
        ))?;
        Ok(ids.into_iter().map(|id| id as u64).collect())
    }

    async fn discard(&self, id: u64) -> Result<Discarded, StoreError> {
        let row: Option<(bool,)> = sqlx::query_as(AssertSqlSafe(format!(
            "WITH gone AS (
                 DELETE FROM {schema}.dead_letters
                 WHERE id = $1 AND replay_requested_at IS NULL RETURNING id
             )
             SELECT EXISTS (SELECT 1 FROM gone)
             FROM (SELECT 1) AS one
             WHERE EXISTS (SELECT 1 FROM gone)
                OR EXISTS (SELECT 1 FROM {schema}.dead_letters WHERE id = $1)",
            schema = self.inner.schema
        )))
        .bind(to_i64(id))
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(PostgresError::query("discarding a dead letter"))?;
        Ok(match row {
            None => Discarded::NotFound,
            Some((true,)) => Discarded::Removed,
            Some((false,)) => Discarded::Replaying,
        })
    }

    fn is_shared(&self) -> bool {
        true
    }
}

#[async_trait]
impl RetryStore for PgStores {
    async fn load(
        &self,
        subscription: &str,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<(Position, RetryState)>, StoreError> {
        let rows: Vec<(i64, i32, DateTime<Utc>, DateTime<Utc>)> =
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT position, attempts, next_attempt_at, first_failed_at FROM {}.retries
             WHERE subscription = $1 AND position > $2 ORDER BY position LIMIT $3",
                self.inner.schema
            )))
            .bind(subscription)
            .bind(after.map_or(-1, to_i64))
            .bind(limit.clamp(1, i64::MAX as usize) as i64)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(PostgresError::query("loading retry schedules"))?;
        Ok(rows
            .into_iter()
            .map(|(position, attempts, next_attempt_at, first_failed_at)| {
                (
                    position as Position,
                    RetryState {
                        attempts: attempts.max(0) as u32,
                        next_attempt_at,
                        first_failed_at,
                    },
                )
            })
            .collect())
    }

    async fn save(
        &self,
        subscription: &str,
        position: Position,
        state: RetryState,
    ) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {}.retries (subscription, position, attempts, next_attempt_at, first_failed_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (subscription, position) DO UPDATE
             SET attempts = EXCLUDED.attempts, next_attempt_at = EXCLUDED.next_attempt_at",
            self.inner.schema
        )))
        .bind(subscription)
        .bind(to_i64(position))
        .bind(state.attempts.min(i32::MAX as u32) as i32)
        .bind(state.next_attempt_at)
        .bind(state.first_failed_at)
        .execute(&self.inner.pool)
        .await
        .map_err(PostgresError::query("saving a retry schedule"))?;
        Ok(())
    }

    async fn clear(&self, subscription: &str, position: Position) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {}.retries WHERE subscription = $1 AND position = $2",
            self.inner.schema
        )))
        .bind(subscription)
        .bind(to_i64(position))
        .execute(&self.inner.pool)
        .await
        .map_err(PostgresError::query("clearing a retry schedule"))?;
        Ok(())
    }

    fn parks(&self) -> bool {
        self.inner.park_retries
    }

    async fn park(
        &self,
        subscription: &str,
        event: &AnyEvent,
        state: RetryState,
        errors: &[String],
    ) -> Result<(), StoreError> {
        let payload = event.to_json_bytes().map_err(PostgresError::Encode)?;
        let payload = String::from_utf8(payload).expect("serde_json writes UTF-8");
        let errors = serde_json::to_string(errors).map_err(PostgresError::Encode)?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {}.parked
             (subscription, name, version, payload, errors, attempts, first_failed_at, due_at)
             VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8)",
            self.inner.schema
        )))
        .bind(subscription)
        .bind(event.name())
        .bind(event.version() as i32)
        .bind(payload)
        .bind(errors)
        .bind(state.attempts.min(i32::MAX as u32) as i32)
        .bind(state.first_failed_at)
        .bind(state.next_attempt_at)
        .execute(&self.inner.pool)
        .await
        .map_err(PostgresError::query("parking a failed event"))?;
        Ok(())
    }

    async fn due(
        &self,
        subscription: &str,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Due, StoreError> {
        let schema = &self.inner.schema;
        let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        // Claimed in one statement; SKIP LOCKED lets processes claiming at
        // once each take others.
        let rows: Vec<ParkedRow> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE {schema}.parked SET claimed_until = now() + $3, claim = claim + 1
             WHERE id IN (
                 SELECT id FROM {schema}.parked
                 WHERE subscription = $1 AND due_at <= now()
                   AND (claimed_until IS NULL OR claimed_until < now())
                 ORDER BY due_at LIMIT $2
                 FOR UPDATE SKIP LOCKED
             )
             RETURNING id, name, version, payload::text, attempts, first_failed_at, due_at, claim"
        )))
        .bind(subscription)
        .bind(limit.clamp(1, i64::MAX as usize) as i64)
        .bind(lease)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(PostgresError::query("claiming parked events"))?;
        let next_at: Option<DateTime<Utc>> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT min(GREATEST(due_at, COALESCE(claimed_until, due_at))) FROM {schema}.parked
             WHERE subscription = $1 AND NOT (id = ANY($2))"
        )))
        .bind(subscription)
        .bind(rows.iter().map(|r| r.0).collect::<Vec<i64>>())
        .fetch_one(&self.inner.pool)
        .await
        .map_err(PostgresError::query("looking for parked events"))?;
        let mut parked = Vec::with_capacity(rows.len());
        for (id, name, version, payload, attempts, first_failed_at, due_at, claim) in rows {
            let decoded = u32::try_from(version)
                .map_err(|_| format!("the stored version {version} is not a version"))
                .and_then(|version| {
                    crate::registry::registry()
                        .decode(&name, version, payload.as_bytes())
                        .map_err(|err| err.to_string())
                });
            match decoded {
                Ok(event) => parked.push(Parked::new(
                    id as u64,
                    event,
                    RetryState {
                        attempts: attempts.max(0) as u32,
                        next_attempt_at: due_at,
                        first_failed_at,
                    },
                    claim as u64,
                )),
                Err(error) => {
                    // Nothing here can run it: it becomes a dead letter,
                    // kept as it is (listings skip letters that do not
                    // decode, and a build that decodes it can replay it).
                    tracing::error!(
                        id,
                        event = %name,
                        %error,
                        "a parked event no longer decodes; it is moved to the dead_letters table",
                    );
                    let moved = sqlx::query(AssertSqlSafe(format!(
                        "WITH gone AS (DELETE FROM {schema}.parked WHERE id = $1 RETURNING *)
                         INSERT INTO {schema}.dead_letters
                         (subscription, name, version, payload, errors, attempts, first_failed_at, last_failed_at)
                         SELECT subscription, name, version, payload,
                                errors || jsonb_build_array('the parked event no longer decodes: ' || $2),
                                attempts, first_failed_at, now()
                         FROM gone"
                    )))
                    .bind(id)
                    .bind(&error)
                    .execute(&self.inner.pool)
                    .await;
                    // Not `?`: the rows claimed with it are handed out
                    // still. This one stays claimed, and is tried again
                    // once its claim runs out.
                    if let Err(err) = moved {
                        tracing::error!(
                            id,
                            error = %crate::failure::error_chain(&err).join(": "),
                            "could not move an undecodable parked event to the dead letters",
                        );
                    }
                }
            }
        }
        Ok(Due::new(parked, next_at))
    }

    async fn repark(
        &self,
        id: u64,
        claim: u64,
        state: RetryState,
        errors: &[String],
    ) -> Result<bool, StoreError> {
        let errors = serde_json::to_string(errors).map_err(PostgresError::Encode)?;
        let changed = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {}.parked
             SET attempts = $3, due_at = $4, errors = $5::jsonb, claimed_until = NULL
             WHERE id = $1 AND claim = $2",
            self.inner.schema
        )))
        .bind(to_i64(id))
        .bind(to_i64(claim))
        .bind(state.attempts.min(i32::MAX as u32) as i32)
        .bind(state.next_attempt_at)
        .bind(errors)
        .execute(&self.inner.pool)
        .await
        .map_err(PostgresError::query("parking a failed event again"))?;
        Ok(changed.rows_affected() > 0)
    }

    async fn unpark(&self, id: u64, claim: u64) -> Result<bool, StoreError> {
        let gone = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {}.parked WHERE id = $1 AND claim = $2",
            self.inner.schema
        )))
        .bind(to_i64(id))
        .bind(to_i64(claim))
        .execute(&self.inner.pool)
        .await
        .map_err(PostgresError::query("removing a parked event"))?;
        Ok(gone.rows_affected() > 0)
    }

    async fn release(&self, id: u64, claim: u64) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {}.parked SET claimed_until = NULL WHERE id = $1 AND claim = $2",
            self.inner.schema
        )))
        .bind(to_i64(id))
        .bind(to_i64(claim))
        .execute(&self.inner.pool)
        .await
        .map_err(PostgresError::query("giving a parked event's claim back"))?;
        Ok(())
    }

    async fn parked(&self, subscription: &str) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.parked WHERE subscription = $1",
            self.inner.schema
        )))
        .bind(subscription)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(PostgresError::query("counting parked events"))?;
        Ok(count as u64)
    }
}

/// A parked event's columns, as claimed.
type ParkedRow = (
    i64,
    String,
    i32,
    String,
    i32,
    DateTime<Utc>,
    DateTime<Utc>,
    i64,
);
