//! Errors of the SQLite log.

use std::path::PathBuf;

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

/// A log file SQLite found damaged; the source of
/// [`LogError::Damaged`](crate::log::LogError::Damaged), naming the file and
/// what to do.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{}` is damaged; stop the service, keep a copy of the file, then recover it into a new file (`sqlite3 {} .recover`) or restore a backup",
    path.display(),
    path.display()
)]
pub(crate) struct Damaged {
    pub(crate) path: PathBuf,
    #[source]
    pub(crate) source: Box<dyn std::error::Error + Send + Sync>,
}

impl Damaged {
    pub(crate) fn log_error(
        path: &std::path::Path,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> crate::log::LogError {
        crate::log::LogError::Damaged(Box::new(Damaged {
            path: path.to_owned(),
            source: source.into(),
        }))
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
        source: crate::log::LogError,
    },
}
