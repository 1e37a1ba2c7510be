//! A subscription's cursor in the SQLite log: reads batches on a blocking
//! thread with its own connection, and commits its position through the
//! writer.

use super::writer::Request;
use super::{OpenCursor, backend};
use crate::event::AnyEvent;
use crate::log::{Batch, Cursor, LogError, Position};
use futures_util::future::BoxFuture;
use rusqlite::Connection;
use rusqlite::types::Value;
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

pub(crate) struct SqliteCursor {
    subscription: String,
    read: Position,
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

struct Row {
    position: Position,
    name: String,
    version: u32,
    payload: Vec<u8>,
}

impl SqliteCursor {
    pub(crate) fn new(
        subscription: String,
        start: Position,
        conn: Connection,
        requests: mpsc::Sender<Request>,
        head: watch::Receiver<Position>,
        closed: watch::Receiver<bool>,
        open: OpenCursor,
    ) -> Self {
        SqliteCursor {
            subscription,
            read: start,
            conn: Arc::new(Mutex::new(conn)),
            requests,
            head,
            closed,
            _open: open,
        }
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Row>, LogError> {
        let conn = Arc::clone(&self.conn);
        let from = self.read as i64;
        let limit = max.max(1) as i64;
        tokio::task::spawn_blocking(move || -> rusqlite::Result<Vec<Row>> {
            let conn = conn.lock().expect("cursor connection lock");
            let mut stmt = conn.prepare_cached(
                "SELECT position, name, version, payload FROM events
                 WHERE position >= ?1 ORDER BY position LIMIT ?2",
            )?;
            stmt.query_map([from, limit], |r| {
                // Read loosely: a row with a wrong column type is corrupt
                // data to quarantine, not a reason to stop the stream.
                let text = |v: Value| match v {
                    Value::Text(s) => s,
                    Value::Blob(b) => String::from_utf8_lossy(&b).into_owned(),
                    other => format!("{other:?}"),
                };
                let name = text(r.get::<_, Value>(1)?);
                let version = match r.get::<_, Value>(2)? {
                    Value::Integer(v) => u32::try_from(v).ok(),
                    _ => None,
                };
                let payload = match r.get::<_, Value>(3)? {
                    Value::Blob(b) => Some(b),
                    Value::Text(s) => Some(s.into_bytes()),
                    _ => None,
                };
                Ok(Row {
                    position: r.get::<_, i64>(0)? as Position,
                    name,
                    version: version.unwrap_or(0),
                    payload: payload.unwrap_or_default(),
                })
            })?
            .collect()
        })
        .await
        .map_err(|e| backend(e.to_string()))?
        .map_err(|e| backend(super::writer::describe(&e)))
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, LogError> {
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
                    match AnyEvent::from_json_bytes(&row.name, row.version, &row.payload) {
                        Ok(event) => events.push((row.position, event)),
                        Err(err) => self.quarantine(row, &err).await?,
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

    async fn quarantine(&self, row: Row, err: &crate::event::DecodeError) -> Result<(), LogError> {
        let reason = crate::dead_letter::error_chain(err).join(": ");
        tracing::error!(
            subscription = %self.subscription,
            position = row.position,
            event = %row.name,
            version = row.version,
            reason = %reason,
            "stored event does not decode; quarantined",
        );
        self.requests
            .send(Request::Quarantine {
                subscription: self.subscription.clone(),
                position: row.position,
                name: row.name,
                version: row.version,
                payload: row.payload,
                reason,
            })
            .await
            .map_err(|_| backend("the SQLite writer has stopped"))
    }
}

impl Cursor for SqliteCursor {
    fn next(&mut self, max: usize) -> BoxFuture<'_, Result<Option<Batch>, LogError>> {
        Box::pin(self.next_batch(max))
    }

    fn release(&mut self, up_to: Position) -> BoxFuture<'_, Result<(), LogError>> {
        let subscription = self.subscription.clone();
        Box::pin(async move {
            super::request(&self.requests, |reply| Request::Commit {
                subscription,
                position: up_to,
                reply,
            })
            .await
        })
    }

    fn position(&self) -> Position {
        self.read
    }
}
