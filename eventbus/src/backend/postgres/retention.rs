//! Pruning: finished events, old dead letters and old quarantined rows are
//! deleted, a slice per statement, by whichever process gets to it first.

use super::{Inner, PostgresError, PostgresLog};
use sqlx::AssertSqlSafe;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Which rows of the outbox are deleted, and how often.
///
/// An event is finished once every subscription recorded in the outbox
/// has moved past its transaction; an unfinished event is never deleted,
/// whatever its age. With no subscription recorded at all, every event is
/// finished: a subscription created later with
/// [`StartFrom::Beginning`](crate::StartFrom::Beginning) does not see what
/// was pruned before it. Each event limit prunes on its own: a finished event goes once it
/// is past either. Dead letters keep their own copy of the event, so they
/// outlive the event rows, under a limit of their own; a letter marked for
/// replay is kept until the replay takes it.
///
/// For no limit, write `Duration::MAX` or `u64::MAX`.
///
/// # Examples
///
/// Keep finished events for a day and dead letters for ninety days:
///
/// ```
/// use eventbus::backend::postgres::Retention;
/// use std::time::Duration;
///
/// let retention = Retention {
///     max_age: Duration::from_secs(24 * 3600),
///     dead_letters_max_age: Duration::from_secs(90 * 24 * 3600),
///     ..Retention::default()
/// };
/// # let _ = retention;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Finished events older than this are deleted. Default 24 hours.
    pub max_age: Duration,
    /// Finished events beyond the newest this many are deleted. Default
    /// 1,000,000.
    pub max_events: u64,
    /// Dead letters and quarantined events that failed longer ago than
    /// this are deleted. Default 30 days.
    pub dead_letters_max_age: Duration,
    /// How often each process prunes; one process at a time does the work.
    /// Default every 10 seconds; `Duration::MAX` never prunes by itself
    /// ([`PostgresLog::prune`] still does).
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(24 * 3600),
            max_events: 1_000_000,
            dead_letters_max_age: Duration::from_secs(30 * 24 * 3600),
            every: Duration::from_secs(10),
        }
    }
}

/// What one [`PostgresLog::prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pruned {
    /// Finished events.
    pub events: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Quarantined events.
    pub quarantined: u64,
    /// Whether another process was pruning, so this call did nothing.
    pub skipped: bool,
}

/// What [`PostgresLog::forget_subscription`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Forgotten {
    /// Whether the subscription had a stored position.
    pub position: bool,
    /// Retry schedules and parked events deleted.
    pub retries: u64,
    /// Quarantined events deleted.
    pub quarantined: u64,
    /// Dead letters deleted.
    pub dead_letters: u64,
}

/// Rows one statement deletes at most: each slice is a short transaction
/// of its own. A long one would hold back the horizon every subscription
/// reads below, and stall delivery while it ran.
const SLICE: i64 = 10_000;

/// Ages past this mean no limit: `now() - interval` must stay a valid
/// timestamp.
const NO_LIMIT_AGE: Duration = Duration::from_secs(1_000 * 365 * 24 * 3600);

impl PostgresLog {
    /// Prunes now, by the [`Retention`] the outbox was built with, and says
    /// how much went. Several processes may call it at once: one does the
    /// work (an advisory lock decides), the others return at once with
    /// [`Pruned::skipped`] set.
    ///
    /// # Errors
    ///
    /// [`PostgresError::Query`] when a statement fails; what was deleted
    /// before stays deleted, and nothing unfinished ever is.
    pub async fn prune(&self) -> Result<Pruned, PostgresError> {
        // On a task of its own: a caller that gives up waiting (a timeout)
        // must not cut it between taking the session lock and giving it
        // back, or the lock would stay with a pooled connection and stop
        // every process pruning.
        let inner = Arc::clone(&self.inner);
        match tokio::spawn(async move { prune(&inner).await }).await {
            Ok(pruned) => pruned,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // The runtime is shutting down: nothing was pruned.
            Err(_) => Ok(Pruned {
                skipped: true,
                ..Pruned::default()
            }),
        }
    }

