//! A transactional outbox on PostgreSQL, shared by every replica of a
//! service.
//!
//! Events are rows of `{schema}.events`, written in the caller's own
//! transaction ([`PostgresLog::notify_in`]) or in one of their own
//! ([`Bus::notify`](crate::Bus::notify)): a rollback emits nothing, and
//! subscriptions see an event only once it is committed. Each subscription
//! reads in (transaction id, position) order and only below the oldest
//! transaction still running, so a transaction that commits after a later
//! one is never skipped. Each subscription is split into partitions by the
//! events' keys (their correlation ids), each with its own cursor and
//! lease: the processes reading a subscription share its partitions out, so
//! work splits across replicas while events of one key stay in order. When
//! a process dies, the others take its partitions over after the lease time,
//! and a process that finds a lease of its own taken stops without
//! committing.
//! Processes wake up through LISTEN/NOTIFY on one connection each, and poll
//! as the fallback. Dead letters live in `{schema}.dead_letters`, where any
//! process lists and replays them.

mod error;
mod group;
mod quarantine;
mod reader;
mod retention;
mod schema;
mod stores;

pub use self::error::PostgresError;
pub use self::quarantine::{Quarantined, Requeued};
pub use self::retention::{Forgotten, Pruned, Retention};

// Every dynamic statement only puts in the schema name, which is
// checked to be a plain identifier when the outbox connects.
use self::reader::PgReader;
use self::stores::PgStores;
use super::{
    Backend, Capabilities, DeadLetterStore, Position, ReadError, Reader, RetryStore, StartFrom,
    WriteError,
};
use crate::event::AnyEvent;
use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use sqlx::Connection;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;
use tokio::sync::Notify;

/// A transactional outbox on PostgreSQL, for a [`Bus`](crate::Bus) whose
/// events commit or roll back with the business rows, and which several
/// replicas of a service share.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use eventbus::{Bus, PostgresLog};
///
/// let log = PostgresLog::builder()
///     .url("postgres://app@127.0.0.1/app")
///     .connect()
///     .await?;
/// let bus = Bus::builder().backend(log.clone()).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresLog {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    schema: String,
    /// The LISTEN/NOTIFY channel of this schema.
    channel: String,
    lease: Duration,
    poll: Duration,
    /// How many partitions each subscription is split into.
    partitions: usize,
    notify_on_commit: bool,
    /// Whether failed events are parked in `{schema}.parked`.
    park_retries: bool,
    retention: Retention,
    closed: AtomicBool,
    /// Woken by the listener on every notification and after every
    /// reconnect, and by [`Backend::close`].
    wake: Notify,
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pruner: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where `notify` puts events for the writer tasks, which end once this
    /// is dropped.
    queue: group::Queue,
}

/// Configures a [`PostgresLog`]; from [`PostgresLog::builder`].
#[derive(Clone)]
pub struct PostgresLogBuilder {
    url: Option<String>,
    pool: Option<PgPool>,
    schema: String,
    lease: Duration,
    poll: Duration,
    partitions: usize,
    notify_on_commit: bool,
    park_retries: bool,
    retention: Retention,
}

impl PostgresLog {
    /// Starts configuring an outbox. It needs a [`url`](PostgresLogBuilder::url)
    /// or a [`pool`](PostgresLogBuilder::pool).
    pub fn builder() -> PostgresLogBuilder {
        PostgresLogBuilder {
            url: None,
            pool: None,
            schema: "eventbus".to_owned(),
            lease: Duration::from_secs(10),
            poll: Duration::from_millis(500),
            partitions: DEFAULT_PARTITIONS,
            notify_on_commit: true,
            park_retries: true,
            retention: Retention::default(),
        }
    }

