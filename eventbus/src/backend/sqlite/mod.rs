//! The embedded durable log: events in a SQLite file, so they survive a
//! process crash.
//!
//! `notify` returns once the event's transaction has committed. One writer
//! thread commits everything queued since its last commit in one
//! transaction (group commit), so many concurrent producers share each
//! fsync. Each subscription's position is a row committed as it finishes
//! events, so after a restart it resumes where it left off: every event
//! accepted is handled at least once by every subscription that existed
//! when it was accepted. A row that no longer decodes (a schema change, a
//! corrupt payload) is copied to a quarantine table with the reason, and
//! the stream goes on. Finished events are pruned by age and count.
//!
//! # Durability modes
//!
//! The file is in WAL mode. With [`Synchronous::Normal`], the default, a
//! committed event survives a process crash; an operating-system crash or
//! power loss can lose the last commits. [`Synchronous::Full`] also survives
//! those, at the cost of an fsync per group commit.
//!
//! # What it cannot protect against
//!
//! The file is the log. A file deleted, emptied or replaced while the
//! service is stopped opens as a new, empty log: nothing in it can tell that
//! events were there before. Back the file up as you would any database.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("events.db");
//! use eventbus::{Bus, SqliteLog};
//!
//! let bus = Bus::builder().backend(SqliteLog::open(&path).await?).build()?;
//! # bus.shutdown().await;
//! # Ok(()) }
//! ```

mod cursor;
mod error;
mod quarantine;
mod schema;
mod stores;
mod writer;

pub use self::error::{ForgetError, OpenError, SqliteError};
pub use self::quarantine::{Quarantined, Requeued};

use self::stores::Stores;
use self::writer::{Reply, Request, Writer};
use super::{
    Backend, Capabilities, DeadLetterStore, Position, ReadError, Reader, RetryStore, StartFrom,
    WriteError,
};
use crate::event::AnyEvent;
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How long `open` waits for another owner of the file to let go.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The most pages a SQLite database can have (`PRAGMA max_page_count`).
const SQLITE_MAX_PAGE_COUNT: u64 = 0xffff_fffe;

/// How hard SQLite works to keep commits across a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// Survives a process crash; the default.
    #[default]
    Normal,
    /// Also survives an operating-system crash or power loss.
    Full,
}

/// Which finished events are deleted. An event is finished once every
/// subscription has moved past it; unfinished events are never deleted.
///
/// Each limit prunes on its own: an event goes once it is finished and
/// past either. For no limit, write `Duration::MAX` or `u64::MAX`.
///
/// # Examples
///
/// Keep finished events for a week, however many there are:
///
/// ```
/// use eventbus::backend::sqlite::Retention;
/// use std::time::Duration;
///
/// let week = Retention {
///     max_age: Duration::from_secs(7 * 24 * 3600),
///     max_events: u64::MAX,
///     ..Retention::default()
/// };
/// # let _ = week;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Finished events older than this are deleted. Default 24 hours;
    /// `Duration::MAX` for no limit.
    pub max_age: Duration,
    /// Finished events beyond the newest this many are deleted. Default
    /// 1,000,000; `u64::MAX` for no limit.
    pub max_events: u64,
    /// How often to prune. Default every 10 seconds; `Duration::MAX` never
    /// prunes.
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(24 * 3600),
            max_events: 1_000_000,
            every: Duration::from_secs(10),
        }
    }
}

/// Settings of a [`SqliteLog`]; from [`SqliteLog::options`].
#[derive(Debug, Clone, Default)]
#[must_use = "options do nothing until `open` is called"]
pub struct SqliteOptions {
    synchronous: Synchronous,
    retention: Retention,
    max_size: Option<u64>,
}

impl SqliteOptions {
    /// The durability mode. Default [`Synchronous::Normal`].
    pub fn synchronous(mut self, mode: Synchronous) -> Self {
        self.synchronous = mode;
        self
    }

    /// Which finished events are pruned. Default [`Retention::default`].
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Caps the file at about `bytes`: past it, `notify` fails with a clear
    /// "full" error and everything already accepted stays. Default: no cap
    /// beyond the disk itself; so is `u64::MAX`, or any size larger than
    /// SQLite can address.
    ///
    /// The cap must be at least [`MIN_MAX_SIZE`](Self::MIN_MAX_SIZE): the
    /// empty tables alone take about 40 KiB, and a cap below that would be
    /// full before the first event.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("events.db");
    /// use eventbus::SqliteLog;
    ///
    /// let log = SqliteLog::options().max_size(256 << 20).open(&path).await?;
    /// # drop(log);
    ///
    /// let err = SqliteLog::options().max_size(0).open(&path).await.unwrap_err();
    /// assert!(err.to_string().ends_with(
    ///     "`max_size` of 0 bytes is below the 65536 the log's tables need; \
    ///      raise it, or leave it unset for no cap"
    /// ));
    /// # Ok(()) }
    /// ```
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// The smallest [`max_size`](Self::max_size) accepted, 64 KiB: the empty
    /// tables and room for some events.
    pub const MIN_MAX_SIZE: u64 = 64 * 1024;

