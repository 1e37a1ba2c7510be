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
use std::collections::{BTreeMap, VecDeque};
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
pub(super) const RANK_BITS: u32 = 24;

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
    /// Rows read and not yet committed (delivered ones, and the ones
    /// skipped as another partition's or as already finished), in order,
    /// by the position they were read at.
    pending: VecDeque<(Position, RowKey)>,
    /// The last row read: the next read starts after it.
    read: RowKey,
    /// The partitions this process holds, each with its committed place.
    held: BTreeMap<i32, Place>,
    /// This reader's identity on the subscription's leases and among its
    /// members: one per reader, so two readers of one process never share
    /// a claim.
    owner: uuid::Uuid,
    /// Renews the leases of `held` and this reader's membership.
    lease: Lease,
    /// When this reader last looked whether its share of the partitions
    /// should change, and since when reading waits for what was handed
    /// out to be committed, so that the share can change.
    share_checked: Option<tokio::time::Instant>,
    share_waits_since: Option<tokio::time::Instant>,
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
    horizon: HorizonMetrics,
    /// Set once the reader gave its partitions up and left the members.
    left: bool,
}

/// The horizon lag of a subscription, as metrics:
/// `eventbus_postgres_horizon_waiting` (committed events waiting behind the
/// oldest running transaction) and `eventbus_postgres_horizon_age_seconds`
/// (how long that transaction has been open), labelled by subscription.
/// Set whenever the reader looks, every 2 s while it has caught up.
struct HorizonMetrics {
    waiting: metrics::Gauge,
    age: metrics::Gauge,
}

impl HorizonMetrics {
    fn new(subscription: &str) -> Self {
        let label = subscription.to_owned();
        HorizonMetrics {
            waiting: metrics::gauge!("eventbus_postgres_horizon_waiting", "subscription" => label.clone()),
            age: metrics::gauge!("eventbus_postgres_horizon_age_seconds", "subscription" => label),
        }
    }
}

/// A partition's committed place: the last finished row's transaction id
/// and position (position -1: before the transaction's first row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    tx: u64,
    position: i64,
}

impl Place {
    fn parse(tx_id: &str, position: i64) -> Place {
        Place {
            tx: tx_id.parse().unwrap_or(u64::MAX),
            position,
        }
    }

    fn of(row: &RowKey) -> Place {
        Place::parse(&row.tx_id, row.position)
    }
}

/// The leases of the partitions a reader holds and its membership,
/// renewed in the background.
struct Lease {
    shared: Arc<Held>,
    renewer: tokio::task::JoinHandle<()>,
}