    /// Writes `event` in the caller's transaction (or on its connection):
    /// subscriptions, in this process and others, see it once that
    /// transaction commits, and never if it rolls back.
    ///
    /// # Errors
    ///
    /// [`PostgresError::Encode`] when the event does not serialize, and
    /// [`PostgresError::Query`] when the insert fails; the caller's
    /// transaction is then aborted, as with any failed statement.
    ///
    /// ```no_run
    /// # use eventbus::{PostgresLog, event};
    /// # #[event] struct UserCreated { user_id: i64 }
    /// # async fn run(log: PostgresLog, pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("INSERT INTO users (id) VALUES (42)").execute(&mut *tx).await?;
    /// log.notify_in(&mut tx, UserCreated::new(42)).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn notify_in(
        &self,
        conn: &mut sqlx::PgConnection,
        event: impl Into<AnyEvent>,
    ) -> Result<Position, PostgresError> {
        Ok(self.insert(conn, &event.into()).await?.0)
    }

    /// Writes the row; its position in the table and its transaction id.
    async fn insert(
        &self,
        conn: &mut sqlx::PgConnection,
        event: &AnyEvent,
    ) -> Result<(Position, String), PostgresError> {
        let inner = &self.inner;
        let payload = event.to_json_bytes().map_err(PostgresError::Encode)?;
        let payload = String::from_utf8(payload).expect("serde_json writes UTF-8");
        // One statement, so a write of its own is one round trip and
        // atomic without BEGIN and COMMIT. The NOTIFY is delivered at
        // commit, and not at all on a rollback; identical notifications of
        // one transaction arrive as one.
        let sql = if inner.notify_on_commit {
            format!(
                "WITH written AS (
                     INSERT INTO {}.events (event_id, name, version, payload, key_hash)
                     VALUES ($1, $2, $3, $4::jsonb, $5) RETURNING position
                 )
                 SELECT position, pg_current_xact_id()::text FROM written, pg_notify($6, '')",
                inner.schema
            )
        } else {
            format!(
                "INSERT INTO {}.events (event_id, name, version, payload, key_hash)
                 VALUES ($1, $2, $3, $4::jsonb, $5) RETURNING position, tx_id::text",
                inner.schema
            )
        };
        let mut query = sqlx::query_as::<_, (i64, String)>(AssertSqlSafe(sql))
            .bind(event.meta().id)
            .bind(event.name())
            .bind(event.version() as i32)
            .bind(payload)
            .bind(key_hash(event));
        if inner.notify_on_commit {
            query = query.bind(&inner.channel);
        }
        let (position, tx_id) = query
            .fetch_one(&mut *conn)
            .await
            .map_err(PostgresError::query("inserting an event"))?;
        Ok((position as Position, tx_id))
    }

    /// The connection pool the outbox uses.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema the outbox's tables are in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }
}

/// Partitions per subscription unless configured.
const DEFAULT_PARTITIONS: usize = 8;

/// The most partitions a subscription can be split into.
const MAX_PARTITIONS: usize = 1024;

/// What an event is kept in order with, as stored in `events.key_hash`:
/// [`Event::order_key`](crate::Event::order_key).
pub(super) fn key_hash(event: &AnyEvent) -> i64 {
    event.order_key() as i64
}

/// Shows the URL with its password hidden.
impl fmt::Debug for PostgresLogBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLogBuilder")
            .field("url", &self.url.as_deref().map(error::redact))
            .field("pool", &self.pool.is_some())
            .field("schema", &self.schema)
            .field("lease", &self.lease)
            .field("poll", &self.poll)
            .field("partitions", &self.partitions)
            .field("notify_on_commit", &self.notify_on_commit)
            .field("park_retries", &self.park_retries)
            .field("retention", &self.retention)
            .finish()
    }
}

