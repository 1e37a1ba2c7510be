//! One subscription's reader of the outbox: claims the subscription on a
//! lease, reads committed events in (transaction id, position) order below
//! the oldest running transaction, and commits the last finished one.
//!
//! Positions handed to the subscription are the reader's own: the outbox's
//! order is a pair (transaction id, position), not one number, so each row
//! is numbered `transaction id << 24 | its rank in the transaction`. That
//! number grows in read order and is the same in every process and after
//! every restart, so retry schedules are kept under it. The reader maps it
//! back to its row when the subscription commits.

// Every dynamic statement only puts in the schema name, which is
// checked to be a plain identifier when the outbox connects.
use super::Inner;
use super::error::PostgresError;
use crate::backend::{Batch, Position, ReadError, Reader, StartFrom};
use crate::event::AnyEvent;
use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use std::collections::VecDeque;
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

/// A row's place in the outbox's read order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RowKey {
    /// The writing transaction's id, as PostgreSQL prints an `xid8`.
    tx_id: String,
    position: i64,
    /// How many rows of the same transaction come before it; -1 for a
    /// place before the transaction's first row.
    rank: i64,
}

/// The position subscriptions see the first row of transaction `tx_id` at.
pub(super) fn first_in(tx_id: &str) -> Result<Position, PostgresError> {
    RowKey {
        tx_id: tx_id.to_owned(),
        position: 0,
        rank: 0,
    }
    .key()
}

/// Bits of a reader position that hold the rank within a transaction.
const RANK_BITS: u32 = 24;

impl RowKey {
    /// The position the subscription sees for this row.
    fn key(&self) -> Result<Position, PostgresError> {
        let tx: u64 = self.tx_id.parse().unwrap_or(u64::MAX);
        if tx >= 1 << (64 - RANK_BITS) || self.rank >= 1 << RANK_BITS {
            return Err(PostgresError::OutOfRange(format!(
                "transaction {} with {} events before this one",
                self.tx_id, self.rank
            )));
        }
        Ok((tx << RANK_BITS) | self.rank.max(0) as u64)
    }

    /// The position after this place.
    fn after(&self) -> Result<Position, PostgresError> {
        Ok(if self.rank < 0 {
            self.key()?
        } else {
            self.key()? + 1
        })
    }
}

pub(crate) struct PgReader {
    inner: Arc<Inner>,
    subscription: String,
    /// The next position handed out.
    next: Position,
    /// Rows handed out and not yet committed, in order, by the position
    /// they were handed out at.
    pending: VecDeque<(Position, RowKey)>,
    /// The last row read: the next read starts after it.
    read: RowKey,
    /// Set when this process holds the subscription.
    held: Option<Lease>,
    /// This reader's identity on the subscription's lease: one per
    /// reader, so two readers of one process never share a claim.
    owner: uuid::Uuid,
    /// The position after the newest event, and how many events after the
    /// committed place are visible, as of the last look.
    head: Position,
    lag: u64,
    /// The newest row when the outbox was closed: reading stops there, and
    /// what other processes write after it is theirs to deliver.
    close_bound: Option<RowKey>,
    /// Why committed events wait, when an old transaction holds the
    /// horizon back; and when that was last looked at.
    held_back: Option<String>,
    horizon_checked: Option<tokio::time::Instant>,
    /// Checks in a row that found events held back by a transaction no
    /// session shows: reported only once that persists.
    unseen_holds: u32,
    /// Set when a followed move of the holder's cursor was not yet
    /// returned as a batch.
    follow_unreported: bool,
}

/// The subscription's lease, renewed in the background while held.
struct Lease {
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl fmt::Debug for PgReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgReader")
            .field("subscription", &self.subscription)
            .field("next", &self.next)
            .field("read", &self.read)
            .field("held", &self.held.is_some())
            .finish()
    }
}

/// The most events the lag counts: past it, it says this many.
const LAG_COUNTED: u64 = 10_000;

/// Rows read at once at most, whatever the subscription asks for.
const MAX_ROWS: usize = 1000;

