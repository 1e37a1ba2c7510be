//! A SQLite log: read through a connection of the tool's own (WAL lets it
//! read beside a running service), written through [`SqliteLog`] itself,
//! and only while no process holds the file.
//!
//! A service holds an exclusive advisory lock (`flock`) on the file while
//! its log is open: that lock is how the tool knows the log is owned. The
//! SQLite dead-letter store is one process's alone: a service picks up
//! replays asked for in its own process and, at its next start, the ones
//! marked before. So replays, discards and pruning are refused while a
//! process holds the file.

use crate::error::{CliError, Result};
use crate::model::{
    EventRow, LetterFilter, LetterRow, PruneReport, QuarantineRow, SubscriptionRow, errors_list,
    payload_value,
};
use crate::output::Progress;
use chrono::{DateTime, Utc};
use eventbus::backend::sqlite::Retention;
use eventbus::dead_letter::{Discarded, ReplayRequest};
use eventbus::{Backend, SqliteLog};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params_from_iter, types::Value as Sql};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `EVBS`, the application id a log's header carries.
const APPLICATION_ID: i64 = 0x4556_4253;
/// The layout this tool reads: the library's current one.
const SCHEMA_VERSION: i64 = 3;
/// What to do instead of a dead-letter write while a service runs.
pub(crate) const ASK_THE_SERVICE: &str =
    "ask the running service (its dashboard, or `bus.dead_letters()`)";
/// How long a lock held by a stopping service is waited for.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// Rows one prune statement deletes, as the service's own pruning does.
const PRUNE_SLICE: i64 = 10_000;

/// An open SQLite log.
#[derive(Debug)]
pub(crate) struct Sqlite {
    path: PathBuf,
    conn: Connection,
}