    /// Opens (or creates) the log at `path`.
    ///
    /// # Errors
    ///
    /// [`OpenError`] naming the file: not ours, not a database, in use by
    /// another log, read-only, written by a newer eventbus, or a
    /// [`max_size`](Self::max_size) too small for the tables.
    pub async fn open(self, path: impl AsRef<Path>) -> Result<SqliteLog, OpenError> {
        let path = path.as_ref().to_owned();
        if let Some(max_size) = self.max_size
            && max_size < Self::MIN_MAX_SIZE
        {
            return Err(OpenError::MaxSizeTooSmall {
                path,
                max_size,
                minimum: Self::MIN_MAX_SIZE,
            });
        }
        tokio::task::spawn_blocking(move || SqliteLog::open_blocking(path, self))
            .await
            .map_err(|join| OpenError::Other {
                path: PathBuf::new(),
                source: Box::new(std::io::Error::other(join.to_string())),
            })?
    }
}

/// A durable [`Backend`] in a SQLite file. See the [module docs](self).
///
/// Clones are handles to the same log: keep one after handing the log to
/// [`Bus::builder`](crate::Bus::builder), to call
/// [`forget_subscription`](SqliteLog::forget_subscription) on it.
#[derive(Clone)]
pub struct SqliteLog {
    shared: Arc<Shared>,
}

/// What [`SqliteLog::forget_subscription`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Forgotten {
    /// Whether the subscription had a stored position.
    pub position: bool,
    /// Retry schedules deleted.
    pub retries: usize,
    /// Quarantined events deleted.
    pub quarantined: usize,
    /// Dead letters deleted.
    pub dead_letters: usize,
}

pub(crate) struct Shared {
    path: PathBuf,
    requests: mpsc::Sender<Request>,
    head: Arc<AtomicU64>,
    head_rx: watch::Receiver<Position>,
    closed: AtomicBool,
    /// Appends that passed the `closed` check and have not been answered.
    appending: AtomicU64,
    /// Tells cursors the log is closed, once no accepted append is still
    /// on its way to the file: a cursor that sees it has read everything.
    closed_tx: watch::Sender<bool>,
    /// A connection for reading dead letters, opened on first use.
    reader: Arc<std::sync::Mutex<Option<Connection>>>,
    open_cursors: OpenCursors,
}

/// The subscriptions with a cursor open in this process, counted by name:
/// the writer forgets a subscription only while it has none.
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenCursors(Arc<Mutex<HashMap<String, usize>>>);

impl OpenCursors {
    /// Marks `subscription` running until the returned guard is dropped.
    fn hold(&self, subscription: &str) -> OpenCursor {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(subscription.to_owned())
            .or_default() += 1;
        OpenCursor {
            cursors: self.clone(),
            subscription: subscription.to_owned(),
        }
    }

    pub(crate) fn contains(&self, subscription: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(subscription)
    }
}

/// Keeps a subscription marked running; held by its cursor, and by `open`
/// while the cursor is being made, so a failed open lets go too.
#[derive(Debug)]
pub(crate) struct OpenCursor {
    cursors: OpenCursors,
    subscription: String,
}

impl Drop for OpenCursor {
    fn drop(&mut self) {
        let mut open = self
            .cursors
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.subscription) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.subscription);
            }
        }
    }
}

impl fmt::Debug for SqliteLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLog")
            .field("path", &self.shared.path)
            .field("head", &self.shared.head.load(SeqCst))
            .finish()
    }
}

impl SqliteLog {
    /// Opens (or creates) the log at `path` with the default options.
    ///
    /// # Errors
    ///
    /// As [`SqliteOptions::open`].
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteLog, OpenError> {
        SqliteOptions::default().open(path).await
    }