    /// Deletes everything the outbox keeps for `subscription`: its
    /// position, retry schedules, parked events, quarantined events and
    /// dead letters, in one transaction, and says how much went.
    ///
    /// A subscription removed from the code keeps its position, the oldest
    /// of all, so no event after it is ever pruned. Forget it once it is
    /// gone for good. A subscription of that name started later begins
    /// afresh, from its [`StartFrom`](crate::StartFrom). Forgetting a name
    /// the outbox does not know deletes nothing and is not an error.
    ///
    /// # Errors
    ///
    /// [`PostgresError::Held`] while a process holds the subscription (its
    /// lease has not run out; stop it first), and
    /// [`PostgresError::Query`] when a statement fails. Either way nothing
    /// was deleted.
    pub async fn forget_subscription(
        &self,
        subscription: &str,
    ) -> Result<Forgotten, PostgresError> {
        let schema = &self.inner.schema;
        let mut tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(PostgresError::query("starting to forget a subscription"))?;
        // Locks the cursor rows (one per partition), so a process cannot
        // take a partition between the check and the delete.
        let held: Vec<bool> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT owner IS NOT NULL AND lease_until >= now()
             FROM {schema}.cursors WHERE subscription = $1 FOR UPDATE"
        )))
        .bind(subscription)
        .fetch_all(&mut *tx)
        .await
        .map_err(PostgresError::query("reading who holds a subscription"))?;
        if held.contains(&true) {
            return Err(PostgresError::Held(subscription.to_owned()));
        }
        let mut deleted = [0u64; 5];
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {schema}.members WHERE subscription = $1"
        )))
        .bind(subscription)
        .execute(&mut *tx)
        .await
        .map_err(PostgresError::query("forgetting a subscription"))?;
        for (i, table) in ["cursors", "retries", "parked", "quarantine", "dead_letters"]
            .iter()
            .enumerate()
        {
            deleted[i] = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {schema}.{table} WHERE subscription = $1"
            )))
            .bind(subscription)
            .execute(&mut *tx)
            .await
            .map_err(PostgresError::query("forgetting a subscription"))?
            .rows_affected();
        }
        tx.commit()
            .await
            .map_err(PostgresError::query("forgetting a subscription"))?;
        let [position, retries, parked, quarantined, dead_letters] = deleted;
        Ok(Forgotten {
            position: position > 0,
            retries: retries + parked,
            quarantined,
            dead_letters,
        })
    }
}