/// What the reader and its renewer share.
#[derive(Default)]
struct Held {
    /// The partitions held, and a count of changes to them, so a renewal
    /// that raced a change does not take a released partition for lost.
    partitions: std::sync::Mutex<(u64, Vec<i32>)>,
    /// Set when a renewal found a held partition taken by another process.
    lost: AtomicBool,
    /// When the last renewal that found every held partition still held
    /// was sent: the leases last at least a lease past it.
    renewed: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Held {
    fn set(&self, partitions: Vec<i32>) {
        let mut held = self.partitions.lock().expect("held lock");
        held.0 += 1;
        held.1 = partitions;
    }

    /// A renewal sent at `sent` found every held partition still held.
    fn renewed_at(&self, sent: tokio::time::Instant) {
        let mut renewed = self.renewed.lock().expect("renewed lock");
        *renewed = Some(renewed.map_or(sent, |at| at.max(sent)));
    }

    /// Whether the leases may run out within a tenth of `lease`: no
    /// renewal has been seen to succeed for that long.
    fn expiring(&self, lease: Duration) -> bool {
        let renewed = *self.renewed.lock().expect("renewed lock");
        renewed.is_some_and(|at| at.elapsed() + lease / 10 >= lease)
    }
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
            .field("held", &self.held.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The most events the lag counts: past it, it says this many.
const LAG_COUNTED: u64 = 10_000;

/// Rows read at once at most, whatever the subscription asks for.
const MAX_ROWS: usize = 1000;

/// The partition of row `e` in SQL, for a subscription split into
/// `partitions`.
pub(super) fn partition_of(partitions: usize) -> String {
    format!("mod(mod(e.key_hash, {partitions}) + {partitions}, {partitions})::int4")
}

impl PgReader {
    pub(crate) async fn open(
        inner: Arc<Inner>,
        subscription: &str,
        from: StartFrom,
    ) -> Result<PgReader, PostgresError> {
        let owner = uuid::Uuid::now_v7();
        prepare_cursors(&inner, subscription, from, owner).await?;
        let shared = Arc::new(Held::default());
        let renewer = tokio::spawn(renew(
            Arc::clone(&inner),
            subscription.to_owned(),
            owner,
            Arc::clone(&shared),
        ));
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
            held: BTreeMap::new(),
            owner,
            lease: Lease { shared, renewer },
            share_checked: None,
            share_waits_since: None,
            head: 0,
            lag: 0,
            close_bound: None,
            held_back: None,
            horizon_checked: None,
            unseen_holds: 0,
            horizon: HorizonMetrics::new(subscription),
            left: false,
        };
        // Where nothing is held yet: the oldest partition's place.
        let (tx_id, position): (String, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT tx_id::text, position FROM {}.cursors WHERE subscription = $1
             ORDER BY tx_id, position LIMIT 1",
            reader.inner.schema
        )))
        .bind(subscription)
        .fetch_one(&reader.inner.pool)
        .await
        .map_err(PostgresError::query("reading a subscription's position"))?;
        reader.place(tx_id, position).await?;
        // Claimed at once, not at the first read: a subscription started
        // paused holds its share too, and whether this process holds the
        // first partition is known from the start (replays run only there).
        reader.share(true).await?;
        reader.look().await?;
        Ok(reader)
    }

    /// Reads on after the row (`tx_id`, `position`): the subscription's
    /// committed place.
    async fn place(&mut self, tx_id: String, position: i64) -> Result<(), PostgresError> {
        let rank = rank_of(&self.inner, &tx_id, position).await?;
        self.read = RowKey {
            tx_id,
            position,
            rank,
        };
        self.next = self.read.after()?;
        Ok(())
    }

