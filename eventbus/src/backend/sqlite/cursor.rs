//! A subscription's cursor in the SQLite log: reads batches on a blocking
//! thread with its own connection, and commits its position through the
//! writer.

use super::writer::Request;
use super::{OpenCursor, SqliteError};
use crate::backend::{Batch, Position, ReadError, Reader};
use crate::event::AnyEvent;
use async_trait::async_trait;
use rusqlite::Connection;
use rusqlite::types::{Value, ValueRef};
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

pub(crate) struct SqliteCursor {
    subscription: String,
    path: std::path::PathBuf,
    read: Position,
    /// The last position committed.
    committed: Position,
    conn: Arc<Mutex<Connection>>,
    requests: mpsc::Sender<Request>,
    head: watch::Receiver<Position>,
    closed: watch::Receiver<bool>,
    /// Marks the subscription running until the cursor is dropped, so it
    /// cannot be forgotten under it.
    _open: OpenCursor,
}

impl fmt::Debug for SqliteCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteCursor")
            .field("subscription", &self.subscription)
            .field("read", &self.read)
            .finish()
    }
}

/// The most payload bytes one read takes, past its first row.
///
/// `max_demand` bounds a read by count, which is enough for events of
/// ordinary size: 1000 events of a few KiB stay well under this. A backlog
/// of large events (a restart after an outage) would otherwise be read
/// `max_demand` at once: 30 events of 10 MB peaked at 611 MiB. A read always
/// takes its first row, so an event larger than this still passes, alone.
const READ_BUDGET: usize = 8 << 20;

/// A stored row, read loosely: a column of the wrong kind is corrupt data
/// to quarantine, not a reason to stop the stream.
struct Row {
    position: Position,
    /// The name as stored, rendered lossily when it is not UTF-8: the
    /// quarantine table keeps it as text.
    name: String,
    /// The version as stored, whatever its type, for the quarantine table.
    version: Value,
    /// The payload's bytes as stored.
    payload: Vec<u8>,
    /// The version to decode at, or what is wrong with the stored columns.
    readable: Result<u32, String>,
}

impl Row {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        let mut wrong = Vec::new();
        let name = match r.get_ref(1)? {
            ValueRef::Text(bytes) | ValueRef::Blob(bytes) => match std::str::from_utf8(bytes) {
                Ok(name) => name.to_owned(),
                Err(_) => {
                    wrong.push("the stored name is not valid UTF-8".to_owned());
                    String::from_utf8_lossy(bytes).into_owned()
                }
            },
            other => {
                let shown = show(other);
                wrong.push(format!("the stored name `{shown}` is not text"));
                shown
            }
        };
        let version = r.get_ref(2)?;
        // `#[event]` versions run from 1 to `u32::MAX`; anything else would
        // decode as a version no binary can have.
        let number = match version {
            ValueRef::Integer(v) => u32::try_from(v).ok().filter(|v| *v >= 1),
            _ => None,
        };
        if number.is_none() {
            wrong.push(format!(
                "the stored version `{}` is not a version number",
                show(version)
            ));
        }
        let payload = match r.get_ref(3)? {
            ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes.to_vec(),
            other => {
                wrong.push(format!("the stored payload `{}` is not JSON", show(other)));
                show(other).into_bytes()
            }
        };
        Ok(Row {
            position: r.get::<_, i64>(0)? as Position,
            name,
            version: match version {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Integer(v),
                ValueRef::Real(v) => Value::Real(v),
                ValueRef::Text(bytes) => Value::Text(String::from_utf8_lossy(bytes).into_owned()),
                ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
            },
            payload,
            readable: match number {
                Some(version) if wrong.is_empty() => Ok(version),
                _ => Err(wrong.join("; ")),
            },
        })
    }

    /// The event, or why the row is not one: a reason for the quarantine
    /// table that says what is wrong with the row as stored.
    fn decode(&self) -> Result<AnyEvent, String> {
        let version = self.readable.as_ref().map_err(Clone::clone)?;
        crate::registry::registry()
            .decode(&self.name, *version, &self.payload)
            .map_err(|err| {
                // JSON is UTF-8: say so, rather than where the parser tripped.
                // Checked only on failure, so a good row pays nothing for it.
                if std::str::from_utf8(&self.payload).is_err() {
                    "the stored payload is not valid UTF-8".to_owned()
                } else {
                    crate::failure::error_chain(&err).join(": ")
                }
            })
    }
}

/// The rows from position `from` on: at most `max` of them, and no more
/// than [`READ_BUDGET`] payload bytes past the first.
fn read_rows(conn: &Connection, from: Position, max: usize) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(
        "SELECT position, name, version, payload FROM events
         WHERE position >= ?1 ORDER BY position LIMIT ?2",
    )?;
    let mut rows = stmt.query([from as i64, max as i64])?;
    let mut read = Vec::new();
    let mut bytes = 0;
    while let Some(row) = rows.next()? {
        // Measured before the payload is copied, so a row that does not
        // fit is never held.
        let len = match row.get_ref(3)? {
            ValueRef::Text(payload) | ValueRef::Blob(payload) => payload.len(),
            _ => 0,
        };
        if !read.is_empty() && bytes + len > READ_BUDGET {
            break;
        }
        bytes += len;
        read.push(Row::read(row)?);
    }
    Ok(read)
}

/// A stored value as a reason shows it: text as it reads, bytes lossily.
fn show(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(v) => v.to_string(),
        ValueRef::Real(v) => v.to_string(),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
    }
}