impl PostgresLogBuilder {
    /// The server to connect to: `postgres://user:password@host:port/db`.
    #[must_use]
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// A pool the service already has, instead of a URL. The outbox takes
    /// one more connection for LISTEN.
    #[must_use]
    pub fn pool(mut self, pool: PgPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The schema of the outbox's tables. Default `eventbus`. Lower-case
    /// letters, digits and `_`.
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How long a process holds a subscription without renewing it: a
    /// process that dies is taken over after this long. Default 10 s.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How many partitions each subscription is split into: the processes
    /// reading a subscription share them out, each holding about its share
    /// on a lease, so that many processes at most deliver at once. Events
    /// of one [order key](crate::Event::order_key) (by default the
    /// correlation id: an event and those it caused; `#[event(key =
    /// field)]` chooses a field) go to one partition and stay in order;
    /// events of different keys may be delivered in any order when several
    /// processes share the subscription. Default 8; 1 gives one total order, with one process
    /// delivering and the others standing by.
    ///
    /// Every process of a subscription must use the same count. A process
    /// started with another count while the others run refuses to start
    /// the subscription ([`PostgresError::Partitions`]); once they have
    /// stopped, it re-bases the subscription at the oldest partition's
    /// place, so events after it may be delivered again, never skipped.
    #[must_use]
    pub fn partitions(mut self, partitions: usize) -> Self {
        self.partitions = partitions;
        self
    }

    /// How often a subscription looks for new events when no notification
    /// wakes it. Default 500 ms.
    #[must_use]
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Whether a failed event with attempts left is parked in
    /// `{schema}.parked` until its retry is due, so its partition moves on
    /// past it. Default `true`: a failure never holds the events behind
    /// it. The retry then comes after later events, even of the same
    /// [order key](crate::Event::order_key); `false` keeps per-key order by
    /// retrying in place, holding the partition (and in sequential mode,
    /// the subscription) until the event is handled or dead-lettered.
    #[must_use]
    pub fn park_retries(mut self, on: bool) -> Self {
        self.park_retries = on;
        self
    }

    /// Whether each write sends a NOTIFY, so subscriptions wake at once.
    /// Default on. A NOTIFY takes a lock at commit shared by the whole
    /// cluster, and does not pass pgbouncer in transaction mode; turned
    /// off, subscriptions find events by polling.
    #[must_use]
    pub fn notify_on_commit(mut self, on: bool) -> Self {
        self.notify_on_commit = on;
        self
    }

    /// Which finished events, dead letters and quarantined events are
    /// deleted, and how often. Default [`Retention::default`].
    #[must_use]
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Connects, creates or upgrades the outbox's tables, and starts
    /// listening for notifications.
    ///
    /// # Errors
    ///
    /// [`PostgresError::Connect`] when the server cannot be reached (the
    /// URL's password hidden); [`PostgresError::ClusterChanged`] when the
    /// database is not the cluster the outbox was written on;
    /// [`PostgresError::Shape`] when a table exists with another shape;
    /// [`PostgresError::NewerLayout`], [`PostgresError::SchemaName`], and
    /// [`PostgresError::Query`] for anything else the server refused
    /// (missing permissions among them).
    pub async fn connect(self) -> Result<PostgresLog, PostgresError> {
        if !schema::valid_schema(&self.schema) {
            return Err(PostgresError::SchemaName(self.schema));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return Err(PostgresError::PartitionCount(self.partitions));
        }
        let pool = match (self.pool, &self.url) {
            (Some(pool), _) => pool,
            (None, Some(url)) => {
                let unreachable = |source| PostgresError::Connect {
                    url: error::redact(url),
                    source,
                };
                let options: PgConnectOptions = url.parse().map_err(unreachable)?;
                // One connection first, so an unreachable server or a
                // refused login fails now, not after the pool's retries.
                let probe = PgConnection::connect_with(&options)
                    .await
                    .map_err(unreachable)?;
                drop(probe);
                PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_lazy_with(options)
            }
            (None, None) => {
                return Err(PostgresError::Connect {
                    url: String::new(),
                    source: sqlx::Error::Configuration(
                        "the outbox needs a URL or a pool: PostgresLog::builder().url(..)".into(),
                    ),
                });
            }
        };
        schema::prepare(&pool, &self.schema).await?;
        let (queue, receiver) = group::queue();
        let log = PostgresLog {
            inner: Arc::new(Inner {
                channel: format!("eventbus_{}", self.schema),
                pool,
                schema: self.schema,
                lease: self.lease.max(Duration::from_millis(100)),
                poll: self.poll.max(Duration::from_millis(1)),
                partitions: self.partitions,
                notify_on_commit: self.notify_on_commit,
                park_retries: self.park_retries,
                closed: AtomicBool::new(false),
                wake: Notify::new(),
                listener: std::sync::Mutex::new(None),
                pruner: std::sync::Mutex::new(None),
                retention: self.retention.clone(),
                queue,
            }),
        };
        for _ in 0..group::WRITERS {
            tokio::spawn(group::write_batches(
                Arc::downgrade(&log.inner),
                Arc::clone(&receiver),
            ));
        }
        let listener = tokio::spawn(listen(Arc::downgrade(&log.inner)));
        *log.inner.listener.lock().expect("listener lock") = Some(listener);
        let pruner = tokio::spawn(retention::run(
            Arc::downgrade(&log.inner),
            self.retention.every,
        ));
        *log.inner.pruner.lock().expect("pruner lock") = Some(pruner);
        Ok(log)
    }
}

/// The process's one LISTEN connection, fanned out to every subscription
/// through `Inner::wake`. Reconnects after a failure, and wakes everyone
/// after every (re)connect: notifications sent while it was away are lost,
/// so the subscriptions look for themselves.
async fn listen(inner: std::sync::Weak<Inner>) {
    let mut wait = Duration::from_millis(100);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let channel = strong.channel.clone();
        let connected = async {
            let mut listener = PgListener::connect_with(&strong.pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?wait, "cannot LISTEN for new events; subscriptions poll meanwhile");
                drop(strong);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        wait = Duration::from_millis(100);
        strong.wake.notify_waiters();
        drop(strong);
        loop {
            // `try_recv` reports a lost connection as `None` rather than
            // reconnecting silently, so the wake-up after it is not missed.
            match listener.try_recv().await {
                Ok(Some(_)) => match inner.upgrade() {
                    Some(strong) => strong.wake.notify_waiters(),
                    None => return,
                },
                Ok(None) => {
                    match inner.upgrade() {
                        Some(strong) => strong.wake.notify_waiters(),
                        None => return,
                    }
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "lost the LISTEN connection; reconnecting");
                    break;
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get_mut().expect("listener lock").take() {
            listener.abort();
        }
        if let Some(pruner) = self.pruner.get_mut().expect("pruner lock").take() {
            pruner.abort();
        }
    }
}

impl fmt::Debug for PostgresLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLog")
            .field("schema", &self.inner.schema)
            .finish()
    }
}

#[async_trait]
impl Backend for PostgresLog {
    /// Durable, shared by processes (each holds its share of a
    /// subscription's partitions), and ordered per key. Retries run in the
    /// process holding the event's partition; their schedules are kept in
    /// `{schema}.retries`, so a process that takes a partition over after
    /// a restart resumes them.
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .durable(true)
            .shared_subscriptions(true)
            .ordered(true)
    }