    /// Looks whether this reader's share of the partitions should change,
    /// at most every third of the lease (`now`: at once), and changes it
    /// when nothing read is left uncommitted: gives up what is over its
    /// share, takes free partitions (or ones whose holder's lease ran out)
    /// up to it, and reads again from the oldest place of those it took.
    /// Returns whether a change waits for what was read to be committed.
    async fn share(&mut self, now: bool) -> Result<bool, PostgresError> {
        let every = self.inner.lease / 3;
        let clock = tokio::time::Instant::now();
        if !now
            && self
                .share_checked
                .is_some_and(|at| clock.duration_since(at) < every)
        {
            return Ok(false);
        }
        let inner = Arc::clone(&self.inner);
        let schema = &inner.schema;
        let total = inner.partitions;
        // Processes seen within their lease, this one included (it joined
        // at open, and its renewer keeps it in).
        let (members, free, partitions): (i64, i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM {schema}.members
                     WHERE subscription = $1 AND (seen_until >= now() OR member = $2)),
                    (SELECT count(*) FROM {schema}.cursors
                     WHERE subscription = $1
                       AND (owner IS NULL OR lease_until < now() OR owner = $2)),
                    (SELECT count(*) FROM {schema}.cursors WHERE subscription = $1)"
        )))
        .bind(&self.subscription)
        .bind(self.owner)
        .fetch_one(&inner.pool)
        .await
        .map_err(PostgresError::query("looking at a subscription's members"))?;
        if partitions == 0 {
            return Err(PostgresError::Forgotten(self.subscription.clone()));
        }
        // Re-based by a process with another count while this one waited
        // for a share: reading on would split by the wrong count.
        if usize::try_from(partitions).ok() != Some(total) {
            return Err(PostgresError::Partitions {
                subscription: self.subscription.clone(),
                found: usize::try_from(partitions).unwrap_or(0),
                configured: total,
            });
        }
        let members = usize::try_from(members.max(1)).unwrap_or(1);
        let target = total.div_ceil(members);
        let over = self.held.len().saturating_sub(target);
        let wanted = target.saturating_sub(self.held.len());
        // Partitions it holds count among the free ones.
        let claimable = usize::try_from(free)
            .unwrap_or(0)
            .saturating_sub(self.held.len());
        if over == 0 && (wanted == 0 || claimable == 0) {
            self.share_checked = Some(clock);
            self.share_waits_since = None;
            return Ok(false);
        }
        if !self.pending.is_empty() {
            // A partition changes hands only at a committed place. Reading
            // waits for the commit, for half a lease at most; then it goes
            // on and tries again later.
            let since = *self.share_waits_since.get_or_insert(clock);
            if clock.duration_since(since) < inner.lease / 2 {
                return Ok(true);
            }
            self.share_checked = Some(clock);
            self.share_waits_since = None;
            return Ok(false);
        }
        self.share_checked = Some(clock);
        self.share_waits_since = None;
        if over > 0 {
            // The highest ones go, so the first partition (where replays
            // run) stays with a process that has held it longest. Forgotten
            // here first: a call cut short after the update leaves leases
            // that run out, never one the renewer would take for lost.
            let released: Vec<i32> = self.held.keys().rev().take(over).copied().collect();
            for partition in &released {
                self.held.remove(partition);
            }
            self.lease.shared.set(self.held.keys().copied().collect());
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE {schema}.cursors SET owner = NULL, lease_until = NULL
                 WHERE subscription = $1 AND owner = $2 AND partition = ANY($3)"
            )))
            .bind(&self.subscription)
            .bind(self.owner)
            .bind(&released)
            .execute(&inner.pool)
            .await
            .map_err(PostgresError::query("giving partitions up"))?;
            tracing::debug!(subscription = %self.subscription, ?released, "gave partitions up to other processes");
            return Ok(false);
        }
        // Free ones, or ones whose holder's lease ran out, or its own that
        // a call cut short took without noting them.
        let sent = tokio::time::Instant::now();
        let claimed: Vec<(i32, String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE {schema}.cursors
             SET owner = $2, lease_until = now() + make_interval(secs => $3), updated_at = now()
             WHERE subscription = $1 AND partition IN (
                 SELECT partition FROM {schema}.cursors
                 WHERE subscription = $1 AND NOT (partition = ANY($5))
                   AND (owner IS NULL OR lease_until < now() OR owner = $2)
                 ORDER BY partition LIMIT $4
                 FOR UPDATE SKIP LOCKED)
             RETURNING partition, tx_id::text, position"
        )))
        .bind(&self.subscription)
        .bind(self.owner)
        .bind(inner.lease.as_secs_f64())
        .bind(wanted as i64)
        .bind(self.held.keys().copied().collect::<Vec<_>>())
        .fetch_all(&inner.pool)
        .await
        .map_err(PostgresError::query(
            "claiming partitions of a subscription",
        ))?;
        if claimed.is_empty() {
            return Ok(false);
        }
        // Reads again from the oldest place taken, when it is before what
        // was read: rows of the other partitions are skipped as finished.
        let oldest = claimed
            .iter()
            .map(|(_, tx_id, position)| (Place::parse(tx_id, *position), tx_id, *position))
            .min_by_key(|(place, _, _)| *place)
            .expect("not empty");
        let rewind = self.held.is_empty() || oldest.0 < Place::of(&self.read);
        let rank = if rewind {
            Some(rank_of(&inner, oldest.1, oldest.2).await?)
        } else {
            None
        };
        if self.held.is_empty() {
            // The oldest lease held is one of these.
            self.lease.shared.renewed_at(sent);
        }
        for (partition, tx_id, position) in &claimed {
            self.held.insert(*partition, Place::parse(tx_id, *position));
        }
        self.lease.shared.set(self.held.keys().copied().collect());
        if let Some(rank) = rank {
            self.read = RowKey {
                tx_id: oldest.1.clone(),
                position: oldest.2,
                rank,
            };
            self.next = self.read.after()?;
        }
        tracing::debug!(
            subscription = %self.subscription,
            claimed = ?claimed.iter().map(|(p, _, _)| p).collect::<Vec<_>>(),
            "claimed partitions",
        );
        Ok(false)
    }

    fn lost(&self) -> bool {
        self.lease.shared.lost.load(SeqCst)
    }

    /// Renews the leases of the partitions held, now; marks them lost if
    /// another process holds one.
    async fn renew_now(&mut self) -> Result<(), PostgresError> {
        let partitions: Vec<i32> = self.held.keys().copied().collect();
        let sent = tokio::time::Instant::now();
        let renewed = renew_leases(&self.inner, &self.subscription, self.owner, &partitions)
            .await
            .map_err(PostgresError::query(
                "renewing the subscription's leases, which may have run out",
            ))?;
        if renewed.len() < partitions.len() {
            self.lease.shared.lost.store(true, SeqCst);
        } else {
            self.lease.shared.renewed_at(sent);
        }
        Ok(())
    }

    fn claim_lost(&self) -> ReadError {
        ReadError::ClaimLost(format!(
            "a lease on a partition of `{}` ran out and another process took the partition over",
            self.subscription
        ))
    }

    async fn read_rows(&mut self, max: usize) -> Result<Option<Batch>, PostgresError> {
        let inner = Arc::clone(&self.inner);
        let schema = &inner.schema;
        let limit = max.clamp(1, MAX_ROWS);
        // Every row, for its rank in its transaction; the payload only of
        // rows in partitions this process holds.
        let partition = partition_of(inner.partitions);
        let rows: Vec<(i64, String, String, i32, Option<String>, i32)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT e.position, e.tx_id::text AS tx_text, e.name, e.version,
                    CASE WHEN {partition} = ANY($7) THEN e.payload::text END,
                    {partition}
             FROM {schema}.events e, {schema}.cursors c
             WHERE c.subscription = $4 AND c.partition = 0
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
        .bind(self.held.keys().copied().collect::<Vec<_>>())
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
        for (position, tx_id, name, version, payload, partition) in rows {
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
            // Another process's partition, or a row before the place of
            // a partition taken over: skipped, as finished here.
            let mine = self
                .held
                .get(&partition)
                .is_some_and(|place| Place::of(&row) > *place);
            let payload = match payload {
                Some(payload) if mine => payload,
                _ => {
                    keys.push((at, row.clone()));
                    last = row;
                    continue;
                }
            };
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
             WHERE c.subscription = $3 AND c.partition = 0
               AND (e.tx_id, e.position) > ($1::xid8, $2)
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
                              WHERE c.subscription = $3 AND c.partition = 0
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
        // The horizon lag, as metrics: how many committed events wait, and
        // for how long the transaction holding them has been open.
        let (waiting, open_for) = found
            .as_ref()
            .map_or((0, 0.0), |(waiting, _, _, open_for)| {
                (*waiting, open_for.unwrap_or(0.0).max(0.0))
            });
        self.horizon.waiting.set(waiting as f64);
        self.horizon.age.set(open_for);
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
        let rank = rank_of(&self.inner, &tx_id, position).await?;
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

/// How many rows of transaction `tx_id` come before `position` (-1 for a
/// place before its first row).
async fn rank_of(inner: &Inner, tx_id: &str, position: i64) -> Result<i64, PostgresError> {
    if position < 0 {
        return Ok(-1);
    }
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.events WHERE tx_id = $1::xid8 AND position < $2",
        inner.schema
    )))
    .bind(tx_id)
    .bind(position)
    .fetch_one(&inner.pool)
    .await
    .map_err(PostgresError::query("finding a subscription's place"))
}