impl PgReader {
    pub(crate) async fn open(
        inner: Arc<Inner>,
        subscription: &str,
        from: StartFrom,
    ) -> Result<PgReader, PostgresError> {
        let schema = &inner.schema;
        let recorded = match from {
            StartFrom::Beginning => sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {schema}.cursors (subscription, tx_id, position)
                 VALUES ($1, '0', 0) ON CONFLICT (subscription) DO NOTHING"
            ))),
            // Everything this snapshot sees counts as before the start;
            // rows of transactions still running then come after it.
            StartFrom::Now => sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {schema}.cursors (subscription, tx_id, position, start_snapshot)
                 SELECT $1, pg_snapshot_xmin(s), -1, s FROM pg_current_snapshot() AS s
                 ON CONFLICT (subscription) DO NOTHING"
            ))),
        };
        recorded
            .bind(subscription)
            .execute(&inner.pool)
            .await
            .map_err(PostgresError::query("recording a new subscription"))?;
        let (tx_id, position): (String, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT tx_id::text, position FROM {schema}.cursors WHERE subscription = $1"
        )))
        .bind(subscription)
        .fetch_one(&inner.pool)
        .await
        .map_err(PostgresError::query("reading a subscription's position"))?;
        let mut reader = PgReader {
            inner,
            subscription: subscription.to_owned(),
            next: 0,
            pending: VecDeque::new(),
            read: RowKey {
                tx_id: String::new(),
                position: 0,
                rank: -1,
            },
            held: None,
            owner: uuid::Uuid::now_v7(),
            head: 0,
            lag: 0,
            close_bound: None,
            held_back: None,
            horizon_checked: None,
            unseen_holds: 0,
            follow_unreported: false,
        };
        reader.place(tx_id, position).await?;
        // Claimed at once, not at the first read: a subscription started
        // paused holds it too, and whether this process holds it is known
        // from the start (replays run only in the holder).
        reader.claim().await?;
        reader.look().await?;
        Ok(reader)
    }

    /// Reads on after the row (`tx_id`, `position`): the subscription's
    /// committed place.
    async fn place(&mut self, tx_id: String, position: i64) -> Result<(), PostgresError> {
        let rank: i64 = if position < 0 {
            -1
        } else {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM {}.events WHERE tx_id = $1::xid8 AND position < $2",
                self.inner.schema
            )))
            .bind(&tx_id)
            .bind(position)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(PostgresError::query("finding a subscription's place"))?
        };
        self.read = RowKey {
            tx_id,
            position,
            rank,
        };
        self.next = self.read.after()?;
        Ok(())
    }

    /// Takes the subscription if nobody holds it, or its holder's lease
    /// ran out; then reads on from its committed row. `false` when another
    /// process holds it.
    async fn claim(&mut self) -> Result<bool, PostgresError> {
        let inner = &self.inner;
        let claimed: Option<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE {}.cursors
             SET owner = $2, lease_until = now() + make_interval(secs => $3), updated_at = now()
             WHERE subscription = $1 AND (owner IS NULL OR owner = $2 OR lease_until < now())
             RETURNING tx_id::text, position",
            inner.schema
        )))
        .bind(&self.subscription)
        .bind(self.owner)
        .bind(inner.lease.as_secs_f64())
        .fetch_optional(&inner.pool)
        .await
        .map_err(PostgresError::query("claiming a subscription"))?;
        let Some((tx_id, position)) = claimed else {
            return Ok(false);
        };
        // What another holder committed since, or what this one committed
        // before a restart: positions handed out start over from here.
        tracing::debug!(subscription = %self.subscription, %tx_id, position, "claimed the subscription");
        self.place(tx_id, position).await?;
        self.pending.clear();
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(
            Arc::clone(&self.inner),
            self.subscription.clone(),
            self.owner,
            Arc::clone(&lost),
        ));
        self.held = Some(Lease { lost, renewer });
        Ok(true)
    }

    fn lost(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|lease| lease.lost.load(SeqCst))
    }

    fn claim_lost(&self) -> ReadError {
        ReadError::ClaimLost(format!(
            "the lease on `{}` ran out and another process took the subscription over",
            self.subscription
        ))
    }

    async fn read_rows(&mut self, max: usize) -> Result<Option<Batch>, PostgresError> {
        let inner = Arc::clone(&self.inner);
        let schema = &inner.schema;
        let limit = max.clamp(1, MAX_ROWS);
        let rows: Vec<(i64, String, String, i32, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT e.position, e.tx_id::text AS tx_text, e.name, e.version, e.payload::text
             FROM {schema}.events e, {schema}.cursors c
             WHERE c.subscription = $4
               AND (e.tx_id, e.position) > ($1::xid8, $2)
               AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
               AND (c.start_snapshot IS NULL OR NOT pg_visible_in_snapshot(e.tx_id, c.start_snapshot))
               AND (e.tx_id, e.position) <= ($5::xid8, $6)
             ORDER BY e.tx_id, e.position LIMIT $3"
        )))
        .bind(&self.read.tx_id)
        .bind(self.read.position)
        .bind(limit as i64)
        .bind(&self.subscription)
        .bind(self.close_bound.as_ref().map_or("18446744073709551615", |b| b.tx_id.as_str()))
        .bind(self.close_bound.as_ref().map_or(i64::MAX, |b| b.position))
        .fetch_all(&inner.pool)
        .await
        .map_err(PostgresError::query("reading events"))?;
        if rows.is_empty() {
            return Ok(None);
        }
        tracing::trace!(
            subscription = %self.subscription,
            after = ?self.read,
            rows = rows.len(),
            first = ?(&rows[0].1, rows[0].0),
            "read events",
        );
        let mut events = Vec::with_capacity(rows.len());
        let mut keys = Vec::with_capacity(rows.len());
        let mut last = self.read.clone();
        for (position, tx_id, name, version, payload) in rows {
            let rank = if tx_id == last.tx_id {
                last.rank + 1
            } else {
                0
            };
            let row = RowKey {
                tx_id,
                position,
                rank,
            };
            let at = row.key()?;
            match decode(&name, version, &payload) {
                Ok(event) => events.push((at, event)),
                Err(reason) => {
                    tracing::error!(
                        subscription = %self.subscription,
                        position,
                        event = %name,
                        %reason,
                        "an event in the outbox does not decode; it is quarantined and the subscription goes on",
                    );
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {schema}.quarantine (subscription, position, name, version, payload, reason)
                         VALUES ($1, $2, $3, $4, $5::jsonb, $6) ON CONFLICT DO NOTHING"
                    )))
                    .bind(&self.subscription)
                    .bind(position)
                    .bind(&name)
                    .bind(version)
                    .bind(&payload)
                    .bind(&reason)
                    .execute(&inner.pool)
                    .await
                    .map_err(PostgresError::query("quarantining an event that does not decode"))?;
                }
            }
            keys.push((at, row.clone()));
            last = row;
        }
        // Only now, with nothing left to await: a read cut short changes
        // nothing, and is read again.
        let end = last.after()?;
        self.pending.extend(keys);
        self.next = end;
        self.read = last;
        Ok(Some(Batch::from_events_until(events, end)))
    }

    /// The newest row of the outbox, and where it leaves the subscription:
    /// `head` and `lag`, as of now.
    async fn look(&mut self) -> Result<(), PostgresError> {
        let schema = &self.inner.schema;
        let newest = self.newest().await?;
        self.head = if newest.rank < 0 {
            self.next
        } else {
            newest.after()?.max(self.next)
        };
        // Counted up to a bound, so a subscription far behind does not
        // scan its whole backlog at every commit.
        let lag: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM (SELECT 1 FROM {schema}.events e, {schema}.cursors c
             WHERE c.subscription = $3 AND (e.tx_id, e.position) > ($1::xid8, $2)
               AND (c.start_snapshot IS NULL OR NOT pg_visible_in_snapshot(e.tx_id, c.start_snapshot))
             LIMIT {LAG_COUNTED}) AS behind"
        )))
        .bind(&self.read.tx_id)
        .bind(self.read.position)
        .bind(&self.subscription)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(PostgresError::query("counting a subscription's events to go"))?;
        self.lag = lag.max(0) as u64 + self.pending.len() as u64;
        Ok(())
    }
}

