//! The writer thread: the only connection that writes. It takes every
//! request queued since its last commit (appends from any number of
//! producers, cursor commits, quarantined rows) and commits them in one
//! transaction: group commit, so throughput does not fall to one fsync per
//! event.

use super::error::{ForgetError, SqliteError};
use super::{Forgotten, OpenCursors, Retention};
use crate::backend::{Position, StartFrom};
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};

/// The most requests one transaction takes.
const MAX_GROUP: usize = 4096;

/// Why the writer could not commit: a message for people, and whether the
/// file is damaged (retrying will not help).
#[derive(Debug, Clone)]
pub(crate) struct Failure(Arc<rusqlite::Error>);

impl Failure {
    pub(crate) fn of(err: rusqlite::Error) -> Self {
        Failure(Arc::new(err))
    }

    pub(crate) fn into_error(self, path: &std::path::Path) -> SqliteError {
        SqliteError::shared(path, self.0)
    }
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Failure>>;

/// The most finished events one writer turn deletes. Pruning a backlog of
/// 1,000,000 events in one `DELETE` held the writer for about 2.2 s
/// (issue 8), and every `notify` waited behind it. At that rate a slice of
/// 10,000 holds it for some 20 ms, so producers' commits interleave with
/// the slices, yet a million-event backlog still goes in a hundred turns.
/// Not re-measured here; no test times it.
const PRUNE_SLICE: usize = 10_000;

pub(crate) enum Request {
    Append {
        name: String,
        version: u32,
        event_id: String,
        payload: Vec<u8>,
        reply: Reply<Position>,
    },
    Commit {
        subscription: String,
        position: Position,
        reply: Reply<()>,
    },
    Open {
        subscription: String,
        from: StartFrom,
        reply: Reply<Position>,
    },
    InsertDeadLetter {
        row: DeadLetterRow,
        reply: Reply<Position>,
    },
    RemoveDeadLetter {
        id: u64,
        reply: Reply<Position>,
    },
    /// Marks a letter for replay unless it is marked; answers how many
    /// rows changed.
    MarkReplay {
        id: u64,
        reply: Reply<Position>,
    },
    /// Deletes a letter unless it is marked for replay; answers how many
    /// rows went.
    DiscardDeadLetter {
        id: u64,
        reply: Reply<Position>,
    },
    SaveRetry {
        subscription: String,
        position: Position,
        attempts: u32,
        next_attempt_at: i64,
        first_failed_at: i64,
        reply: Reply<Position>,
    },
    ClearRetry {
        subscription: String,
        position: Position,
        reply: Reply<Position>,
    },
    /// Moves quarantined rows that decode now into the dead letters.
    Requeue {
        subscription: String,
        rows: Vec<(Position, DeadLetterRow)>,
        reply: Reply<Position>,
    },
    Forget {
        subscription: String,
        reply: oneshot::Sender<Result<Forgotten, ForgetError>>,
    },
    Quarantine {
        subscription: String,
        position: Position,
        name: String,
        /// As stored, whatever its type: the row may be quarantined for it.
        version: rusqlite::types::Value,
        payload: Vec<u8>,
        reason: String,
        reply: Reply<Position>,
    },
}

/// A dead letter as stored: the event as JSON, the error chain as a JSON
/// array, times in milliseconds since the Unix epoch.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetterRow {
    pub(crate) id: u64,
    pub(crate) subscription: String,
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) payload: Vec<u8>,
    pub(crate) errors: String,
    pub(crate) attempts: u32,
    pub(crate) first_failed_at: i64,
    pub(crate) last_failed_at: i64,
    /// Marked for replay.
    pub(crate) replaying: bool,
}

pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) requests: mpsc::Receiver<Request>,
    pub(crate) head: Arc<AtomicU64>,
    pub(crate) head_tx: watch::Sender<Position>,
    pub(crate) retention: Retention,
    pub(crate) open_cursors: OpenCursors,
    /// The advisory lock on the file, released when the writer ends, not
    /// before: the next owner waits for our last commit.
    pub(crate) lock: std::fs::File,
    /// The file, for the errors it reports.
    pub(crate) path: std::path::PathBuf,
}

pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Writer {
    pub(crate) fn run(mut self) {
        let mut last_prune = Instant::now();
        // The last slice was full, so more finished events may be left:
        // prune again at the next turn, without waiting for `every`, and
        // without waiting for a request either.
        let mut pruning = false;
        let mut batch = Vec::with_capacity(MAX_GROUP);
        loop {
            let first = if pruning {
                match self.requests.try_recv() {
                    Ok(request) => Some(request),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match self.requests.blocking_recv() {
                    Some(request) => Some(request),
                    None => break,
                }
            };
            if let Some(first) = first {
                batch.push(first);
                while batch.len() < MAX_GROUP {
                    match self.requests.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                self.commit(&mut batch);
            }
            if pruning || last_prune.elapsed() >= self.retention.every {
                if !pruning {
                    last_prune = Instant::now();
                }
                pruning = match self.prune() {
                    Ok(deleted) => deleted == PRUNE_SLICE,
                    Err(err) => {
                        tracing::warn!(error = %err, "pruning finished events failed; will retry");
                        false
                    }
                };
            }
        }
        // Every sender is gone: the log was dropped. Checkpoint so the WAL
        // does not outlive us.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        drop(self.conn);
        drop(self.lock);
    }

    /// Runs the whole group in one transaction, then answers every request:
    /// with its result if the commit succeeded, with the error if not, so no
    /// `notify` reports success for an event that is not on disk.
    fn commit(&mut self, batch: &mut Vec<Request>) {
        let now = now_millis();
        let mut results: Vec<Position> = Vec::with_capacity(batch.len());
        // Quarantines the database refused, by index in the batch: each
        // fails alone, the rest of the group still commits.
        let mut refused: Vec<(usize, Failure)> = Vec::new();
        // One per forget request, in order; `None` when it was refused.
        let mut forgotten: Vec<Option<Forgotten>> = Vec::new();
        let open_cursors = &self.open_cursors;
        let outcome = (|| -> rusqlite::Result<()> {
            // IMMEDIATE takes the write lock up front, so a read-then-write
            // inside the group cannot fail with a busy snapshot.
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut append = tx.prepare_cached(
                    "INSERT INTO events (name, version, event_id, payload, appended_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                let mut commit = tx.prepare_cached(
                    "INSERT INTO subscriptions (name, position, created_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET position = max(position, excluded.position)",
                )?;
                for request in batch.iter() {
                    let result = match request {
                        Request::Append {
                            name,
                            version,
                            event_id,
                            payload,
                            ..
                        } => {
                            append.execute(params![name, version, event_id, payload, now])?;
                            tx.last_insert_rowid() as Position
                        }
                        Request::Commit {
                            subscription,
                            position,
                            ..
                        } => {
                            commit.execute(params![subscription, *position as i64, now])?;
                            *position
                        }
                        Request::Open {
                            subscription, from, ..
                        } => open(&tx, subscription, *from, now)?,
                        Request::InsertDeadLetter { row, .. } => insert_letter(&tx, row)?,
                        Request::SaveRetry {
                            subscription,
                            position,
                            attempts,
                            next_attempt_at,
                            first_failed_at,
                            ..
                        } => {
                            tx.execute(
                                "INSERT OR REPLACE INTO retries
                                 (subscription, position, attempts, next_attempt_at, first_failed_at)
                                 VALUES (?1, ?2, ?3, ?4, ?5)",
                                params![subscription, *position as i64, attempts, next_attempt_at, first_failed_at],
                            )?;
                            *position
                        }
                        Request::ClearRetry {
                            subscription,
                            position,
                            ..
                        } => {
                            tx.execute(
                                "DELETE FROM retries WHERE subscription = ?1 AND position = ?2",
                                params![subscription, *position as i64],
                            )?;
                            *position
                        }
                        Request::MarkReplay { id, .. } => tx.execute(
                            "UPDATE dead_letters SET replay_requested_at = ?2
                             WHERE id = ?1 AND replay_requested_at IS NULL",
                            params![*id as i64, now],
                        )? as Position,
                        Request::DiscardDeadLetter { id, .. } => tx.execute(
                            "DELETE FROM dead_letters WHERE id = ?1 AND replay_requested_at IS NULL",
                            [*id as i64],
                        )? as Position,
                        Request::RemoveDeadLetter { id, .. } => tx
                            .execute("DELETE FROM dead_letters WHERE id = ?1", [*id as i64])?
                            as Position,
                        Request::Forget { subscription, .. } => {
                            // Checked here, on the writer, where no `Open`
                            // can slip in between the check and the delete.
                            forgotten.push(if open_cursors.contains(subscription) {
                                None
                            } else {
                                Some(forget(&tx, subscription)?)
                            });
                            0
                        }
                        Request::Requeue {
                            subscription, rows, ..
                        } => requeue(&tx, subscription, rows)?,
                        Request::Quarantine {
                            subscription,
                            position,
                            name,
                            version,
                            payload,
                            reason,
                            ..
                        } => {
                            // Only a row this subscription already quarantined
                            // (read again after a crash) is skipped; `OR IGNORE`
                            // would also skip a row the table refuses.
                            let inserted = tx.execute(
                                "INSERT INTO quarantine
                                 (subscription, position, name, version, payload, reason, quarantined_at)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                                 ON CONFLICT (subscription, position) DO NOTHING",
                                params![subscription, *position as i64, name, version, payload, reason, now],
                            );
                            match inserted {
                                Ok(_) => {}
                                // A failed statement is undone by itself while
                                // the transaction stays open: the refusal is
                                // this cursor's to handle, not the producers'
                                // whose appends share the group.
                                Err(err) if !tx.is_autocommit() => {
                                    refused.push((results.len(), Failure::of(err)));
                                }
                                Err(err) => return Err(err),
                            }
                            *position
                        }
                    };
                    results.push(result);
                }
            }
            tx.commit()
        })();
        let failure = outcome.err().map(|err| {
            tracing::error!(error = %err, requests = batch.len(), "eventbus SQLite commit failed");
            Failure::of(err)
        });
        // Publish the new head before answering anyone, so a caller whose
        // `notify` returned already sees its event counted (`drain` relies
        // on that).
        if failure.is_none() {
            let appended = batch
                .iter()
                .zip(&results)
                .filter(|(r, _)| matches!(r, Request::Append { .. }))
                .map(|(_, position)| *position)
                .max();
            if let Some(last) = appended {
                self.head.store(last + 1, SeqCst);
                self.head_tx.send_replace(last + 1);
            }
        }
        let mut forgotten = forgotten.into_iter();
        for (i, request) in batch.drain(..).enumerate() {
            let result = match &failure {
                None => Ok(results[i]),
                Some(failure) => Err(failure.clone()),
            };
            match request {
                Request::Append { reply, .. }
                | Request::Open { reply, .. }
                | Request::InsertDeadLetter { reply, .. }
                | Request::Requeue { reply, .. }
                | Request::RemoveDeadLetter { reply, .. }
                | Request::MarkReplay { reply, .. }
                | Request::DiscardDeadLetter { reply, .. }
                | Request::SaveRetry { reply, .. }
                | Request::ClearRetry { reply, .. } => {
                    let _ = reply.send(result);
                }
                Request::Commit { reply, .. } => {
                    let _ = reply.send(result.map(drop));
                }
                Request::Quarantine { reply, .. } => {
                    let result = match refused.iter().find(|(at, _)| *at == i) {
                        Some((_, message)) => Err(message.clone()),
                        None => result,
                    };
                    let _ = reply.send(result);
                }
                Request::Forget {
                    subscription,
                    reply,
                } => {
                    let answer = match (&failure, forgotten.next().flatten()) {
                        (Some(failure), _) => Err(ForgetError::Log {
                            subscription,
                            source: failure.clone().into_error(&self.path),
                        }),
                        (None, Some(counts)) => Ok(counts),
                        (None, None) => Err(ForgetError::Running { subscription }),
                    };
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// Deletes one slice of the events every subscription has finished, by
    /// the retention policy; see [`prune`].
    fn prune(&mut self) -> rusqlite::Result<usize> {
        prune(&self.conn, self.head.load(SeqCst), &self.retention)
    }
}

/// Deletes the oldest events every subscription has finished, by the
/// retention policy, at most [`PRUNE_SLICE`] of them, and returns how many.
/// Never touches an event some subscription still needs.
fn prune(conn: &Connection, head: Position, retention: &Retention) -> rusqlite::Result<usize> {
    let head = head as i64;
    let slowest: i64 = conn.query_row(
        "SELECT COALESCE(MIN(position), ?1) FROM subscriptions",
        [head],
        |r| r.get(0),
    )?;
    // Saturate: a limit past what an i64 holds (`Duration::MAX`,
    // `u64::MAX`) means no limit, and must not wrap into "prune all".
    let max_age = i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
    let max_events = i64::try_from(retention.max_events).unwrap_or(i64::MAX);
    let cutoff_time = now_millis().saturating_sub(max_age);
    let cutoff_count = head.saturating_sub(max_events);
    // The bundled SQLite has no `DELETE .. LIMIT`; the subquery walks the
    // primary key from the oldest event, so a slice costs its own rows only.
    conn.execute(
        "DELETE FROM events WHERE position IN (
             SELECT position FROM events
             WHERE position < ?1 AND (appended_at < ?2 OR position < ?3)
             ORDER BY position LIMIT ?4
         )",
        params![slowest, cutoff_time, cutoff_count, PRUNE_SLICE as i64],
    )
}

/// Deletes a subscription's rows from every table that keeps its state.
/// Stores a dead letter and returns its id. The table gives the id
/// (AUTOINCREMENT): never one a stored or removed letter had, and a plain
/// INSERT never replaces a row.
fn insert_letter(
    tx: &rusqlite::Transaction<'_>,
    row: &DeadLetterRow,
) -> rusqlite::Result<Position> {
    tx.prepare_cached(
        "INSERT INTO dead_letters
         (subscription, name, version, payload, errors, attempts, first_failed_at, last_failed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        row.subscription,
        row.name,
        row.version,
        row.payload,
        row.errors,
        row.attempts,
        row.first_failed_at,
        row.last_failed_at
    ])?;
    Ok(tx.last_insert_rowid() as Position)
}

/// Turns quarantined rows into dead letters of their subscription, each
/// only if this call took it out of the quarantine, so two requeues never
/// make two letters of one row. Returns how many moved.
fn requeue(
    tx: &rusqlite::Transaction<'_>,
    subscription: &str,
    rows: &[(Position, DeadLetterRow)],
) -> rusqlite::Result<Position> {
    let mut take =
        tx.prepare_cached("DELETE FROM quarantine WHERE subscription = ?1 AND position = ?2")?;
    let mut moved = 0;
    for (position, row) in rows {
        if take.execute(params![subscription, *position as i64])? == 1 {
            insert_letter(tx, row)?;
            moved += 1;
        }
    }
    Ok(moved)
}

fn forget(tx: &rusqlite::Transaction<'_>, subscription: &str) -> rusqlite::Result<Forgotten> {
    let delete = |table: &str, column: &str| {
        tx.execute(
            &format!("DELETE FROM {table} WHERE {column} = ?1"),
            [subscription],
        )
    };
    Ok(Forgotten {
        position: delete("subscriptions", "name")? > 0,
        retries: delete("retries", "subscription")?,
        quarantined: delete("quarantine", "subscription")?,
        dead_letters: delete("dead_letters", "subscription")?,
    })
}

fn open(
    tx: &rusqlite::Transaction<'_>,
    subscription: &str,
    from: StartFrom,
    now: i64,
) -> rusqlite::Result<Position> {
    let existing: Option<i64> = tx
        .query_row(
            "SELECT position FROM subscriptions WHERE name = ?1",
            [subscription],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(position) = existing {
        return Ok(position as Position);
    }
    let position: i64 = match from {
        StartFrom::Beginning => tx.query_row(
            "SELECT COALESCE(MIN(position), (SELECT COALESCE(MAX(position), 0) + 1 FROM events)) FROM events",
            [],
            |r| r.get(0),
        )?,
        StartFrom::Now => tx.query_row(
            "SELECT COALESCE(MAX(position), 0) + 1 FROM events",
            [],
            |r| r.get(0),
        )?,
    };
    tx.execute(
        "INSERT INTO subscriptions (name, position, created_at) VALUES (?1, ?2, ?3)",
        params![subscription, position, now],
    )?;
    Ok(position as Position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A log file with `count` events nobody needs any more.
    fn backlog(count: i64) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let conn = Connection::open(&path).unwrap();
        super::super::schema::create(&conn, &path).unwrap();
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
             INSERT INTO events (name, version, event_id, payload, appended_at)
             SELECT 'order.placed', 1, i, x'7b7d', 0 FROM n;"
        ))
        .unwrap();
        (dir, conn)
    }

    fn remaining(conn: &Connection) -> (i64, i64) {
        conn.query_row("SELECT COUNT(*), MIN(position) FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
    }

    #[test]
    fn a_backlog_is_pruned_one_slice_per_call_up_to_the_slowest_cursor() {
        let (_dir, conn) = backlog(25_000);
        conn.execute(
            "INSERT INTO subscriptions (name, position, created_at) VALUES ('billing', 22000, 0)",
            [],
        )
        .unwrap();
        let everything = Retention {
            max_age: Duration::ZERO,
            max_events: 0,
            every: Duration::ZERO,
        };
        let head = 25_001;
        assert_eq!(prune(&conn, head, &everything).unwrap(), 10_000);
        assert_eq!(remaining(&conn), (15_000, 10_001));
        assert_eq!(prune(&conn, head, &everything).unwrap(), 10_000);
        assert_eq!(prune(&conn, head, &everything).unwrap(), 1_999);
        assert_eq!(prune(&conn, head, &everything).unwrap(), 0);
        assert_eq!(
            remaining(&conn),
            (3_001, 22_000),
            "billing still needs these"
        );
    }
}
