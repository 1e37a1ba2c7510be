//! A PostgreSQL outbox: read with the tool's own queries, written through
//! [`PostgresLog`] itself.
//!
//! Several processes share an outbox by design: each holds partitions of a
//! subscription by a lease in `cursors` and shows it is alive in
//! `members`. Its dead-letter store is shared too: a replay marked here is
//! found by the process holding the subscription within about a second,
//! and pruning takes an advisory lock so processes never prune at once.
//! So replays, discards and pruning are safe while services run.

use crate::error::{CliError, Result};
use crate::model::{
    EventRow, LetterFilter, LetterRow, Outcome, PruneReport, QuarantineRow, SubscriptionRow,
    payload_value,
};
use crate::output::Progress;
use chrono::{DateTime, Utc};
use eventbus::backend::postgres::Retention;
use eventbus::dead_letter::{Discarded, ReplayRequest};
use eventbus::{Backend, PostgresLog};
use serde_json::Value;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};
use std::time::Duration;

/// The outbox layout this tool reads: the library's current one.
const LAYOUT: i32 = 3;
/// How long the tool waits for the server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An open PostgreSQL outbox.
#[derive(Debug)]
pub(crate) struct Postgres {
    pool: PgPool,
    schema: String,
    url: String,
}

fn failed(context: &str) -> impl FnOnce(sqlx::Error) -> CliError + '_ {
    move |e| CliError::db(context)(Box::new(e))
}

/// `url` without its password, to show in messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The query may carry `password=`: it is left out whole.
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    // The host follows the last `@`: a password may hold an unencoded one.
    match rest.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}"),
            None => format!("{scheme}://{user}@{host}"),
        },
        None => format!("{scheme}://{rest}"),
    }
}