/// Makes sure `subscription` has one cursor per configured partition, and
/// joins this reader to its members.
///
/// A new subscription gets them at `from`. One split into another number
/// of partitions is re-based at its oldest partition's place, once no other
/// process holds any of it: events after that place may be delivered
/// again, none is skipped.
async fn prepare_cursors(
    inner: &Inner,
    subscription: &str,
    from: StartFrom,
    owner: uuid::Uuid,
) -> Result<(), PostgresError> {
    let schema = &inner.schema;
    let total = inner.partitions;
    let failed = PostgresError::query("preparing a subscription's partitions");
    let mut tx = inner.pool.begin().await.map_err(failed)?;
    // One process at a time prepares a subscription.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("{schema}.{subscription}"))
        .execute(&mut *tx)
        .await
        .map_err(PostgresError::query("locking a subscription's partitions"))?;
    // Other processes reading the subscription now, holding partitions
    // or waiting for a share.
    let others: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.members
         WHERE subscription = $1 AND member <> $2 AND seen_until >= now()"
    )))
    .bind(subscription)
    .bind(owner)
    .fetch_one(&mut *tx)
    .await
    .map_err(PostgresError::query("reading a subscription's members"))?;
    let found: Vec<(i32, String, i64, Option<String>, bool)> =
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT partition, tx_id::text, position, start_snapshot::text,
                owner IS NOT NULL AND lease_until >= now()
         FROM {schema}.cursors WHERE subscription = $1 ORDER BY partition"
        )))
        .bind(subscription)
        .fetch_all(&mut *tx)
        .await
        .map_err(PostgresError::query("reading a subscription's partitions"))?;
    let expected = found.len() == total
        && found
            .iter()
            .enumerate()
            .all(|(i, (partition, ..))| usize::try_from(*partition) == Ok(i));
    if found.is_empty() {
        let insert = match from {
            StartFrom::Beginning => format!(
                "INSERT INTO {schema}.cursors (subscription, partition, tx_id, position)
                 SELECT $1, p, '0', 0 FROM generate_series(0, $2 - 1) AS p"
            ),
            // Everything this snapshot sees counts as before the start;
            // rows of transactions still running then come after it.
            StartFrom::Now => format!(
                "INSERT INTO {schema}.cursors (subscription, partition, tx_id, position, start_snapshot)
                 SELECT $1, p, pg_snapshot_xmin(s), -1, s
                 FROM pg_current_snapshot() AS s, generate_series(0, $2 - 1) AS p"
            ),
        };
        sqlx::query(AssertSqlSafe(insert))
            .bind(subscription)
            .bind(total as i32)
            .execute(&mut *tx)
            .await
            .map_err(PostgresError::query("recording a new subscription"))?;
    } else if !expected {
        if others > 0 || found.iter().any(|(.., live)| *live) {
            return Err(PostgresError::Partitions {
                subscription: subscription.to_owned(),
                found: found.len(),
                configured: total,
            });
        }
        let (_, tx_id, position, snapshot, _) = found
            .iter()
            .min_by_key(|(_, tx_id, position, ..)| Place::parse(tx_id, *position))
            .expect("not empty");
        tracing::warn!(
            subscription,
            from = found.len(),
            to = total,
            at = %format!("{tx_id}/{position}"),
            "re-basing the subscription onto another number of partitions at its oldest partition's place; events after it that other partitions had finished are delivered again",
        );
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {schema}.cursors WHERE subscription = $1"
        )))
        .bind(subscription)
        .execute(&mut *tx)
        .await
        .map_err(PostgresError::query("re-basing a subscription"))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {schema}.cursors (subscription, partition, tx_id, position, start_snapshot)
             SELECT $1, p, $3::xid8, $4, $5::pg_snapshot FROM generate_series(0, $2 - 1) AS p"
        )))
        .bind(subscription)
        .bind(total as i32)
        .bind(tx_id)
        .bind(position)
        .bind(snapshot)
        .execute(&mut *tx)
        .await
        .map_err(PostgresError::query("re-basing a subscription"))?;
    }
    // Processes killed without leaving are left behind as members whose
    // lease ran out: they count for nothing, and go after a day.
    sqlx::query(AssertSqlSafe(format!(
        "WITH gone AS (
             DELETE FROM {schema}.members
             WHERE subscription = $1 AND seen_until < now() - interval '1 day'
         )
         INSERT INTO {schema}.members (subscription, member, seen_until)
         VALUES ($1, $2, now() + make_interval(secs => $3))
         ON CONFLICT (subscription, member) DO UPDATE SET seen_until = EXCLUDED.seen_until"
    )))
    .bind(subscription)
    .bind(owner)
    .bind(inner.lease.as_secs_f64())
    .execute(&mut *tx)
    .await
    .map_err(PostgresError::query("joining a subscription's members"))?;
    tx.commit().await.map_err(PostgresError::query(
        "preparing a subscription's partitions",
    ))
}