fn query_error(path: &Path) -> impl Fn(rusqlite::Error) -> CliError + '_ {
    move |e| CliError::Database {
        context: format!("reading {}", path.display()),
        source: Box::new(e),
    }
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl Sqlite {
    /// Opens the log at `path` for reading, without creating or changing
    /// anything: a missing file or one that is not a log is an error.
    pub(crate) fn open(path: &Path) -> Result<Sqlite> {
        let meta = std::fs::metadata(path).map_err(|_| CliError::NoSuchFile(path.to_owned()))?;
        if !meta.is_file() {
            return Err(CliError::NotALog {
                path: path.to_owned(),
                found: "a directory".into(),
            });
        }
        let not_a_log = |e: rusqlite::Error| CliError::NotALog {
            path: path.to_owned(),
            found: format!("SQLite says: {e}"),
        };
        // Read-only when the file may not be written: everything but the
        // writes still works, and those say why they fail.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .or_else(|_| {
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        })
        .map_err(not_a_log)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(not_a_log)?;
        let application_id: i64 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(not_a_log)?;
        if application_id != APPLICATION_ID {
            let found = if meta.len() == 0 {
                "an empty file".to_owned()
            } else {
                format!("a database with application id {application_id:#x}")
            };
            return Err(CliError::NotALog {
                path: path.to_owned(),
                found,
            });
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(not_a_log)?;
        if version != SCHEMA_VERSION {
            return Err(CliError::Version {
                path: path.display().to_string(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Sqlite {
            path: path.to_owned(),
            conn,
        })
    }

    /// The process holding the file, if one does, after waiting up to
    /// `wait` for one that is stopping to let go.
    pub(crate) fn holder(&self, wait: Duration) -> Result<Option<String>> {
        let file = File::open(&self.path).map_err(|e| CliError::Database {
            context: format!("opening {}", self.path.display()),
            source: Box::new(e),
        })?;
        // A service that is stopping lets go within moments: wait that
        // long, as the library's own `open` does, before calling it held.
        let deadline = std::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(None),
                Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(TryLockError::WouldBlock) => return Ok(Some(lock_holder(&self.path))),
                Err(TryLockError::Error(e)) => {
                    return Err(CliError::Database {
                        context: format!(
                            "checking whether a process holds {}",
                            self.path.display()
                        ),
                        source: Box::new(e),
                    });
                }
            }
        }
    }

    /// Refuses `what` while a process holds the file.
    pub(crate) fn refuse_if_owned(&self, what: &'static str, instead: &'static str) -> Result<()> {
        match self.holder(LOCK_WAIT)? {
            None => Ok(()),
            Some(holder) => Err(CliError::Owned {
                path: self.path.clone(),
                holder,
                what,
                instead,
            }),
        }
    }

    /// The position the next event gets: pruned positions are never reused.
    pub(crate) fn head(&self) -> Result<u64> {
        let head: i64 = self
            .conn
            .query_row(
                "SELECT MAX(
                     COALESCE((SELECT MAX(position) FROM events), 0),
                     COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)
                 ) + 1",
                [],
                |r| r.get(0),
            )
            .map_err(query_error(&self.path))?;
        Ok(head as u64)
    }

    pub(crate) fn subscriptions(&self) -> Result<Vec<SubscriptionRow>> {
        let head = self.head()?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT s.name, s.position,
                    (SELECT COUNT(*) FROM dead_letters d WHERE d.subscription = s.name),
                    (SELECT COUNT(*) FROM quarantine q WHERE q.subscription = s.name)
                 FROM subscriptions s ORDER BY s.name",
            )
            .map_err(query_error(&self.path))?;
        let rows = stmt
            .query_map([], |r| {
                let position = r.get::<_, i64>(1)? as u64;
                Ok(SubscriptionRow {
                    name: r.get(0)?,
                    partition: None,
                    position,
                    head,
                    lag: head.saturating_sub(position),
                    holder: None,
                    lease_until: None,
                    members: None,
                    parked: None,
                    dead_letters: r.get::<_, i64>(2)? as u64,
                    quarantined: r.get::<_, i64>(3)? as u64,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(query_error(&self.path))?;
        Ok(rows)
    }

    /// The position `subscription` reads next, or an error naming it.
    pub(crate) fn subscription_position(&self, subscription: &str) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT position FROM subscriptions WHERE name = ?1",
                [subscription],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(query_error(&self.path))?
            .map(|p| p as u64)
            .ok_or_else(|| {
                CliError::NotFound(format!(
                    "the log has no subscription `{subscription}`; `eventbus {} subscriptions` lists them",
                    self.path.display()
                ))
            })
    }

    /// Up to `limit` events from position `from` on (`newest`: the last
    /// `limit` of them), whose names match `name_like`.
    pub(crate) fn events(
        &self,
        from: u64,
        name_like: Option<&str>,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<EventRow>> {
        let order = if newest { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT position, name, version, event_id, appended_at, payload FROM events
             WHERE position >= ?1 AND (?2 IS NULL OR name LIKE ?2 ESCAPE '\\')
             ORDER BY position {order} LIMIT ?3"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(query_error(&self.path))?;
        let mut rows = stmt
            .query_map(
                rusqlite::params![
                    from as i64,
                    name_like,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| {
                    Ok(EventRow {
                        position: r.get::<_, i64>(0)? as u64,
                        name: r.get(1)?,
                        version: r.get(2)?,
                        id: r.get(3)?,
                        time: time(r.get(4)?),
                        payload: stored_payload(r, 5)?,
                    })
                },
            )
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(query_error(&self.path))?;
        if newest {
            rows.reverse();
        }
        Ok(rows)
    }

    /// Up to `limit` letters matching `filter`, after id `after`.
    pub(crate) fn letters(
        &self,
        filter: &LetterFilter,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LetterRow>> {
        let (clause, mut args) = where_letters(filter);
        args.push(Sql::Integer(after as i64));
        args.push(Sql::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        let n = args.len();
        let sql = format!(
            "SELECT id, subscription, name, version, payload, errors, attempts,
                    first_failed_at, last_failed_at, replay_requested_at IS NOT NULL
             FROM dead_letters WHERE {clause} AND id > ?{} ORDER BY id LIMIT ?{n}",
            n - 1
        );
        let mut stmt = self.conn.prepare(&sql).map_err(query_error(&self.path))?;
        stmt.query_map(params_from_iter(args), letter_row)
            .and_then(|rows| rows.collect())
            .map_err(query_error(&self.path))
    }

    pub(crate) fn count_letters(&self, filter: &LetterFilter) -> Result<u64> {
        let (clause, args) = where_letters(filter);
        let n: i64 = self
            .conn
            .query_row(
                &format!("SELECT COUNT(*) FROM dead_letters WHERE {clause}"),
                params_from_iter(args),
                |r| r.get(0),
            )
            .map_err(query_error(&self.path))?;
        Ok(n as u64)
    }

    pub(crate) fn letter(&self, id: u64) -> Result<Option<LetterRow>> {
        self.conn
            .query_row(
                "SELECT id, subscription, name, version, payload, errors, attempts,
                        first_failed_at, last_failed_at, replay_requested_at IS NOT NULL
                 FROM dead_letters WHERE id = ?1",
                [id as i64],
                letter_row,
            )
            .optional()
            .map_err(query_error(&self.path))
    }

    pub(crate) fn quarantined(
        &self,
        subscription: Option<&str>,
        position: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QuarantineRow>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT subscription, position, name, version, payload, reason, quarantined_at
                 FROM quarantine
                 WHERE (?1 IS NULL OR subscription = ?1) AND (?2 IS NULL OR position = ?2)
                 ORDER BY subscription, position LIMIT ?3",
            )
            .map_err(query_error(&self.path))?;
        stmt.query_map(
            rusqlite::params![
                subscription,
                position.map(|p| p as i64),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                Ok(QuarantineRow {
                    subscription: r.get(0)?,
                    position: r.get::<_, i64>(1)? as u64,
                    name: r.get(2)?,
                    version: r.get(3)?,
                    payload: stored_payload(r, 4)?,
                    reason: r.get(5)?,
                    quarantined_at: time(r.get(6)?),
                })
            },
        )
        .and_then(|rows| rows.collect())
        .map_err(query_error(&self.path))
    }

    /// The log for writing, through the library, once no process holds it.
    async fn writable(&self, what: &'static str) -> Result<SqliteLog> {
        const INSTEAD: &str = ASK_THE_SERVICE;
        self.refuse_if_owned(what, INSTEAD)?;
        // Never prunes by itself: the tool must not apply a retention the
        // service was not configured with.
        let retention = Retention {
            every: Duration::MAX,
            ..Retention::default()
        };
        SqliteLog::options()
            .retention(retention)
            .open(&self.path)
            .await
            .map_err(|e| match e {
                eventbus::backend::sqlite::OpenError::Locked { .. } => CliError::Owned {
                    path: self.path.clone(),
                    holder: lock_holder(&self.path),
                    what,
                    instead: INSTEAD,
                },
                other => CliError::Database {
                    context: format!("opening {} to write", self.path.display()),
                    source: Box::new(other),
                },
            })
    }

    /// Marks letters for replay: their subscription replays them when its
    /// service next starts.
    pub(crate) async fn replay(
        &self,
        ids: &mut dyn Iterator<Item = u64>,
        progress: &Progress,
    ) -> Result<crate::model::Outcome> {
        let log = self.writable("a replay").await?;
        let store = log
            .dead_letter_store()
            .expect("the SQLite log keeps dead letters");
        let mut outcome = crate::model::Outcome::default();
        for (n, id) in ids.enumerate() {
            match store.request_replay(id).await.map_err(|e| {
                CliError::db(format!("marking dead letter {id} for replay"))(Box::new(e))
            })? {
                ReplayRequest::Requested { .. } => outcome.done.push(id),
                ReplayRequest::AlreadyRequested => outcome.replaying.push(id),
                ReplayRequest::NotFound => outcome.not_found.push(id),
                _ => outcome.replaying.push(id),
            }
            progress.update(n as u64 + 1);
        }
        progress.finish();
        log.close();
        Ok(outcome)
    }

    /// Removes letters, marked or not: no process runs their replay.
    pub(crate) async fn discard(
        &self,
        ids: &mut dyn Iterator<Item = u64>,
        progress: &Progress,
    ) -> Result<crate::model::Outcome> {
        let log = self.writable("a discard").await?;
        let store = log
            .dead_letter_store()
            .expect("the SQLite log keeps dead letters");
        let mut outcome = crate::model::Outcome::default();
        for (n, id) in ids.enumerate() {
            let failed = |e| CliError::db(format!("discarding dead letter {id}"))(Box::new(e));
            match store.discard(id).await.map_err(failed)? {
                Discarded::Removed => outcome.done.push(id),
                Discarded::NotFound => outcome.not_found.push(id),
                // Marked, but no process holds the log, so no replay of it
                // is under way: the mark does not hold it back (as
                // `DeadLetters::discard` decides in a service).
                _ => {
                    if store.remove(id).await.map_err(failed)? {
                        outcome.done.push(id);
                    } else {
                        outcome.not_found.push(id);
                    }
                }
            }
            progress.update(n as u64 + 1);
        }
        progress.finish();
        log.close();
        Ok(outcome)
    }

    /// Deletes (or on a dry run counts) the finished events past `max_age`
    /// or beyond the newest `max_events`, by the rule the service's own
    /// pruning follows: no event a subscription still needs goes.
    pub(crate) fn prune(
        &self,
        max_age: Duration,
        max_events: u64,
        dry_run: bool,
    ) -> Result<PruneReport> {
        const INSTEAD: &str = "let the service prune by its own `Retention`";
        if !dry_run {
            self.refuse_if_owned("pruning", INSTEAD)?;
        }
        // Held while pruning, so a service cannot start on the file
        // meanwhile (it waits, then says the file is in use).
        let lock = File::open(&self.path).map_err(|e| CliError::Database {
            context: format!("opening {}", self.path.display()),
            source: Box::new(e),
        })?;
        if !dry_run && lock.try_lock().is_err() {
            return Err(CliError::Owned {
                path: self.path.clone(),
                holder: lock_holder(&self.path),
                what: "pruning",
                instead: INSTEAD,
            });
        }
        let head = self.head()? as i64;
        let slowest: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(MIN(position), ?1) FROM subscriptions",
                [head],
                |r| r.get(0),
            )
            .map_err(query_error(&self.path))?;
        let max_age = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let now = Utc::now().timestamp_millis();
        let cutoff_time = now.saturating_sub(max_age);
        let cutoff_count = head.saturating_sub(i64::try_from(max_events).unwrap_or(i64::MAX));
        let finished = "position < ?1 AND (appended_at < ?2 OR position < ?3)";
        let total: i64 = self
            .conn
            .query_row(
                &format!("SELECT COUNT(*) FROM events WHERE {finished}"),
                [slowest, cutoff_time, cutoff_count],
                |r| r.get(0),
            )
            .map_err(query_error(&self.path))?;
        let mut report = PruneReport {
            dry_run,
            ..PruneReport::default()
        };
        if dry_run {
            report.events = total as u64;
            return Ok(report);
        }
        let progress = Progress::new("pruned", total as u64);
        loop {
            let deleted = self
                .conn
                .execute(
                    &format!(
                        "DELETE FROM events WHERE position IN (
                             SELECT position FROM events WHERE {finished}
                             ORDER BY position LIMIT ?4)"
                    ),
                    [slowest, cutoff_time, cutoff_count, PRUNE_SLICE],
                )
                .map_err(|e| CliError::db("pruning events")(Box::new(e)))?;
            report.events += deleted as u64;
            progress.update(report.events);
            if deleted == 0 {
                break;
            }
        }
        progress.finish();
        drop(lock);
        Ok(report)
    }
}

/// The `WHERE` clause and arguments for `filter`.
fn where_letters(filter: &LetterFilter) -> (String, Vec<Sql>) {
    let mut clause = vec!["1 = 1".to_owned()];
    let mut args = Vec::new();
    let mut push = |sql: &str, value: String| {
        args.push(Sql::Text(value));
        clause.push(sql.replace('?', &format!("?{}", args.len())));
    };
    if let Some(s) = &filter.subscription {
        push("subscription = ?", s.clone());
    }
    if let Some(n) = filter.name_like() {
        push("name LIKE ? ESCAPE '\\'", n);
    }
    if let Some(e) = filter.error_like() {
        // Each message as written, not the JSON list's text (where quotes
        // and backslashes are escaped); any case, not only ASCII's.
        push(
            "EXISTS (SELECT 1 FROM json_each(errors) WHERE lower(value) LIKE lower(?) ESCAPE '\\')",
            e,
        );
    }
    (clause.join(" AND "), args)
}

/// A payload column as JSON: stored as a blob, but read whatever SQLite
/// holds, since a row written by hand or by an older tool may be text.
fn stored_payload(r: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<serde_json::Value> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(column)? {
        ValueRef::Blob(bytes) | ValueRef::Text(bytes) => payload_value(bytes),
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(n) => n.into(),
        ValueRef::Real(x) => x.into(),
    })
}

fn letter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LetterRow> {
    Ok(LetterRow {
        id: r.get::<_, i64>(0)? as u64,
        subscription: r.get(1)?,
        name: r.get(2)?,
        version: r.get(3)?,
        payload: stored_payload(r, 4)?,
        errors: errors_list(&r.get::<_, String>(5)?),
        attempts: r.get(6)?,
        first_failed_at: time(r.get(7)?),
        last_failed_at: time(r.get(8)?),
        replaying: r.get(9)?,
    })
}

/// Which process holds the lock on `path`, as `/proc/locks` tells on Linux.
fn lock_holder(path: &Path) -> String {
    let unknown = || "another process".to_owned();
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(path) else {
            return unknown();
        };
        let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
            return unknown();
        };
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        for line in locks.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(pid), Some(file)) = (fields.get(4), fields.get(5)) else {
                continue;
            };
            if file.rsplit(':').next().and_then(|i| i.parse::<u64>().ok()) == Some(meta.ino())
                && fields.get(1) == Some(&"FLOCK")
            {
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_default();
                return if name.is_empty() {
                    format!("process {pid}")
                } else {
                    format!("process {pid} ({name})")
                };
            }
        }
    }
    let _ = path;
    unknown()
}