    async fn append(&self, event: AnyEvent) -> Result<Position, WriteError> {
        if self.inner.closed.load(SeqCst) {
            return Err(WriteError::Closed(event));
        }
        let payload = event.to_json_bytes().map_err(PostgresError::Encode)?;
        let payload = String::from_utf8(payload).expect("serde_json writes UTF-8");
        // Written with whatever other tasks notify meanwhile, in one
        // transaction (see `group`). The position returned is the one
        // subscriptions see it at, which `drain` compares with.
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = group::Pending {
            id: event.meta().id,
            name: event.name().to_owned(),
            version: event.version() as i32,
            payload,
            key: key_hash(&event),
            reply,
        };
        if self.inner.queue.send(pending).await.is_err() {
            return Err(WriteError::Closed(event));
        }
        match answer.await {
            Ok(written) => Ok(written?),
            // The writer tasks end only with the outbox.
            Err(_) => Err(WriteError::Closed(event)),
        }
    }

    async fn reader(
        &self,
        subscription: &str,
        from: StartFrom,
    ) -> Result<Box<dyn Reader>, ReadError> {
        Ok(Box::new(
            PgReader::open(Arc::clone(&self.inner), subscription, from).await?,
        ))
    }

    /// Whether every row of `subscription` up to the transaction of
    /// `up_to` is finished: no row of those transactions lies past its
    /// partition's committed place, whichever process holds it. Counted
    /// from the oldest place, so a subscription that keeps up looks at
    /// few rows.
    async fn finished_before(
        &self,
        subscription: &str,
        up_to: Position,
    ) -> Result<Option<bool>, ReadError> {
        let schema = &self.inner.schema;
        let partition = reader::partition_of(self.inner.partitions);
        // The transaction `up_to` numbers its rows in: rows of earlier
        // ones, and all of its own, must be finished. All of its own is
        // more than asked, never less.
        let tx = (up_to.saturating_sub(1) >> reader::RANK_BITS).to_string();
        let (partitions, unfinished): (i64, bool) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM {schema}.cursors WHERE subscription = $1), EXISTS (
                 SELECT 1 FROM {schema}.events e
                 JOIN {schema}.cursors c ON c.subscription = $1 AND c.partition = {partition}
                 WHERE e.tx_id <= $2::xid8
                   AND e.tx_id >= (SELECT min(tx_id) FROM {schema}.cursors WHERE subscription = $1)
                   AND (e.tx_id, e.position) > (c.tx_id, c.position)
                   AND (c.start_snapshot IS NULL OR NOT pg_visible_in_snapshot(e.tx_id, c.start_snapshot)))"
        )))
        .bind(subscription)
        .bind(tx)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(PostgresError::query("asking whether a subscription finished"))?;
        if partitions == 0 {
            return Err(PostgresError::Forgotten(subscription.to_owned()).into());
        }
        Ok(Some(!unfinished))
    }

    fn close(&self) {
        self.inner.closed.store(true, SeqCst);
        self.inner.wake.notify_waiters();
    }

    fn dead_letter_store(&self) -> Option<Arc<dyn DeadLetterStore>> {
        Some(Arc::new(PgStores {
            inner: Arc::clone(&self.inner),
        }))
    }

    fn retry_store(&self) -> Option<Arc<dyn RetryStore>> {
        Some(Arc::new(PgStores {
            inner: Arc::clone(&self.inner),
        }))
    }
}