/// Renews, a few times per lease, this reader's membership and the leases
/// of the partitions it holds; sets `lost` and wakes the reader when it
/// finds one of them held by another process.
async fn renew(inner: Arc<Inner>, subscription: String, owner: uuid::Uuid, held: Arc<Held>) {
    let every = inner.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let (version, partitions) = held.partitions.lock().expect("held lock").clone();
        let sent = tokio::time::Instant::now();
        let renewed = renew_leases(&inner, &subscription, owner, &partitions).await;
        match renewed {
            Ok(renewed) => {
                let unchanged = held.partitions.lock().expect("held lock").0 == version;
                if unchanged && renewed.len() < partitions.len() {
                    held.lost.store(true, SeqCst);
                    inner.wake.notify_waiters();
                    return;
                }
                if unchanged {
                    held.renewed_at(sent);
                }
            }
            // The server may be back before the lease runs out; if it is
            // not, the next commit finds the lease gone.
            Err(err) => tracing::warn!(
                subscription = %subscription,
                error = %err,
                "could not renew the subscription's leases",
            ),
        }
    }
}

/// Renews `owner`'s membership of `subscription` and its leases on
/// `partitions`; the partitions it still held.
async fn renew_leases(
    inner: &Inner,
    subscription: &str,
    owner: uuid::Uuid,
    partitions: &[i32],
) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "WITH member AS (
             INSERT INTO {schema}.members (subscription, member, seen_until)
             VALUES ($1, $2, now() + make_interval(secs => $3))
             ON CONFLICT (subscription, member) DO UPDATE SET seen_until = EXCLUDED.seen_until
         )
         UPDATE {schema}.cursors SET lease_until = now() + make_interval(secs => $3)
         WHERE subscription = $1 AND owner = $2 AND partition = ANY($4)
         RETURNING partition",
        schema = inner.schema
    )))
    .bind(subscription)
    .bind(owner)
    .bind(inner.lease.as_secs_f64())
    .bind(partitions)
    .fetch_all(&inner.pool)
    .await
}