    /// Options for [`SqliteOptions::open`].
    pub fn options() -> SqliteOptions {
        SqliteOptions::default()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// How many events were ever appended to the file: the position of the
    /// last one, since positions start at 1 and are never reused (pruning
    /// keeps the count).
    pub fn len(&self) -> u64 {
        self.shared.head.load(SeqCst).saturating_sub(1)
    }

    /// Whether no event was ever appended to the file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deletes everything the log keeps for `subscription`: its position,
    /// retry schedules, quarantined events and dead letters, in one
    /// transaction, and says how much went.
    ///
    /// A subscription removed from the code keeps its stored position, the
    /// oldest of all, so no event after it is ever pruned. Forget it once
    /// it is gone for good. A subscription of that name started later
    /// begins afresh, from its [`StartFrom`]. Forgetting a name the log
    /// does not know deletes nothing and is not an error.
    ///
    /// # Errors
    ///
    /// [`ForgetError::Running`] while a bus of this process runs the
    /// subscription on this log (shut that bus down first), and
    /// [`ForgetError::Log`] when the log fails. Either way nothing was
    /// deleted.
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
    /// // `legacy-mailer` was removed in this release.
    /// let forgotten = log.forget_subscription("legacy-mailer").await?;
    /// println!("forgot {} dead letters", forgotten.dead_letters);
    ///
    /// let bus = Bus::builder().backend(log.clone()).build()?;
    /// # bus.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn forget_subscription(&self, subscription: &str) -> Result<Forgotten, ForgetError> {
        let stopped = || ForgetError::Log {
            subscription: subscription.to_owned(),
            source: SqliteError::stopped(&self.shared.path),
        };
        let (reply, answer) = oneshot::channel();
        self.shared
            .requests
            .send(Request::Forget {
                subscription: subscription.to_owned(),
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        let forgotten = answer.await.map_err(|_| stopped())??;
        Ok(forgotten)
    }

    fn open_blocking(path: PathBuf, options: SqliteOptions) -> Result<SqliteLog, OpenError> {
        let conn = open_connection(&path)?;
        // Asked for read-write, SQLite quietly opens a file it may not
        // write read-only, and every write would fail later instead.
        if conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(|e| OpenError::classify(&path, e))?
        {
            return Err(OpenError::ReadOnly { path });
        }
        let lock = std::fs::File::options()
            .read(true)
            .open(&path)
            .map_err(|e| OpenError::Other {
                path: path.clone(),
                source: Box::new(e),
            })?;
        // A previous owner in this process may still be finishing its last
        // commit; give it a moment before calling the file taken.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        while let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock() {
            if std::time::Instant::now() >= deadline {
                return Err(OpenError::Locked { path });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Refuse another application's file before writing anything to it:
        // even switching to WAL rewrites its header.
        let found = schema::check(&conn, &path)?;
        enter_wal(&conn, &path)?;
        match found {
            schema::Found::Empty => schema::create(&conn, &path)?,
            schema::Found::Ours => schema::migrate(&conn, &path)?,
        }
        let synchronous = match options.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous = {synchronous};"))
            .map_err(|e| OpenError::classify(&path, e))?;
        if let Some(bytes) = options.max_size {
            let page_size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(|e| OpenError::classify(&path, e))?;
            // SQLite's page size is a power of two from 512 to 65536.
            let pages = bytes / u64::try_from(page_size).unwrap_or(1).max(1);
            // SQLite clamps larger counts to the most pages it can address:
            // such a cap is no cap, so leave SQLite's default alone.
            if pages < SQLITE_MAX_PAGE_COUNT {
                conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                    .map_err(|e| OpenError::classify(&path, e))?;
            }
        }
        let head: i64 = conn
            .query_row(
                // The AUTOINCREMENT counter remembers positions whose rows
                // were pruned: the next event gets the one after it.
                "SELECT MAX(
                     COALESCE((SELECT MAX(position) FROM events), 0),
                     COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)
                 ) + 1",
                [],
                |r| r.get(0),
            )
            .map_err(|e| OpenError::classify(&path, e))?;
        let head = head as Position;
        let (requests, rx) = mpsc::channel(1 << 16);
        let open_cursors = OpenCursors::default();
        let head_cell = Arc::new(AtomicU64::new(head));
        let (head_tx, head_rx) = watch::channel(head);
        let writer = Writer {
            conn,
            requests: rx,
            head: Arc::clone(&head_cell),
            head_tx,
            retention: options.retention,
            open_cursors: open_cursors.clone(),
            lock,
            path: path.clone(),
        };
        std::thread::Builder::new()
            .name("eventbus-sqlite-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| OpenError::Other {
                path: path.clone(),
                source: Box::new(e),
            })?;
        let (closed_tx, _) = watch::channel(false);
        Ok(SqliteLog {
            shared: Arc::new(Shared {
                path,
                requests,
                head: head_cell,
                head_rx,
                closed: AtomicBool::new(false),
                appending: AtomicU64::new(0),
                closed_tx,
                reader: Arc::default(),
                open_cursors,
            }),
        })
    }
}

/// Opens a connection to a log file already checked, with the settings
/// every connection of ours uses.
pub(crate) fn connect(path: &Path) -> Result<Connection, OpenError> {
    let conn = open_connection(path)?;
    enter_wal(&conn, path)?;
    Ok(conn)
}