impl Postgres {
    /// Connects to `url` and checks that `schema` holds an outbox this
    /// tool reads, creating nothing.
    pub(crate) async fn open(url: &str, schema: &str) -> Result<Postgres> {
        let valid = schema.len() <= 48
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(CliError::Usage(format!(
                "`--schema {schema}` is not a schema an outbox can have: use lowercase letters, digits and `_`, starting with a letter or `_`"
            )));
        }
        let shown = redact(url);
        let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| {
            CliError::Usage(format!("`{shown}` is not a PostgreSQL URL: {e}"))
        })?;
        let unreachable = |reason: String| CliError::Unreachable {
            url: shown.clone(),
            reason,
        };
        // One connection first, so the server's own reason (refused, no
        // such database, bad password) is what the operator sees, rather
        // than the pool's timeout.
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let migrations: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(format!("{schema}.migrations"))
            .fetch_one(&pool)
            .await
            .map_err(failed("looking for the outbox"))?;
        if migrations.is_none() {
            return Err(CliError::NoOutbox {
                schema: schema.to_owned(),
                url: shown,
            });
        }
        let layout: Option<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT max(version) FROM {schema}.migrations"
        )))
        .fetch_one(&pool)
        .await
        .map_err(failed("reading the outbox's layout"))?;
        if layout != Some(LAYOUT) {
            return Err(CliError::Version {
                path: format!("schema `{schema}`"),
                found: layout.unwrap_or(0).into(),
                supported: LAYOUT.into(),
            });
        }
        Ok(Postgres {
            pool,
            schema: schema.to_owned(),
            url: shown,
        })
    }

    /// The outbox through the library, for writing. It runs no background
    /// pruning of its own.
    async fn log(&self, retention: Retention) -> Result<PostgresLog> {
        PostgresLog::builder()
            .pool(self.pool.clone())
            .schema(&self.schema)
            .retention(retention)
            .connect()
            .await
            .map_err(|e| CliError::db(format!("opening the outbox at {}", self.url))(Box::new(e)))
    }

    pub(crate) async fn subscriptions(&self) -> Result<Vec<SubscriptionRow>> {
        let s = &self.schema;
        // Lag counts the events past the cursor in its partition, by the
        // hash the readers partition with.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "WITH n AS (SELECT subscription, count(*)::int AS partitions FROM {s}.cursors GROUP BY subscription)
             SELECT c.subscription, c.partition, n.partitions, c.position,
                    (SELECT coalesce(max(position), 0) + 1 FROM {s}.events) AS head,
                    (SELECT count(*) FROM {s}.events e
                      WHERE (e.tx_id, e.position) > (c.tx_id, c.position)
                        AND mod(mod(e.key_hash, n.partitions) + n.partitions, n.partitions) = c.partition
                        AND (c.start_snapshot IS NULL OR NOT pg_visible_in_snapshot(e.tx_id, c.start_snapshot))) AS lag,
                    CASE WHEN c.lease_until > now() THEN c.owner::text END AS holder,
                    CASE WHEN c.lease_until > now() THEN c.lease_until END AS lease_until,
                    (SELECT count(*) FROM {s}.members m WHERE m.subscription = c.subscription AND m.seen_until > now()) AS members,
                    (SELECT count(*) FROM {s}.parked p WHERE p.subscription = c.subscription) AS parked,
                    (SELECT count(*) FROM {s}.dead_letters d WHERE d.subscription = c.subscription) AS dead_letters,
                    (SELECT count(*) FROM {s}.quarantine q WHERE q.subscription = c.subscription) AS quarantined
             FROM {s}.cursors c JOIN n USING (subscription)
             ORDER BY c.subscription, c.partition"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(failed("reading the subscriptions"))?;
        rows.iter()
            .map(|r| {
                Ok(SubscriptionRow {
                    name: r.try_get("subscription")?,
                    partition: (r.try_get::<i32, _>("partitions")? > 1)
                        .then(|| r.try_get("partition"))
                        .transpose()?,
                    // A subscription started from now has position -1
                    // until it handles its first event.
                    position: u64::try_from(r.try_get::<i64, _>("position")?).unwrap_or(0),
                    head: r.try_get::<i64, _>("head")? as u64,
                    lag: r.try_get::<i64, _>("lag")? as u64,
                    holder: r.try_get("holder")?,
                    lease_until: r.try_get("lease_until")?,
                    members: Some(r.try_get::<i64, _>("members")? as u64),
                    parked: Some(r.try_get::<i64, _>("parked")? as u64),
                    dead_letters: r.try_get::<i64, _>("dead_letters")? as u64,
                    quarantined: r.try_get::<i64, _>("quarantined")? as u64,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(failed("reading the subscriptions"))
    }

    /// Where `subscription` reads next: its slowest partition's place, as
    /// `(tx_id, position)` text pair, or an error naming it.
    pub(crate) async fn subscription_start(&self, subscription: &str) -> Result<(String, i64)> {
        let s = &self.schema;
        let row: Option<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT tx_id::text, position FROM {s}.cursors WHERE subscription = $1
             ORDER BY tx_id, position LIMIT 1"
        )))
        .bind(subscription)
        .fetch_optional(&self.pool)
        .await
        .map_err(failed("reading the subscription"))?;
        row.ok_or_else(|| {
            CliError::NotFound(format!(
                "the outbox has no subscription `{subscription}`; `eventbus <URL> subscriptions` lists them"
            ))
        })
    }

    /// Up to `limit` events after `(tx_id, position)` in commit order, of
    /// transactions every reader can see (so none commits later behind
    /// them); `newest`: the last `limit` of them.
    pub(crate) async fn events(
        &self,
        after: (&str, i64),
        name_like: Option<&str>,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<(String, EventRow)>> {
        let s = &self.schema;
        let order = if newest { "DESC" } else { "ASC" };
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT tx_id::text AS tx, position, name, version, event_id::text AS id, appended_at, payload::text AS payload
             FROM {s}.events
             WHERE (tx_id, position) > ($1::text::xid8, $2)
               AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
               AND ($3::text IS NULL OR name LIKE $3 ESCAPE '\\')
             ORDER BY tx_id {order}, position {order} LIMIT $4"
        )))
        .bind(after.0)
        .bind(after.1)
        .bind(name_like)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(failed("reading events"))?;
        let mut events = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("tx")?,
                    EventRow {
                        position: r.try_get::<i64, _>("position")? as u64,
                        name: r.try_get("name")?,
                        version: r.try_get::<i32, _>("version")?.into(),
                        id: r.try_get("id")?,
                        time: r.try_get("appended_at")?,
                        payload: payload_value(r.try_get::<String, _>("payload")?.as_bytes()),
                    },
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(failed("reading events"))?;
        if newest {
            events.reverse();
        }
        Ok(events)
    }

    pub(crate) async fn letters(
        &self,
        filter: &LetterFilter,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LetterRow>> {
        let s = &self.schema;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, subscription, name, version, payload::text AS payload, errors::text AS errors, attempts,
                    first_failed_at, last_failed_at, replay_requested_at IS NOT NULL AS replaying
             FROM {s}.dead_letters WHERE {} AND id > $4 ORDER BY id LIMIT $5",
            WHERE_LETTERS
        )))
        .bind(&filter.subscription)
        .bind(filter.name_like())
        .bind(filter.error_like())
        .bind(after as i64)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(failed("reading dead letters"))?;
        rows.iter()
            .map(letter_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(failed("reading dead letters"))
    }

    pub(crate) async fn count_letters(&self, filter: &LetterFilter) -> Result<u64> {
        let s = &self.schema;
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {s}.dead_letters WHERE {WHERE_LETTERS}"
        )))
        .bind(&filter.subscription)
        .bind(filter.name_like())
        .bind(filter.error_like())
        .fetch_one(&self.pool)
        .await
        .map_err(failed("counting dead letters"))?;
        Ok(n as u64)
    }

    pub(crate) async fn letter(&self, id: u64) -> Result<Option<LetterRow>> {
        let s = &self.schema;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, subscription, name, version, payload::text AS payload, errors::text AS errors, attempts,
                    first_failed_at, last_failed_at, replay_requested_at IS NOT NULL AS replaying
             FROM {s}.dead_letters WHERE id = $1"
        )))
        .bind(i64::try_from(id).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await
        .map_err(failed("reading a dead letter"))?;
        row.as_ref()
            .map(letter_row)
            .transpose()
            .map_err(failed("reading a dead letter"))
    }

    pub(crate) async fn quarantined(
        &self,
        subscription: Option<&str>,
        position: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QuarantineRow>> {
        let s = &self.schema;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT subscription, position, name, version, payload::text AS payload, reason, quarantined_at
             FROM {s}.quarantine
             WHERE ($1::text IS NULL OR subscription = $1) AND ($2::bigint IS NULL OR position = $2)
             ORDER BY subscription, position LIMIT $3"
        )))
        .bind(subscription)
        .bind(position.map(|p| p as i64))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(failed("reading quarantined rows"))?;
        rows.iter()
            .map(|r| {
                Ok(QuarantineRow {
                    subscription: r.try_get("subscription")?,
                    position: r.try_get::<i64, _>("position")? as u64,
                    name: r.try_get("name")?,
                    version: r.try_get::<i32, _>("version")?.into(),
                    payload: payload_value(r.try_get::<String, _>("payload")?.as_bytes()),
                    reason: r.try_get("reason")?,
                    quarantined_at: r.try_get("quarantined_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(failed("reading quarantined rows"))
    }

    /// Marks letters for replay through the outbox's store: the process
    /// holding each letter's subscription finds the mark and replays it.
    pub(crate) async fn replay(
        &self,
        ids: &mut dyn Iterator<Item = u64>,
        progress: &Progress,
    ) -> Result<Outcome> {
        let log = self.log(no_pruning()).await?;
        let store = log
            .dead_letter_store()
            .expect("the outbox keeps dead letters");
        let mut outcome = Outcome::default();
        for (n, id) in ids.enumerate() {
            match store.request_replay(id).await.map_err(|e| {
                CliError::db(format!("marking dead letter {id} for replay"))(Box::new(e))
            })? {
                ReplayRequest::Requested { .. } => outcome.done.push(id),
                ReplayRequest::NotFound => outcome.not_found.push(id),
                _ => outcome.replaying.push(id),
            }
            progress.update(n as u64 + 1);
        }
        progress.finish();
        log.close();
        Ok(outcome)
    }

    /// Removes letters through the outbox's store; a letter marked for
    /// replay stays, since a process may be replaying it.
    pub(crate) async fn discard(
        &self,
        ids: &mut dyn Iterator<Item = u64>,
        progress: &Progress,
    ) -> Result<Outcome> {
        let log = self.log(no_pruning()).await?;
        let store = log
            .dead_letter_store()
            .expect("the outbox keeps dead letters");
        let mut outcome = Outcome::default();
        for (n, id) in ids.enumerate() {
            match store
                .discard(id)
                .await
                .map_err(|e| CliError::db(format!("discarding dead letter {id}"))(Box::new(e)))?
            {
                Discarded::Removed => outcome.done.push(id),
                Discarded::NotFound => outcome.not_found.push(id),
                _ => outcome.replaying.push(id),
            }
            progress.update(n as u64 + 1);
        }
        progress.finish();
        log.close();
        Ok(outcome)
    }

    /// Prunes through [`PostgresLog::prune`] by `retention`, or on a dry
    /// run counts what it would delete.
    pub(crate) async fn prune(&self, retention: Retention, dry_run: bool) -> Result<PruneReport> {
        if !dry_run {
            let log = self
                .log(Retention {
                    every: Duration::MAX,
                    ..retention
                })
                .await?;
            let pruned = log
                .prune()
                .await
                .map_err(|e| CliError::db("pruning the outbox")(Box::new(e)))?;
            log.close();
            return Ok(PruneReport {
                dry_run,
                events: pruned.events,
                dead_letters: pruned.dead_letters,
                quarantined: pruned.quarantined,
                skipped: pruned.skipped,
            });
        }
        let s = &self.schema;
        let ms = |d: Duration| {
            i64::try_from(
                d.min(Duration::from_secs(1_000 * 365 * 24 * 3600))
                    .as_millis(),
            )
            .unwrap_or(i64::MAX)
        };
        let (events, dead_letters, quarantined): (i64, i64, i64) =
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT
               (SELECT count(*) FROM {s}.events e
                 WHERE NOT EXISTS (SELECT 1 FROM {s}.cursors c WHERE e.tx_id >= c.tx_id)
                   AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
                   AND (e.appended_at < now() - $1 * interval '1 millisecond'
                        OR e.position <= (SELECT max(position) FROM {s}.events) - $2)),
               (SELECT count(*) FROM {s}.dead_letters
                 WHERE last_failed_at < now() - $3 * interval '1 millisecond'
                   AND replay_requested_at IS NULL),
               (SELECT count(*) FROM {s}.quarantine
                 WHERE quarantined_at < now() - $3 * interval '1 millisecond')"
            )))
            .bind(ms(retention.max_age))
            .bind(i64::try_from(retention.max_events).unwrap_or(i64::MAX))
            .bind(ms(retention.dead_letters_max_age))
            .fetch_one(&self.pool)
            .await
            .map_err(failed("counting what pruning would delete"))?;
        Ok(PruneReport {
            dry_run,
            events: events as u64,
            dead_letters: dead_letters as u64,
            quarantined: quarantined as u64,
            skipped: false,
        })
    }
}

