//! What the tool reports when it cannot do what it was asked, and the exit
//! code of each: 2 when the log cannot be opened at all (a wrong path or
//! URL, a file that is not a log), 1 when an operation fails or is refused.

use std::path::PathBuf;

/// Every failure of a command, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The path names nothing.
    #[error(
        "no log at {0}: the file does not exist; check the path (a SQLite log is a file, a PostgreSQL log a postgres:// URL)"
    )]
    NoSuchFile(PathBuf),
    /// The path names something that is not an eventbus log.
    #[error("{path} is not an eventbus log ({found}); check the path")]
    NotALog {
        /// The file.
        path: PathBuf,
        /// What the file turned out to be.
        found: String,
    },
    /// The log was written by a newer or much older eventbus.
    #[error(
        "{path} has layout version {found}, and this tool reads version {supported}; use the `eventbus` tool of the same release as the service"
    )]
    Version {
        /// The file or schema.
        path: String,
        /// The version found.
        found: i64,
        /// The version this tool reads.
        supported: i64,
    },
    /// The PostgreSQL server cannot be reached or refused the login.
    #[error(
        "cannot reach PostgreSQL at {url}: {reason}; check the URL, that the server runs, and the credentials"
    )]
    Unreachable {
        /// The URL, without its password.
        url: String,
        /// The driver's reason.
        reason: String,
    },
    /// The schema named has no outbox.
    #[error(
        "no eventbus outbox in schema `{schema}` of {url}; check `--schema` (default `eventbus`)"
    )]
    NoOutbox {
        /// The schema.
        schema: String,
        /// The URL, without its password.
        url: String,
    },
    /// A write refused because a running process owns the SQLite log.
    #[error(
        "{path} is open in {holder}, which owns it: {what} would change the log under it. Stop that process and run this again, or {instead}"
    )]
    Owned {
        /// The file.
        path: PathBuf,
        /// Which process holds it, as far as the system says.
        holder: String,
        /// What was asked.
        what: &'static str,
        /// The alternative while it runs.
        instead: &'static str,
    },
    /// An id or row that is not there.
    #[error("{0}")]
    NotFound(String),
    /// An operation matched many rows and was not confirmed.
    #[error("{count} dead letters match; pass `--yes` to {what} them all")]
    Unconfirmed {
        /// How many matched.
        count: u64,
        /// The operation.
        what: &'static str,
    },
    /// The operator answered no.
    #[error("cancelled; nothing was changed")]
    Cancelled,
    /// A bad argument the parser could not catch.
    #[error("{0}")]
    Usage(String),
    /// The database failed a query.
    #[error("{context}: {source}")]
    Database {
        /// What was being done.
        context: String,
        /// The database's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl CliError {
    /// The process's exit code for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::NoSuchFile(_)
            | CliError::NotALog { .. }
            | CliError::Version { .. }
            | CliError::Unreachable { .. }
            | CliError::NoOutbox { .. }
            | CliError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// Wraps a database error with what was being done.
    pub(crate) fn db(
        context: impl Into<String>,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> CliError {
        let context = context.into();
        move |source| CliError::Database { context, source }
    }
}

/// Shorthand for the commands' results.
pub(crate) type Result<T, E = CliError> = std::result::Result<T, E>;
