//! The delivery store: one row per webhook and endpoint, one per attempt,
//! in a SQLite file of the webhooks' own.

use super::error::WebhooksError;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// The layout this version writes, kept in `PRAGMA user_version`.
const LAYOUT: i64 = 1;

/// Identifies the file as a delivery store (`PRAGMA application_id`):
/// "ebwh".
const APPLICATION_ID: i64 = 0x6562_7768;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL,
    message TEXT NOT NULL,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    manual INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (message, endpoint)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);
CREATE INDEX IF NOT EXISTS deliveries_endpoint ON deliveries (endpoint, state, id);
CREATE INDEX IF NOT EXISTS deliveries_endpoint_id ON deliveries (endpoint, id);
CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries (state, created_at);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    delivery INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    event_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    status INTEGER,
    latency_us INTEGER NOT NULL,
    response TEXT,
    error TEXT,
    manual INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_endpoint ON attempts (endpoint, id);
CREATE INDEX IF NOT EXISTS attempts_event ON attempts (event_id, id);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery, id);
CREATE TABLE IF NOT EXISTS endpoint_health (
    endpoint TEXT PRIMARY KEY,
    failing_since INTEGER,
    disabled_at INTEGER
);
";

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// An attempt is running.
    Sending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt failed, or the endpoint is gone or disabled; a resend
    /// starts it over.
    Failed,
}

impl DeliveryState {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Sending => "sending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> rusqlite::Result<Self> {
        Ok(match text {
            "pending" => DeliveryState::Pending,
            "sending" => DeliveryState::Sending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            other => {
                return Err(rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    format!("unknown delivery state {other:?}").into(),
                ));
            }
        })
    }
}

/// One webhook to one endpoint.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Delivery {
    /// Its id, for [`Webhooks::resend`](super::Webhooks::resend).
    pub id: i64,
    /// The endpoint's id.
    pub endpoint: String,
    /// The `webhook-id` header: the same on every attempt and endpoint, so
    /// receivers drop a repeat.
    pub message_id: String,
    /// The id of the event the webhook came from.
    pub event_id: Uuid,
    /// The webhook's topic.
    pub topic: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made since it was created or last resent.
    pub attempts: u32,
    /// When the next attempt is due, while it is pending.
    pub next_attempt_at: DateTime<Utc>,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
}

/// One attempt at a delivery.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Attempt {
    /// Its id; later attempts have larger ids.
    pub id: i64,
    /// The delivery it was an attempt at.
    pub delivery: i64,
    /// The endpoint's id.
    pub endpoint: String,
    /// The id of the event the webhook came from.
    pub event_id: Uuid,
    /// When it started.
    pub at: DateTime<Utc>,
    /// The response's status; `None` when there was no response.
    pub status: Option<u16>,
    /// From the request's start to the response's end.
    pub latency: Duration,
    /// The start of the response's body, at most 1 KiB of it.
    pub response: Option<String>,
    /// Why it failed: the status, a timeout, a refused address.
    pub error: Option<String>,
    /// Started by [`Webhooks::resend`](super::Webhooks::resend).
    pub manual: bool,
}

/// A delivery claimed for an attempt.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub(crate) id: i64,
    pub(crate) endpoint: String,
    pub(crate) message: String,
    pub(crate) event_id: String,
    pub(crate) body: Arc<[u8]>,
    pub(crate) attempts: u32,
    pub(crate) manual: bool,
}

/// What became of an attempt.
#[derive(Clone)]
pub(crate) struct Finished {
    pub(crate) delivery: i64,
    pub(crate) endpoint: String,
    pub(crate) event_id: String,
    pub(crate) at: DateTime<Utc>,
    pub(crate) status: Option<u16>,
    pub(crate) latency: Duration,
    pub(crate) response: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) manual: bool,
    /// The delivery's state after it.
    pub(crate) state: DeliveryState,
    pub(crate) attempts: u32,
    pub(crate) next_at: DateTime<Utc>,
    /// Whether it counts against the endpoint's health: a failed request,
    /// not an endpoint disabled or deleted at its source.
    pub(crate) failing: bool,
}