/// Committed events waiting behind the horizon, and the session whose
/// transaction holds it, if one does: its pid, state and age in seconds.
type HeldBack = (i64, Option<i32>, Option<String>, Option<f64>);

/// How often a subscription with nothing to read looks whether committed
/// events wait behind an old transaction.
const HORIZON_CHECK: Duration = Duration::from_secs(2);

/// How long a transaction may hold committed events back before a
/// subscription reports it.
const HORIZON_PATIENCE: Duration = Duration::from_secs(5);

impl PgReader {
    /// Looks, at most every [`HORIZON_CHECK`], whether committed events wait
    /// behind a transaction open for longer than [`HORIZON_PATIENCE`], and
    /// names it. Returns whether what [`Reader::held_back`] says changed.
    async fn horizon_changed(&mut self) -> Result<bool, PostgresError> {
        let now = tokio::time::Instant::now();
        if self
            .horizon_checked
            .is_some_and(|at| now.duration_since(at) < HORIZON_CHECK)
        {
            return Ok(false);
        }
        self.horizon_checked = Some(now);
        let schema = &self.inner.schema;
        // Committed events at or past the horizon wait for it; the session
        // whose transaction id is the horizon holds it (compared as a
        // 32-bit `xid`, as pg_stat_activity shows it). A horizon held by
        // something without a session (a prepared transaction, a
        // replication slot) is reported without one.
        let found: Option<HeldBack> = sqlx::query_as(AssertSqlSafe(format!(
            "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
                      waiting AS (
                          SELECT count(*) AS n FROM (
                              SELECT 1 FROM {schema}.events e, {schema}.cursors c, h
                              WHERE c.subscription = $3
                                AND e.tx_id >= h.xmin AND (e.tx_id, e.position) > ($1::xid8, $2)
                                AND (c.start_snapshot IS NULL
                                     OR NOT pg_visible_in_snapshot(e.tx_id, c.start_snapshot))
                              LIMIT 10000) AS w)
                 SELECT waiting.n, a.pid, a.state,
                        extract(epoch FROM now() - a.xact_start)::float8
                 FROM waiting, h
                 LEFT JOIN pg_stat_activity a
                   ON a.backend_xid = ((h.xmin::text::numeric % 4294967296)::text)::xid
                 WHERE waiting.n > 0
                 LIMIT 1"
        )))
        .bind(&self.read.tx_id)
        .bind(self.read.position)
        .bind(&self.subscription)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(PostgresError::query(
            "looking for a transaction holding events back",
        ))?;
        // A hold no session shows may be a transaction that ended between
        // the two looks: only one found on several checks in a row counts.
        self.unseen_holds = match &found {
            Some((_, None, _, _)) => self.unseen_holds + 1,
            _ => 0,
        };
        let unseen_holds = self.unseen_holds;
        let held_back = found.and_then(|(waiting, pid, state, open_for)| {
            let open_for = Duration::from_secs_f64(open_for.unwrap_or(0.0).max(0.0));
            match pid {
                Some(pid) if open_for >= HORIZON_PATIENCE => Some(format!(
                    "{waiting} committed events wait behind transaction of PostgreSQL session {pid} ({}, open for {}s); the outbox delivers only below the oldest running transaction, so they go out once it ends",
                    state.as_deref().unwrap_or("unknown state"),
                    open_for.as_secs(),
                )),
                Some(_) => None,
                None if u64::from(unseen_holds) * HORIZON_CHECK.as_secs() >= HORIZON_PATIENCE.as_secs() => {
                    Some(format!(
                        "{waiting} committed events wait behind the oldest running transaction, which no session this role may see shows (a prepared transaction, or another role's session without pg_read_all_stats); the outbox delivers only below it"
                    ))
                }
                None => None,
            }
        });
        let changed = held_back != self.held_back;
        self.held_back = held_back;
        Ok(changed)
    }