/// Gives up every partition `owner` holds of `subscription`, and leaves
/// its members.
async fn give_up(inner: &Inner, subscription: &str, owner: uuid::Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "WITH left_members AS (
             DELETE FROM {schema}.members WHERE subscription = $1 AND member = $2
         )
         UPDATE {schema}.cursors SET owner = NULL, lease_until = NULL
         WHERE subscription = $1 AND owner = $2",
        schema = inner.schema
    )))
    .bind(subscription)
    .bind(owner)
    .execute(&inner.pool)
    .await
    .map(drop)
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
            if !closed && self.share(false).await? {
                // The share changes once what was read is committed.
                tokio::select! {
                    () = woken => {}
                    () = tokio::time::sleep(SHARE_WAIT) => {}
                }
                continue;
            }
            if !self.held.is_empty() && self.lease.shared.expiring(inner.lease) {
                // No renewal has been seen to succeed for almost a lease:
                // another process may take the partitions any moment, so
                // nothing more is handed out until one does.
                self.renew_now().await?;
                continue;
            }
            if self.held.is_empty() {
                if closed {
                    return Ok(None);
                }
                // Other processes hold every partition: look again when
                // a lease may have run out or a process left.
                tokio::select! {
                    () = woken => {}
                    () = tokio::time::sleep(inner.lease / 3) => {}
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
                () = tokio::time::sleep(inner.poll.min(inner.lease / 3)) => {}
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
        let partitions: Vec<i32> = self.held.keys().copied().collect();
        if !partitions.is_empty() {
            let inner = &self.inner;
            let sent = tokio::time::Instant::now();
            // Each held partition moves forward to the row, never back: one
            // taken over at an older place is behind the others until the
            // reader passes their places again.
            let updated: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
                "UPDATE {}.cursors
                 SET tx_id = CASE WHEN (tx_id, position) < ($3::xid8, $4) THEN $3::xid8 ELSE tx_id END,
                     position = CASE WHEN (tx_id, position) < ($3::xid8, $4) THEN $4 ELSE position END,
                     lease_until = now() + make_interval(secs => $5), updated_at = now()
                 WHERE subscription = $1 AND owner = $2 AND partition = ANY($6)
                 RETURNING partition",
                inner.schema
            )))
            .bind(&self.subscription)
            .bind(self.owner)
            .bind(&key.tx_id)
            .bind(key.position)
            .bind(inner.lease.as_secs_f64())
            .bind(&partitions)
            .fetch_all(&inner.pool)
            .await
            .map_err(PostgresError::query("committing a subscription's position"))?;
            if updated.len() < partitions.len() {
                self.lease.shared.lost.store(true, SeqCst);
                return Err(self.claim_lost());
            }
            self.lease.shared.renewed_at(sent);
            let place = Place::of(&key);
            for held in self.held.values_mut() {
                *held = (*held).max(place);
            }
        }
        self.pending.drain(..=split);
        self.look().await?;
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), ReadError> {
        let lost = self.lost();
        self.held.clear();
        self.lease.shared.set(Vec::new());
        self.lease.renewer.abort();
        if lost {
            return Ok(());
        }
        give_up(&self.inner, &self.subscription, self.owner)
            .await
            .map_err(PostgresError::query("giving a subscription up"))?;
        self.left = true;
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

    /// Whether this process holds the first partition: replays of the
    /// subscription's dead letters run there.
    fn holds_claim(&self) -> bool {
        self.held.contains_key(&0) && !self.lost()
    }

    /// Other processes finish the partitions this one does not hold.
    fn finished_elsewhere(&self) -> bool {
        true
    }

    /// Events after the place read to, visible when the reader last
    /// looked (after a commit that left nothing unfinished).
    fn lag(&self) -> Option<u64> {
        Some(self.lag)
    }
}

/// How long reading waits at a time for a commit before the share changes.
const SHARE_WAIT: Duration = Duration::from_millis(20);

impl Drop for PgReader {
    /// Gives the partitions up at once, so other processes need not wait
    /// for the leases to run out.
    fn drop(&mut self) {
        if self.lost() || self.left {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let subscription = std::mem::take(&mut self.subscription);
        let owner = self.owner;
        runtime.spawn(async move {
            if let Err(err) = give_up(&inner, &subscription, owner).await {
                tracing::warn!(subscription = %subscription, error = %err, "could not give up the subscription's leases; other processes take them once they run out");
            }
        });
    }
}