/// The SQLite file, shared by the consumer, the dispatcher and the handle.
#[derive(Clone)]
pub(crate) struct Store {
    conn: Arc<Mutex<Connection>>,
    path: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn uuid_of(text: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(text).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(err))
    })
}

impl Store {
    /// Opens (or creates) the store at `path`; `None` for one in memory.
    /// With `max_size`, the file grows to about that many bytes at most.
    pub(crate) fn open(path: Option<&Path>, max_size: Option<u64>) -> Result<Self, WebhooksError> {
        let shown: Arc<str> = match path {
            Some(path) => path.display().to_string().into(),
            None => ":memory:".into(),
        };
        let failed = |source| WebhooksError::Store {
            path: shown.to_string(),
            source,
        };
        let conn = match path {
            Some(path) => Connection::open(path),
            None => Connection::open_in_memory(),
        }
        .map_err(failed)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(failed)?;
        let (id, layout): (i64, i64) = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .and_then(|id| Ok((id, conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)))
            .map_err(failed)?;
        let empty: bool = conn
            .query_row("SELECT count(*) = 0 FROM sqlite_master", [], |r| r.get(0))
            .map_err(failed)?;
        if !empty && (id != APPLICATION_ID || layout != LAYOUT) {
            return Err(WebhooksError::Layout {
                path: shown.to_string(),
                expected: LAYOUT,
                found: if id == APPLICATION_ID { layout } else { 0 },
            });
        }
        if path.is_some() {
            let _: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(failed)?;
        }
        conn.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {LAYOUT}; {SCHEMA}"
        ))
        .map_err(failed)?;
        if let Some(bytes) = max_size {
            // A per-connection setting, so it is set at every open. SQLite
            // clamps a count it cannot address to the most it can.
            let page_size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(failed)?;
            let pages = bytes / u64::try_from(page_size).unwrap_or(1).max(1);
            let _: i64 = conn
                .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                    r.get(0)
                })
                .map_err(failed)?;
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: shown,
        })
    }

    /// Runs `work` on the connection, off the async threads.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, WebhooksError> {
        let conn = Arc::clone(&self.conn);
        let path = Arc::clone(&self.path);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut conn)
        })
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
        .map_err(|source| WebhooksError::Store {
            path: path.to_string(),
            source,
        })
    }

    /// Adds the deliveries of one webhook, due after `delay`; those
    /// already there (the event handled again) are left as they are.
    pub(crate) async fn enqueue(
        &self,
        deliveries: Vec<NewDeliveryOwned>,
        delay: Duration,
    ) -> Result<usize, WebhooksError> {
        let now = millis(Utc::now());
        let due = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let mut added = 0;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO deliveries
                         (endpoint, message, event_id, topic, body, state, next_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7)
                     ON CONFLICT (message, endpoint) DO NOTHING",
                )?;
                for d in &deliveries {
                    added += insert.execute(params![
                        d.endpoint,
                        d.message,
                        d.event_id.to_string(),
                        d.topic,
                        &d.body[..],
                        due,
                        now
                    ])?;
                }
            }
            tx.commit()?;
            Ok(added)
        })
        .await
    }

    /// Deliveries left `sending` by a process that stopped mid-attempt go
    /// back to pending: their receivers may see them twice, never zero times.
    pub(crate) async fn recover(&self) -> Result<usize, WebhooksError> {
        self.run(|conn| {
            conn.execute(
                "UPDATE deliveries SET state = 'pending' WHERE state = 'sending'",
                [],
            )
        })
        .await
    }

    /// Claims up to `room` due deliveries, at most `per_endpoint` in flight
    /// per endpoint counting `busy`, and marks them `sending`; and says
    /// when the next delivery of an endpoint with room left is due.
    pub(crate) async fn claim(
        &self,
        room: usize,
        per_endpoint: usize,
        busy: HashMap<String, usize>,
    ) -> Result<(Vec<Claimed>, Option<DateTime<Utc>>), WebhooksError> {
        let now = millis(Utc::now());
        self.run(move |conn| {
            let mut busy = busy;
            let mut claimed = Vec::new();
            let tx = conn.transaction()?;
            // Endpoints at their limit are left out of the query, so one
            // endpoint's backlog cannot fill the page and starve the rest.
            while claimed.len() < room {
                let full: Vec<&String> = busy
                    .iter()
                    .filter(|(_, n)| **n >= per_endpoint)
                    .map(|(e, _)| e)
                    .collect();
                let marks = vec!["?"; full.len()].join(",");
                let sql = format!(
                    "SELECT id, endpoint, message, event_id, body, attempts, manual
                     FROM deliveries
                     WHERE state = 'pending' AND next_at <= ? AND endpoint NOT IN ({marks})
                     ORDER BY next_at, id LIMIT ?"
                );
                let mut select = tx.prepare(&sql)?;
                let mut args: Vec<&dyn rusqlite::ToSql> = vec![&now];
                args.extend(full.iter().map(|e| *e as &dyn rusqlite::ToSql));
                let page = (room - claimed.len()) as i64;
                args.push(&page);
                let rows: Vec<Claimed> = select
                    .query_map(args.as_slice(), |r| {
                        Ok(Claimed {
                            id: r.get(0)?,
                            endpoint: r.get(1)?,
                            message: r.get(2)?,
                            event_id: r.get(3)?,
                            body: r.get::<_, Vec<u8>>(4)?.into(),
                            attempts: r.get(5)?,
                            manual: r.get::<_, i64>(6)? != 0,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                drop(select);
                if rows.is_empty() {
                    break;
                }
                let mut took = 0;
                for row in rows {
                    let n = busy.entry(row.endpoint.clone()).or_insert(0);
                    if *n >= per_endpoint || claimed.len() >= room {
                        continue;
                    }
                    *n += 1;
                    tx.execute(
                        "UPDATE deliveries SET state = 'sending' WHERE id = ?1",
                        [row.id],
                    )?;
                    claimed.push(row);
                    took += 1;
                }
                if took == 0 {
                    break;
                }
            }
            // When the next delivery of an endpoint with room is due.
            let full: Vec<&String> = busy
                .iter()
                .filter(|(_, n)| **n >= per_endpoint)
                .map(|(e, _)| e)
                .collect();
            let marks = vec!["?"; full.len()].join(",");
            let next: Option<i64> = tx.query_row(
                &format!(
                    "SELECT min(next_at) FROM deliveries
                     WHERE state = 'pending' AND endpoint NOT IN ({marks})"
                ),
                rusqlite::params_from_iter(full.iter()),
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok((claimed, next.map(from_millis)))
        })
        .await
    }

    /// Records attempts and their deliveries' new states, in one
    /// transaction; for each, when its endpoint started failing (`None`:
    /// it is healthy, or the attempt does not count against it).
    pub(crate) async fn finish_all(
        &self,
        batch: Vec<Finished>,
    ) -> Result<Vec<Option<DateTime<Utc>>>, WebhooksError> {
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let mut failing = Vec::with_capacity(batch.len());
            for done in batch {
                tx.execute(
                    "INSERT INTO attempts
                     (delivery, endpoint, event_id, at, status, latency_us, response, error, manual)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        done.delivery,
                        done.endpoint,
                        done.event_id,
                        millis(done.at),
                        done.status,
                        i64::try_from(done.latency.as_micros()).unwrap_or(i64::MAX),
                        done.response,
                        done.error,
                        done.manual,
                    ],
                )?;
                tx.execute(
                    "UPDATE deliveries
                 SET state = ?2, attempts = ?3, next_at = ?4, manual = 0, last_error = ?5
                 WHERE id = ?1",
                    params![
                        done.delivery,
                        done.state.as_str(),
                        done.attempts,
                        millis(done.next_at),
                        done.error,
                    ],
                )?;
                let failing_since = if done.state == DeliveryState::Delivered {
                    tx.execute(
                        "DELETE FROM endpoint_health WHERE endpoint = ?1",
                        [&done.endpoint],
                    )?;
                    None
                } else if done.failing {
                    tx.execute(
                        "INSERT INTO endpoint_health (endpoint, failing_since) VALUES (?1, ?2)
                     ON CONFLICT (endpoint) DO UPDATE
                     SET failing_since = coalesce(failing_since, excluded.failing_since)",
                        params![done.endpoint, millis(done.at)],
                    )?;
                    tx.query_row(
                        "SELECT failing_since FROM endpoint_health WHERE endpoint = ?1",
                        [&done.endpoint],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()?
                    .map(from_millis)
                } else {
                    None
                };
                failing.push(failing_since);
            }
            tx.commit()?;
            Ok(failing)
        })
        .await
    }

    /// Marks an endpoint disabled and forgets its failures, so that enabled
    /// again it starts with a clean record: `true` when it was not marked
    /// already, the one time its disabling is announced. The mark goes
    /// with its next success.
    pub(crate) async fn mark_disabled(&self, endpoint: String) -> Result<bool, WebhooksError> {
        let now = millis(Utc::now());
        self.run(move |conn| {
            let changed = conn.execute(
                "INSERT INTO endpoint_health (endpoint, failing_since, disabled_at)
                 VALUES (?1, NULL, ?2)
                 ON CONFLICT (endpoint) DO UPDATE
                 SET failing_since = NULL, disabled_at = excluded.disabled_at
                 WHERE disabled_at IS NULL",
                params![endpoint, now],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// Deletes deliveries that finished before `cutoff`, and their
    /// attempts.
    pub(crate) async fn prune(&self, cutoff: DateTime<Utc>) -> Result<u64, WebhooksError> {
        let cutoff = millis(cutoff);
        self.run(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "DELETE FROM attempts WHERE delivery IN (
                     SELECT id FROM deliveries
                     WHERE state IN ('delivered', 'failed') AND created_at < ?1)",
                [cutoff],
            )?;
            let deleted = tx.execute(
                "DELETE FROM deliveries WHERE state IN ('delivered', 'failed') AND created_at < ?1",
                [cutoff],
            )?;
            tx.commit()?;
            Ok(deleted as u64)
        })
        .await
    }

    /// Starts a delivery over: pending, due now, no attempts counted; its
    /// next attempt is recorded as manual.
    pub(crate) async fn resend(&self, id: i64) -> Result<(), WebhooksError> {
        let now = millis(Utc::now());
        let state: Option<String> = self
            .run(move |conn| {
                conn.query_row("SELECT state FROM deliveries WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()
            })
            .await?;
        match state.as_deref() {
            None => return Err(WebhooksError::NoDelivery(id)),
            Some("sending") => return Err(WebhooksError::Sending(id)),
            Some(_) => {}
        }
        let changed = self
            .run(move |conn| {
                conn.execute(
                    "UPDATE deliveries
                     SET state = 'pending', attempts = 0, next_at = ?2, manual = 1
                     WHERE id = ?1 AND state <> 'sending'",
                    params![id, now],
                )
            })
            .await?;
        if changed == 0 {
            return Err(WebhooksError::Sending(id));
        }
        Ok(())
    }

    pub(crate) async fn deliveries(
        &self,
        filter: DeliveryFilter,
    ) -> Result<Vec<Delivery>, WebhooksError> {
        self.run(move |conn| {
            let mut clauses = vec!["id > ?1".to_owned()];
            let mut args: Vec<Box<dyn rusqlite::ToSql + Send>> = vec![Box::new(filter.after)];
            if let Some(endpoint) = filter.endpoint {
                args.push(Box::new(endpoint));
                clauses.push(format!("endpoint = ?{}", args.len()));
            }
            if let Some(event) = filter.event {
                args.push(Box::new(event.to_string()));
                clauses.push(format!("event_id = ?{}", args.len()));
            }
            if let Some(state) = filter.state {
                args.push(Box::new(state.as_str()));
                clauses.push(format!("state = ?{}", args.len()));
            }
            args.push(Box::new(filter.limit as i64));
            let sql = format!(
                "SELECT id, endpoint, message, event_id, topic, state, attempts, next_at, last_error
                 FROM deliveries WHERE {} ORDER BY id LIMIT ?{}",
                clauses.join(" AND "),
                args.len()
            );
            let mut select = conn.prepare(&sql)?;
            let rows = select.query_map(
                rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())),
                |r| {
                    Ok(Delivery {
                        id: r.get(0)?,
                        endpoint: r.get(1)?,
                        message_id: r.get(2)?,
                        event_id: uuid_of(&r.get::<_, String>(3)?)?,
                        topic: r.get(4)?,
                        state: DeliveryState::parse(&r.get::<_, String>(5)?)?,
                        attempts: r.get(6)?,
                        next_attempt_at: from_millis(r.get(7)?),
                        last_error: r.get(8)?,
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }

    pub(crate) async fn attempts(
        &self,
        filter: AttemptFilter,
    ) -> Result<Vec<Attempt>, WebhooksError> {
        self.run(move |conn| {
            let (column, value) = match filter.of {
                AttemptsOf::Endpoint(endpoint) => ("endpoint", endpoint),
                AttemptsOf::Event(event) => ("event_id", event.to_string()),
                AttemptsOf::Delivery(id) => ("delivery", id.to_string()),
            };
            let sql = format!(
                "SELECT id, delivery, endpoint, event_id, at, status, latency_us, response, error, manual
                 FROM attempts WHERE {column} = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            );
            let mut select = conn.prepare(&sql)?;
            let rows = select.query_map(params![value, filter.after, filter.limit as i64], |r| {
                Ok(Attempt {
                    id: r.get(0)?,
                    delivery: r.get(1)?,
                    endpoint: r.get(2)?,
                    event_id: uuid_of(&r.get::<_, String>(3)?)?,
                    at: from_millis(r.get(4)?),
                    status: r.get(5)?,
                    latency: Duration::from_micros(r.get::<_, i64>(6)?.max(0) as u64),
                    response: r.get(7)?,
                    error: r.get(8)?,
                    manual: r.get::<_, i64>(9)? != 0,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Whether any delivery is sending or due by `now`.
    pub(crate) async fn busy(&self) -> Result<bool, WebhooksError> {
        let now = millis(Utc::now());
        self.run(move |conn| {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM deliveries
                     WHERE state = 'sending' OR (state = 'pending' AND next_at <= ?1))",
                [now],
                |r| r.get(0),
            )
        })
        .await
    }
}

/// A new delivery that owns its parts, to cross into the blocking pool.
pub(crate) struct NewDeliveryOwned {
    pub(crate) endpoint: String,
    pub(crate) message: String,
    pub(crate) event_id: Uuid,
    pub(crate) topic: String,
    pub(crate) body: Arc<[u8]>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeliveryFilter {
    pub(crate) endpoint: Option<String>,
    pub(crate) event: Option<Uuid>,
    pub(crate) state: Option<DeliveryState>,
    pub(crate) after: i64,
    pub(crate) limit: usize,
}

/// Whose attempts to list.
#[derive(Debug, Clone)]
pub(crate) enum AttemptsOf {
    Endpoint(String),
    Event(Uuid),
    Delivery(i64),
}

#[derive(Debug, Clone)]
pub(crate) struct AttemptFilter {
    pub(crate) of: AttemptsOf,
    pub(crate) after: i64,
    pub(crate) limit: usize,
}