/// The dead-letter filter, on `$1` (subscription), `$2` (name pattern) and
/// `$3` (error text).
const WHERE_LETTERS: &str = "($1::text IS NULL OR subscription = $1)
    AND ($2::text IS NULL OR name LIKE $2 ESCAPE '\\')
    AND ($3::text IS NULL OR EXISTS (
        SELECT 1 FROM jsonb_array_elements_text(errors) AS e(message) WHERE e.message ILIKE $3 ESCAPE '\\'))";

fn no_pruning() -> Retention {
    Retention {
        every: Duration::MAX,
        ..Retention::default()
    }
}

fn letter_row(r: &PgRow) -> Result<LetterRow, sqlx::Error> {
    let errors: Value =
        serde_json::from_str(&r.try_get::<String, _>("errors")?).unwrap_or(Value::Null);
    Ok(LetterRow {
        id: r.try_get::<i64, _>("id")? as u64,
        subscription: r.try_get("subscription")?,
        name: r.try_get("name")?,
        version: r.try_get::<i32, _>("version")?.into(),
        payload: payload_value(r.try_get::<String, _>("payload")?.as_bytes()),
        errors: match errors {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect(),
            other => vec![other.to_string()],
        },
        attempts: r.try_get::<i32, _>("attempts")?.into(),
        first_failed_at: r.try_get::<DateTime<Utc>, _>("first_failed_at")?,
        last_failed_at: r.try_get("last_failed_at")?,
        replaying: r.try_get("replaying")?,
    })
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden_wherever_the_url_holds_them() {
        assert_eq!(
            redact("postgres://app:hunter2@db/app"),
            "postgres://app:***@db/app"
        );
        assert_eq!(
            redact("postgres://app:hun@ter2@db/app"),
            "postgres://app:***@db/app"
        );
        assert_eq!(
            redact("postgres://app@db/app?password=hunter2"),
            "postgres://app@db/app"
        );
        assert_eq!(redact("postgres://db/app"), "postgres://db/app");
    }
}