impl SqliteCursor {
    pub(crate) fn new(
        log: &super::Shared,
        subscription: String,
        start: Position,
        conn: Connection,
        open: OpenCursor,
    ) -> Self {
        SqliteCursor {
            subscription,
            path: log.path.clone(),
            read: start,
            committed: start,
            conn: Arc::new(Mutex::new(conn)),
            requests: log.requests.clone(),
            head: log.head_rx.clone(),
            closed: log.closed_tx.subscribe(),
            _open: open,
        }
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Row>, SqliteError> {
        let conn = Arc::clone(&self.conn);
        let from = self.read;
        let limit = max.max(1);
        tokio::task::spawn_blocking(move || {
            read_rows(&conn.lock().expect("cursor connection lock"), from, limit)
        })
        .await
        .map_err(|e| SqliteError::task(&self.path, e))?
        .map_err(|e| SqliteError::sqlite(&self.path, e))
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, ReadError> {
        loop {
            let closed = *self.closed.borrow();
            let head = *self.head.borrow_and_update();
            if self.read < head {
                let rows = self.fetch(max).await?;
                let Some(last) = rows.last().map(|r| r.position) else {
                    // Rows below the head can only be missing if pruned,
                    // which never happens to rows a cursor still needs.
                    self.read = head;
                    continue;
                };
                let mut events = Vec::with_capacity(rows.len());
                for row in rows {
                    match row.decode() {
                        Ok(event) => events.push((row.position, event)),
                        Err(reason) => self.quarantine(row, reason).await?,
                    }
                }
                self.read = last + 1;
                return Ok(Some(Batch::from_events_until(events, self.read)));
            }
            if closed {
                return Ok(None);
            }
            tokio::select! {
                changed = self.head.changed() => {
                    if changed.is_err() {
                        return Ok(None);
                    }
                }
                _ = self.closed.changed() => {}
            }
        }
    }

    async fn quarantine(&self, row: Row, reason: String) -> Result<(), ReadError> {
        let position = row.position;
        let (event, version) = (row.name.clone(), show((&row.version).into()));
        // Quarantining is part of releasing the row: until it is stored,
        // the read fails and `read` stays before the row, so the runner
        // reads it again rather than a later commit passing over it.
        super::request(&self.requests, &self.path, |reply| Request::Quarantine {
            subscription: self.subscription.clone(),
            position,
            name: row.name,
            version: row.version,
            payload: row.payload,
            reason: reason.clone(),
            reply,
        })
        .await
        .map_err(|source| {
            let damaged = source.is_damaged();
            let failed = Box::new(QuarantineFailed { position, source });
            if damaged {
                ReadError::Damaged(failed)
            } else {
                ReadError::Failed(failed)
            }
        })?;
        tracing::error!(
            subscription = %self.subscription,
            position,
            event = %event,
            version = %version,
            reason = %reason,
            "stored event does not decode; quarantined",
        );
        Ok(())
    }
}

/// A row that does not decode could not be stored in the quarantine table,
/// so the cursor stays on it.
#[derive(Debug, thiserror::Error)]
#[error("could not quarantine the unreadable row at position {position}; it is read again")]
struct QuarantineFailed {
    position: Position,
    #[source]
    source: SqliteError,
}

#[async_trait]
impl Reader for SqliteCursor {
    async fn next(&mut self, max: usize) -> Result<Option<Batch>, ReadError> {
        self.next_batch(max).await
    }

    async fn commit(&mut self, up_to: Position) -> Result<(), ReadError> {
        super::request(&self.requests, &self.path, |reply| Request::Commit {
            subscription: self.subscription.clone(),
            position: up_to,
            reply,
        })
        .await?;
        self.committed = self.committed.max(up_to);
        Ok(())
    }

    fn position(&self) -> Position {
        self.read
    }

    fn lag(&self) -> Option<u64> {
        Some(self.head.borrow().saturating_sub(self.committed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// A log file holding events with payloads of these sizes, from
    /// position 1 on.
    fn log_with(payloads: &[usize]) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let conn = super::super::connect(&path).unwrap();
        super::super::schema::create(&conn, &path).unwrap();
        for &len in payloads {
            conn.execute(
                "INSERT INTO events (name, version, event_id, payload, appended_at)
                 VALUES ('big', 1, 'x', zeroblob(?1), 0)",
                [len as i64],
            )
            .unwrap();
        }
        (dir, conn)
    }

    /// Reads from the start with a count bound of 1000, as a subscription
    /// with `max_demand(1000)` catching up after a restart does: each batch
    /// by positions and payload bytes.
    fn batches(conn: &Connection) -> Vec<(Vec<Position>, usize)> {
        let mut from = 1;
        let mut batches = Vec::new();
        loop {
            let rows = read_rows(conn, from, 1000).unwrap();
            let Some(last) = rows.last() else {
                return batches;
            };
            from = last.position + 1;
            batches.push((
                rows.iter().map(|r| r.position).collect(),
                rows.iter().map(|r| r.payload.len()).sum(),
            ));
        }
    }

    #[test]
    fn a_backlog_of_large_events_is_read_in_batches_bounded_by_bytes() {
        let (_dir, conn) = log_with(&[MIB; 40]);
        let batches = batches(&conn);
        assert!(batches.len() > 1, "40 MiB were read at once");
        for (positions, bytes) in &batches {
            assert!(*bytes <= READ_BUDGET, "a batch held {bytes} bytes");
            assert!(!positions.is_empty());
        }
        // Every event, once, in order.
        let read: Vec<Position> = batches.into_iter().flat_map(|(p, _)| p).collect();
        assert_eq!(read, (1..=40).collect::<Vec<_>>());
    }

    #[test]
    fn an_event_larger_than_the_budget_is_read_alone() {
        let (_dir, conn) = log_with(&[1, READ_BUDGET + 1, 1]);
        let positions: Vec<Vec<Position>> = batches(&conn).into_iter().map(|(p, _)| p).collect();
        assert_eq!(positions, [vec![1], vec![2], vec![3]]);
    }
}