/// Prunes every `retention.every` while the outbox lives.
pub(super) async fn run(inner: Weak<Inner>, every: Duration) {
    if every >= NO_LIMIT_AGE {
        return;
    }
    // An interval of zero would spin (and Tokio refuses it).
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the first prune waits a full period.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match prune(&inner).await {
            Ok(pruned) if pruned.events + pruned.dead_letters + pruned.quarantined > 0 => {
                tracing::debug!(
                    schema = %inner.schema,
                    events = pruned.events,
                    dead_letters = pruned.dead_letters,
                    quarantined = pruned.quarantined,
                    "pruned the outbox",
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(
                schema = %inner.schema,
                error = %crate::failure::error_chain(&err).join(": "),
                "cannot prune the outbox; trying again later",
            ),
        }
    }
}

async fn prune(inner: &Arc<Inner>) -> Result<Pruned, PostgresError> {
    let schema = &inner.schema;
    let retention = &inner.retention;
    // A session lock, on a connection of its own for the whole prune: each
    // delete below then commits by itself.
    let mut conn = inner
        .pool
        .acquire()
        .await
        .map_err(PostgresError::query("taking a connection to prune"))?;
    let lock_key = format!("eventbus prune {schema}");
    let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(&lock_key)
        .fetch_one(&mut *conn)
        .await
        .map_err(PostgresError::query("taking the prune lock"))?;
    if !locked {
        return Ok(Pruned {
            skipped: true,
            ..Pruned::default()
        });
    }
    let pruned = prune_locked(&mut conn, schema, retention).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(&lock_key)
        .execute(&mut *conn)
        .await;
    if unlocked.is_err() {
        // The lock lives as long as the session: close it rather than
        // hand it back to the pool still holding the lock.
        conn.detach();
    }
    pruned
}

async fn prune_locked(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    retention: &Retention,
) -> Result<Pruned, PostgresError> {
    let age = |d: Duration| i64::try_from(d.min(NO_LIMIT_AGE).as_millis()).unwrap_or(i64::MAX);
    let max_events = i64::try_from(retention.max_events).unwrap_or(i64::MAX);
    let mut pruned = Pruned::default();
    // Events of transactions wholly before every cursor's, committed below
    // the horizon, and past either limit. Whole transactions: a reader
    // numbers the events of a transaction by their rank in it, and a
    // cursor inside one would see its ranks shift if part of it went. With
    // no cursor at all, nothing is waiting for any.
    let events = format!(
        "DELETE FROM {schema}.events WHERE position IN (
             SELECT e.position FROM {schema}.events e
             WHERE NOT EXISTS (
                     SELECT 1 FROM {schema}.cursors c WHERE e.tx_id >= c.tx_id)
               AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
               AND (e.appended_at < now() - $1 * interval '1 millisecond'
                    OR e.position <= (SELECT max(position) FROM {schema}.events) - $2)
             ORDER BY e.tx_id, e.position
             LIMIT $3)"
    );
    pruned.events = in_slices(
        conn,
        &events,
        &[age(retention.max_age), max_events],
        "pruning finished events",
    )
    .await?;
    let letters = format!(
        "DELETE FROM {schema}.dead_letters WHERE id IN (
             SELECT id FROM {schema}.dead_letters
             WHERE last_failed_at < now() - $1 * interval '1 millisecond'
               AND replay_requested_at IS NULL
             ORDER BY id LIMIT $2)"
    );
    let letters_age = age(retention.dead_letters_max_age);
    pruned.dead_letters =
        in_slices(conn, &letters, &[letters_age], "pruning old dead letters").await?;
    let quarantine = format!(
        "DELETE FROM {schema}.quarantine WHERE (subscription, position) IN (
             SELECT subscription, position FROM {schema}.quarantine
             WHERE quarantined_at < now() - $1 * interval '1 millisecond'
             LIMIT $2)"
    );
    pruned.quarantined = in_slices(
        conn,
        &quarantine,
        &[letters_age],
        "pruning old quarantined events",
    )
    .await?;
    Ok(pruned)
}

/// Runs `sql`, a delete of at most one slice whose last parameter is the
/// slice's size, until a slice comes back short; returns how many rows
/// went.
async fn in_slices(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    binds: &[i64],
    doing: &'static str,
) -> Result<u64, PostgresError> {
    let mut total = 0;
    loop {
        let mut query = sqlx::query(AssertSqlSafe(sql.to_owned()));
        for bind in binds {
            query = query.bind(*bind);
        }
        let gone = query
            .bind(SLICE)
            .execute(&mut *conn)
            .await
            .map_err(PostgresError::query(doing))?
            .rows_affected();
        total += gone;
        if gone < SLICE as u64 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_keep_dead_letters_longer_than_events() {
        let retention = Retention::default();
        assert!(retention.dead_letters_max_age > retention.max_age);
    }

    #[test]
    fn no_limit_ages_stay_inside_what_postgres_can_subtract() {
        // 1,000 years in milliseconds, well inside an interval's range.
        let ms = NO_LIMIT_AGE.as_millis();
        assert!(ms < i64::MAX as u128);
        assert_eq!(Duration::MAX.min(NO_LIMIT_AGE), NO_LIMIT_AGE);
    }
}