/// Opens a connection without writing anything to the file.
fn open_connection(path: &Path) -> Result<Connection, OpenError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| OpenError::classify(path, e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| OpenError::classify(path, e))?;
    Ok(conn)
}

/// Switches the file to WAL mode (a no-op once it is), which changes its
/// header: only for a file known to be ours.
fn enter_wal(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| OpenError::classify(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::Other {
            path: path.to_owned(),
            source: format!("SQLite refused WAL mode (journal mode is {mode})").into(),
        });
    }
    Ok(())
}

impl Shared {
    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, SqliteError> {
        request(&self.requests, &self.path, make).await
    }

    /// Tells cursors the log is closed if it is and no append is still on
    /// its way. Called by `close` and by the last append to finish, so
    /// whichever comes second sends it.
    fn announce_closed(&self) {
        if self.closed.load(SeqCst) && self.appending.load(SeqCst) == 0 {
            self.closed_tx.send_replace(true);
        }
    }

    /// Runs `read` on the reader connection, on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, SqliteError> {
        let reader = Arc::clone(&self.reader);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = reader.lock().expect("reader lock");
            if conn.is_none() {
                *conn = Some(connect(&path).map_err(|e| SqliteError::open(&path, e))?);
            }
            let conn = conn.as_ref().expect("connected above");
            read(conn).map_err(|e| SqliteError::sqlite(&path, e))
        })
        .await
        .map_err(|e| SqliteError::task(&self.path, e))?
    }
}

/// Counts an append as on its way for as long as it lives, however its
/// future ends.
struct Appending<'a>(&'a Shared);

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        self.0.appending.fetch_sub(1, SeqCst);
        self.0.announce_closed();
    }
}

/// Sends a request to the writer and waits for its commit.
pub(crate) async fn request<T>(
    requests: &mpsc::Sender<Request>,
    path: &Path,
    make: impl FnOnce(Reply<T>) -> Request,
) -> Result<T, SqliteError> {
    let (reply, answer) = oneshot::channel();
    requests
        .send(make(reply))
        .await
        .map_err(|_| SqliteError::stopped(path))?;
    match answer.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(failure)) => Err(failure.into_error(path)),
        Err(_) => Err(SqliteError::stopped(path)),
    }
}

#[async_trait]
impl Backend for SqliteLog {
    /// Durable and ordered; one process owns the file, and retries are
    /// the runtime's (their schedules kept in the file).
    fn capabilities(&self) -> Capabilities {
        Capabilities::new().durable(true).ordered(true)
    }

    async fn append(&self, event: AnyEvent) -> Result<Position, WriteError> {
        // Counted before the check, so `close` cannot announce the end
        // while an append it let through is still on its way: the readers
        // would stop short of an event whose `notify` then returns `Ok`.
        self.shared.appending.fetch_add(1, SeqCst);
        let _appending = Appending(&self.shared);
        if self.shared.closed.load(SeqCst) {
            return Err(WriteError::Closed(event));
        }
        let payload = event
            .to_json_bytes()
            .map_err(|e| SqliteError::encode(&self.shared.path, e))?;
        let meta = event.meta();
        let (name, version, event_id) = (meta.name.to_string(), meta.version, meta.id.to_string());
        Ok(self
            .shared
            .request(|reply| Request::Append {
                name,
                version,
                event_id,
                payload,
                reply,
            })
            .await?)
    }

    async fn reader(
        &self,
        subscription: &str,
        from: StartFrom,
    ) -> Result<Box<dyn Reader>, ReadError> {
        let subscription = subscription.to_owned();
        // Before the writer hears of the reader: a forget it handles after
        // this sees the subscription running.
        let open = self.shared.open_cursors.hold(&subscription);
        let start = self
            .shared
            .request(|reply| Request::Open {
                subscription: subscription.clone(),
                from,
                reply,
            })
            .await?;
        let path = self.shared.path.clone();
        let conn = tokio::task::spawn_blocking(move || connect(&path))
            .await
            .map_err(|e| SqliteError::task(&self.shared.path, e))?
            .map_err(|e| ReadError::Failed(Box::new(e)))?;
        Ok(Box::new(cursor::SqliteCursor::new(
            &self.shared,
            subscription,
            start,
            conn,
            open,
        )))
    }

    fn close(&self) {
        self.shared.closed.store(true, SeqCst);
        self.shared.announce_closed();
    }

    fn dead_letter_store(&self) -> Option<Arc<dyn DeadLetterStore>> {
        Some(Arc::new(Stores {
            shared: Arc::clone(&self.shared),
        }))
    }

    fn retry_store(&self) -> Option<Arc<dyn RetryStore>> {
        Some(Arc::new(Stores {
            shared: Arc::clone(&self.shared),
        }))
    }
}
