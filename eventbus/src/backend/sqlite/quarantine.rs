//! Rows the log quarantined for a subscription because they did not decode:
//! list them, and once a binary that reads them runs (a rollback rolled
//! forward, a fixed upcast), send them back as dead letters to replay.

use super::SqliteError;
use super::stores::millis_to_time;
use super::writer::{DeadLetterRow, Request, now_millis};
use super::{Shared, SqliteLog};
use crate::backend::Position;
use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;

/// A stored event that a subscription could not decode, set aside with the
/// reason so the stream went on; from [`SqliteLog::quarantined`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quarantined {
    /// The subscription that read it.
    pub subscription: String,
    /// Its position in the log.
    pub position: Position,
    /// The stored event name (lossily, when it was not text).
    pub name: String,
    /// The stored version, as stored: it may be what was wrong.
    pub version: String,
    /// Why it did not decode.
    pub reason: String,
    /// The stored payload, byte for byte.
    pub payload: Vec<u8>,
    /// When it was set aside.
    pub quarantined_at: DateTime<Utc>,
}

/// What [`SqliteLog::requeue_quarantined`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Requeued {
    /// Rows that decode now, moved to the subscription's dead letters.
    pub requeued: u64,
    /// Rows that still do not decode; they stay quarantined.
    pub still_quarantined: u64,
}

impl SqliteLog {
    /// The rows quarantined for `subscription`, in log order.
    ///
    /// # Errors
    ///
    /// [`SqliteError`] when the file cannot be read.
    pub async fn quarantined(&self, subscription: &str) -> Result<Vec<Quarantined>, SqliteError> {
        read_quarantined(&self.shared, subscription).await
    }

    /// Gives the rows quarantined for `subscription` another chance: those
    /// that decode with this binary (rolled forward to a version that knows
    /// them, or with an upcast that was missing) become dead letters of the
    /// subscription, to [replay](crate::DeadLetters::replay_all) like any
    /// other; the rest stay quarantined. A row moves in one transaction:
    /// it is never both, nor neither.
    ///
    /// # Errors
    ///
    /// [`SqliteError`] when the file cannot be read or written; nothing moved
    /// then.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("events.db");
    /// use eventbus::{Bus, SqliteLog};
    ///
    /// let log = SqliteLog::open(&path).await?;
    /// let bus = Bus::builder().backend(log.clone()).build()?;
    /// # bus.subscribe("billing", eventbus::testing::Recorder::new()).start().await?;
    /// let requeued = log.requeue_quarantined("billing").await?;
    /// if requeued.requeued > 0 {
    ///     bus.dead_letters().replay_all("billing").await?;
    /// }
    /// # bus.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn requeue_quarantined(&self, subscription: &str) -> Result<Requeued, SqliteError> {
        let rows = read_quarantined(&self.shared, subscription).await?;
        let total = rows.len() as u64;
        let now = now_millis();
        let letters: Vec<(Position, DeadLetterRow)> = rows
            .into_iter()
            .filter_map(|row| {
                let version = row.version.parse::<u32>().ok()?;
                crate::registry::registry()
                    .decode(&row.name, version, &row.payload)
                    .ok()?;
                let letter = DeadLetterRow {
                    id: 0,
                    subscription: row.subscription,
                    name: row.name,
                    version,
                    payload: row.payload,
                    errors: serde_json::to_string(&[format!("quarantined: {}", row.reason)])
                        .unwrap_or_default(),
                    attempts: 0,
                    first_failed_at: row.quarantined_at.timestamp_millis(),
                    last_failed_at: now,
                    replaying: false,
                };
                Some((row.position, letter))
            })
            .collect();
        let subscription = subscription.to_owned();
        let moved = self
            .shared
            .request(|reply| Request::Requeue {
                subscription,
                rows: letters,
                reply,
            })
            .await?;
        Ok(Requeued {
            requeued: moved,
            still_quarantined: total - moved,
        })
    }
}

async fn read_quarantined(
    shared: &Shared,
    subscription: &str,
) -> Result<Vec<Quarantined>, SqliteError> {
    let subscription = subscription.to_owned();
    shared
        .read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT subscription, position, name, version, reason, payload, quarantined_at
                 FROM quarantine WHERE subscription = ?1 ORDER BY position",
            )?;
            stmt.query_map([&subscription], |r| {
                let bytes = |i: usize| -> rusqlite::Result<Vec<u8>> {
                    Ok(match r.get_ref(i)? {
                        ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
                        ValueRef::Integer(v) => v.to_string().into_bytes(),
                        ValueRef::Real(v) => v.to_string().into_bytes(),
                        ValueRef::Null => Vec::new(),
                    })
                };
                let text = |i: usize| -> rusqlite::Result<String> {
                    Ok(String::from_utf8_lossy(&bytes(i)?).into_owned())
                };
                Ok(Quarantined {
                    subscription: text(0)?,
                    position: r.get::<_, i64>(1)? as Position,
                    name: text(2)?,
                    version: text(3)?,
                    reason: text(4)?,
                    payload: bytes(5)?,
                    quarantined_at: millis_to_time(r.get(6)?),
                })
            })?
            .collect()
        })
        .await
}