    /// The newest row of the outbox, ranked; a place before everything
    /// (rank -1) when it is empty.
    async fn newest(&self) -> Result<RowKey, PostgresError> {
        let schema = &self.inner.schema;
        let newest: Option<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT e.tx_id::text AS tx_text, e.position FROM {schema}.events e
             ORDER BY e.tx_id DESC, e.position DESC LIMIT 1"
        )))
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(PostgresError::query("finding the newest event"))?;
        let Some((tx_id, position)) = newest else {
            return Ok(RowKey {
                tx_id: "0".to_owned(),
                position: 0,
                rank: -1,
            });
        };
        let rank: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.events WHERE tx_id = $1::xid8 AND position < $2"
        )))
        .bind(&tx_id)
        .bind(position)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(PostgresError::query("finding the newest event"))?;
        Ok(RowKey {
            tx_id,
            position,
            rank,
        })
    }
}

/// Decodes a row, or says why it is not an event of this binary.
fn decode(name: &str, version: i32, payload: &str) -> Result<AnyEvent, String> {
    let version = u32::try_from(version)
        .map_err(|_| format!("the stored version {version} is not a version"))?;
    crate::registry::registry()
        .decode(name, version, payload.as_bytes())
        .map_err(|err| crate::failure::error_chain(&err).join(": "))
}

