//! Errors of the SQLite log.

use crate::backend::{ReadError, StoreError, WriteError};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Returned by [`SqliteLog::open`](super::SqliteLog::open) when the database
/// cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file is a SQLite database of another application.
    #[error("`{}` is not an eventbus database (it has {found}); point the log at a new file", path.display())]
    NotOurs {
        /// The file.
        path: PathBuf,
        /// What was found in it instead.
        found: String,
    },
    /// The file is not a SQLite database at all.
    #[error("`{}` is not a SQLite database; point the log at a new file", path.display())]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// Another log, in this process or another, has the file open.
    #[error("`{}` is in use by another eventbus log; only one process may own a log file", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file or its directory cannot be written.
    #[error("`{}` cannot be written: the file or its directory is read-only", path.display())]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// The database was written by a newer eventbus.
    #[error("`{}` has layout version {found}, newer than the {supported} this eventbus reads; upgrade eventbus", path.display())]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: i64,
        /// The newest version this code reads.
        supported: i64,
    },
    /// [`SqliteOptions::max_size`](super::SqliteOptions::max_size) is too
    /// small to hold the log's tables; the file was not touched.
    #[error("`{}`: `max_size` of {max_size} bytes is below the {minimum} the log's tables need; raise it, or leave it unset for no cap", path.display())]
    MaxSizeTooSmall {
        /// The file.
        path: PathBuf,
        /// The size asked for.
        max_size: u64,
        /// The smallest size accepted.
        minimum: u64,
    },
    /// Anything else SQLite or the file system reported.
    #[error("cannot open `{}`", path.display())]
    Other {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl OpenError {
    pub(crate) fn classify(path: &std::path::Path, err: rusqlite::Error) -> OpenError {
        use rusqlite::ffi::ErrorCode;
        let path = path.to_owned();
        match err.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => OpenError::NotADatabase { path },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => OpenError::Locked { path },
            Some(ErrorCode::ReadOnly) => OpenError::ReadOnly { path },
            Some(ErrorCode::CannotOpen) if !writable(&path) => OpenError::ReadOnly { path },
            _ => OpenError::Other {
                path,
                source: Box::new(err),
            },
        }
    }
}

/// Whether the file, or the directory it would be created in, is writable.
fn writable(path: &std::path::Path) -> bool {
    let target = if path.exists() {
        path.to_owned()
    } else {
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        }
    };
    std::fs::metadata(&target).is_ok_and(|m| !m.permissions().readonly())
}

/// What went wrong with a SQLite log's file: the source of the
/// [`ReadError`], [`WriteError`] and [`StoreError`] its [`SqliteLog`]
/// returns, and the error of its own operations. Names the file; its
/// source is SQLite's own error, where there is one.
///
/// [`SqliteLog`]: super::SqliteLog
#[derive(Debug, Clone)]
pub struct SqliteError {
    path: PathBuf,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Shared, so one failed group commit answers each of its requests.
    Sqlite(Arc<rusqlite::Error>),
    Stopped,
    Open(Arc<OpenError>),
    Encode(Arc<serde_json::Error>),
    Task(Arc<tokio::task::JoinError>),
}

impl SqliteError {
    pub(crate) fn sqlite(path: &Path, err: rusqlite::Error) -> Self {
        SqliteError::shared(path, Arc::new(err))
    }

    pub(crate) fn shared(path: &Path, err: Arc<rusqlite::Error>) -> Self {
        SqliteError::of(path, Kind::Sqlite(err))
    }

    pub(crate) fn open(path: &Path, err: OpenError) -> Self {
        SqliteError::of(path, Kind::Open(Arc::new(err)))
    }

    pub(crate) fn stopped(path: &Path) -> Self {
        SqliteError::of(path, Kind::Stopped)
    }

    pub(crate) fn encode(path: &Path, err: serde_json::Error) -> Self {
        SqliteError::of(path, Kind::Encode(Arc::new(err)))
    }

    pub(crate) fn task(path: &Path, err: tokio::task::JoinError) -> Self {
        SqliteError::of(path, Kind::Task(Arc::new(err)))
    }

    fn of(path: &Path, kind: Kind) -> Self {
        SqliteError {
            path: path.to_owned(),
            kind,
        }
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether SQLite found the file damaged (a malformed page, or bytes
    /// that are not a database where one was): retrying will not help.
    pub fn is_damaged(&self) -> bool {
        matches!(&self.kind, Kind::Sqlite(err) if is_damage(err))
    }

    fn is_full(&self) -> bool {
        matches!(&self.kind, Kind::Sqlite(err)
            if err.sqlite_error_code() == Some(rusqlite::ffi::ErrorCode::DiskFull))
    }
}

/// Whether SQLite found the file damaged.
pub(crate) fn is_damage(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ffi::ErrorCode::DatabaseCorrupt | rusqlite::ffi::ErrorCode::NotADatabase)
    )
}

impl fmt::Display for SqliteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.kind {
            Kind::Sqlite(_) if self.is_damaged() => write!(
                f,
                "`{path}` is damaged; stop the service, keep a copy of the file, then recover it into a new file (`sqlite3 {path} .recover`) or restore a backup"
            ),
            Kind::Sqlite(_) if self.is_full() => write!(
                f,
                "`{path}`: the database or disk is full; free space or raise the limit, nothing after the last accepted event was stored"
            ),
            Kind::Sqlite(_) => write!(f, "SQLite failed on `{path}`"),
            Kind::Stopped => write!(f, "the writer of `{path}` has stopped"),
            Kind::Open(_) => write!(f, "cannot connect to `{path}` again"),
            Kind::Encode(_) => write!(f, "cannot encode the event as JSON for `{path}`"),
            Kind::Task(_) => write!(f, "a SQLite task on `{path}` failed"),
        }
    }
}

impl std::error::Error for SqliteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Sqlite(err) => Some(&**err),
            Kind::Open(err) => Some(&**err),
            Kind::Encode(err) => Some(&**err),
            Kind::Task(err) => Some(&**err),
            Kind::Stopped => None,
        }
    }
}

impl From<SqliteError> for ReadError {
    fn from(err: SqliteError) -> Self {
        if err.is_damaged() {
            ReadError::Damaged(Box::new(err))
        } else {
            ReadError::Failed(Box::new(err))
        }
    }
}

impl From<SqliteError> for WriteError {
    fn from(err: SqliteError) -> Self {
        if err.is_damaged() {
            WriteError::Damaged(Box::new(err))
        } else {
            WriteError::Failed(Box::new(err))
        }
    }
}

impl From<SqliteError> for StoreError {
    fn from(err: SqliteError) -> Self {
        if err.is_damaged() {
            StoreError::Damaged(Box::new(err))
        } else {
            StoreError::Failed(Box::new(err))
        }
    }
}

/// Returned by [`SqliteLog::forget_subscription`](super::SqliteLog::forget_subscription)
/// when a subscription's durable state cannot be deleted. Every variant
/// names the subscription.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForgetError {
    /// A cursor for the subscription is open in this process: deleting its
    /// position under it would send it back to the start. Nothing was
    /// deleted.
    #[error(
        "subscription `{subscription}` is running; shut down the bus that runs it before forgetting it"
    )]
    Running {
        /// The subscription.
        subscription: String,
    },
    /// The log failed; nothing was deleted.
    #[error("cannot forget subscription `{subscription}`")]
    Log {
        /// The subscription.
        subscription: String,
        /// What the log reported.
        #[source]
        source: SqliteError,
    },
}