/// Renews the lease of `subscription` a few times per lease; sets `lost`
/// and wakes the reader when it finds another process holds it.
async fn renew(inner: Arc<Inner>, subscription: String, owner: uuid::Uuid, lost: Arc<AtomicBool>) {
    let every = inner.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let renewed = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {}.cursors SET lease_until = now() + make_interval(secs => $3)
             WHERE subscription = $1 AND owner = $2",
            inner.schema
        )))
        .bind(&subscription)
        .bind(owner)
        .bind(inner.lease.as_secs_f64())
        .execute(&inner.pool)
        .await;
        match renewed {
            Ok(done) if done.rows_affected() == 0 => {
                lost.store(true, SeqCst);
                inner.wake.notify_waiters();
                return;
            }
            Ok(_) => {}
            // The server may be back before the lease runs out; if it is
            // not, the next commit finds the lease gone.
            Err(err) => tracing::warn!(
                subscription = %subscription,
                error = %err,
                "could not renew the subscription's lease",
            ),
        }
    }
}

#[async_trait]
impl Reader for PgReader {
    async fn next(&mut self, max: usize) -> Result<Option<Batch>, ReadError> {
        loop {
            if self.lost() {
                return Err(self.claim_lost());
            }
            let inner = Arc::clone(&self.inner);
            // Armed before looking, so a notification in between is kept.
            let mut woken = pin!(inner.wake.notified());
            woken.as_mut().enable();
            let closed = inner.closed.load(SeqCst);
            if self.held.is_none() && !self.claim().await? {
                if closed {
                    return Ok(None);
                }
                // Another process holds it. Follow what it commits, so
                // this process's drain and stats see the subscription move.
                let followed: Option<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT tx_id::text AS tx_text, position FROM {}.cursors WHERE subscription = $1",
                    inner.schema
                )))
                .bind(&self.subscription)
                .fetch_optional(&inner.pool)
                .await
                .map_err(PostgresError::query("following a subscription another process holds"))?;
                let Some((tx_id, position)) = followed else {
                    return Err(PostgresError::Forgotten(self.subscription.clone()).into());
                };
                let moved =
                    (tx_id.as_str(), position) != (self.read.tx_id.as_str(), self.read.position);
                if moved || self.follow_unreported {
                    if moved {
                        self.place(tx_id, position).await?;
                        // Until the batch below is returned: a call cut
                        // short after the move still reports it next time.
                        self.follow_unreported = true;
                    }
                    self.look().await?;
                    self.follow_unreported = false;
                    return Ok(Some(Batch::from_events_until(Vec::new(), self.next)));
                }
                // Try again when its lease may have run out.
                tokio::select! {
                    () = woken => {}
                    () = tokio::time::sleep(inner.lease / 2) => {}
                }
                continue;
            }
            if closed && self.close_bound.is_none() {
                self.close_bound = Some(self.newest().await?);
            }
            // While a hold is reported, look whether it has ended before
            // reading: once rows are read nothing may be awaited, or a call
            // cut short there would lose them.
            if self.held_back.is_some() && self.horizon_changed().await? {
                return Ok(Some(Batch::from_events_until(Vec::new(), self.next)));
            }
            if let Some(batch) = self.read_rows(max).await? {
                return Ok(Some(batch));
            }
            if closed {
                return Ok(None);
            }
            if self.horizon_changed().await? {
                // Nothing to deliver, but news for the stats.
                return Ok(Some(Batch::from_events_until(Vec::new(), self.next)));
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(inner.poll) => {}
            }
        }
    }

    async fn commit(&mut self, up_to: Position) -> Result<(), ReadError> {
        if self.lost() {
            return Err(self.claim_lost());
        }
        let Some(split) = self.pending.iter().rposition(|(at, _)| *at < up_to) else {
            // Nothing to commit, but the lag is asked for after every
            // commit, with what the process accepted before it.
            self.look().await?;
            return Ok(());
        };
        let key = self.pending[split].1.clone();
        let inner = &self.inner;
        let updated = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {}.cursors
             SET tx_id = $3::xid8, position = $4, lease_until = now() + make_interval(secs => $5), updated_at = now()
             WHERE subscription = $1 AND owner = $2",
            inner.schema
        )))
        .bind(&self.subscription)
        .bind(self.owner)
        .bind(&key.tx_id)
        .bind(key.position)
        .bind(inner.lease.as_secs_f64())
        .execute(&inner.pool)
        .await
        .map_err(PostgresError::query("committing a subscription's position"))?;
        if updated.rows_affected() == 0 {
            if let Some(lease) = &self.held {
                lease.lost.store(true, SeqCst);
            }
            return Err(self.claim_lost());
        }
        self.pending.drain(..=split);
        self.look().await?;
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), ReadError> {
        let lost = self.lost();
        if self.held.take().is_none() || lost {
            return Ok(());
        }
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {}.cursors SET owner = NULL, lease_until = NULL
             WHERE subscription = $1 AND owner = $2",
            self.inner.schema
        )))
        .bind(&self.subscription)
        .bind(self.owner)
        .execute(&self.inner.pool)
        .await
        .map_err(PostgresError::query("giving a subscription up"))?;
        Ok(())
    }

    fn position(&self) -> Position {
        self.next
    }

    /// Positions number transactions in steps of 2^24, so the head is
    /// said here rather than added up from the lag.
    fn head(&self) -> Option<Position> {
        Some(self.head)
    }

    fn held_back(&self) -> Option<String> {
        self.held_back.clone()
    }

    fn holds_claim(&self) -> bool {
        self.held.is_some() && !self.lost()
    }

    /// Events after the committed place, visible when the reader last
    /// looked (after a commit that left nothing unfinished).
    fn lag(&self) -> Option<u64> {
        Some(self.lag)
    }
}

impl Drop for PgReader {
    /// Gives the subscription up at once, so another process need not wait
    /// for the lease to run out.
    fn drop(&mut self) {
        let lost = self.lost();
        if self.held.take().is_none() || lost {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let subscription = std::mem::take(&mut self.subscription);
        let owner = self.owner;
        runtime.spawn(async move {
            let released = sqlx::query(AssertSqlSafe(format!(
                "UPDATE {}.cursors SET owner = NULL, lease_until = NULL
                 WHERE subscription = $1 AND owner = $2",
                inner.schema
            )))
            .bind(&subscription)
            .bind(owner)
            .execute(&inner.pool)
            .await;
            if let Err(err) = released {
                tracing::warn!(subscription = %subscription, error = %err, "could not give up the subscription's lease; another process takes it once it runs out");
            }
        });
    }
}
