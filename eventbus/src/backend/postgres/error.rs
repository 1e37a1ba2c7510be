//! Errors of the PostgreSQL outbox.

pub(crate) use crate::backend::url::redact;
use crate::backend::{ReadError, StoreError, WriteError};

/// Returned by [`PostgresLog`](super::PostgresLog) when the database cannot
/// be used, and the source of the read, write and store errors it returns.
/// A URL in an error never shows its password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// No connection could be made.
    #[error("cannot connect to PostgreSQL at {url}")]
    Connect {
        /// The URL, its password replaced by `***`.
        url: String,
        /// What the driver reported.
        #[source]
        source: sqlx::Error,
    },
    /// A statement failed; `doing` says what the outbox was doing.
    #[error("PostgreSQL failed while {doing}")]
    Query {
        /// What the outbox was doing.
        doing: &'static str,
        /// What the server or the driver reported.
        #[source]
        source: sqlx::Error,
    },
    /// A statement writing several events at once failed, and so did the
    /// statement writing this event alone afterwards. When the server
    /// refused it, the event was not stored; when the connection was lost
    /// while it committed, whether it was stored is unknown, as with any
    /// database write.
    #[error("PostgreSQL failed while {doing}")]
    Batch {
        /// What the outbox was doing.
        doing: &'static str,
        /// What the server or the driver reported, shared by the events
        /// of the batch.
        #[source]
        source: std::sync::Arc<sqlx::Error>,
    },
    /// The schema name is not a plain lower-case identifier.
    #[error(
        "`{0}` is not a usable schema name: use lower-case letters, digits and `_`, starting with a letter or `_`, at most 48 characters"
    )]
    SchemaName(String),
    /// The database is not the cluster the cursors were written on: it
    /// was restored from a dump, or the URL points somewhere else.
    /// Transaction ids start over in a restored cluster, so reading on would
    /// skip events.
    #[error(
        "the outbox in schema `{schema}` was written on PostgreSQL cluster {stored}, but this is cluster {found} (a dump and restore, or another server); reading on would skip events. Re-base it once every event was delivered: `UPDATE {schema}.cursors SET tx_id = '0', start_snapshot = NULL, position = (SELECT coalesce(max(position), 0) FROM {schema}.events); UPDATE {schema}.events SET tx_id = '0'; UPDATE {schema}.cluster SET system_identifier = '{found}';`"
    )]
    ClusterChanged {
        /// The schema of the outbox.
        schema: String,
        /// The cluster the outbox was written on.
        stored: String,
        /// The cluster connected to now.
        found: String,
    },
    /// The outbox's schema was written by a newer eventbus.
    #[error(
        "schema `{schema}` has outbox layout version {found}, newer than the {supported} this eventbus knows; upgrade eventbus"
    )]
    NewerLayout {
        /// The schema of the outbox.
        schema: String,
        /// The version found.
        found: i32,
        /// The newest version this code knows.
        supported: i32,
    },
    /// A table of the outbox exists with another shape than the outbox
    /// needs: another application's table, or a bad manual migration.
    #[error(
        "table `{schema}.{table}` does not have the shape the outbox needs ({detail}); point the outbox at another schema, or repair the table"
    )]
    Shape {
        /// The schema of the outbox.
        schema: String,
        /// The table.
        table: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A transaction id or a transaction's event count is past what a
    /// subscription's positions can number (2^40 transactions, 2^24 events
    /// in one transaction).
    #[error(
        "the outbox cannot number {0}: past 2^40 transaction ids or 2^24 events in one transaction"
    )]
    OutOfRange(String),
    /// A process holds the subscription (its lease has not run out), so it
    /// cannot be forgotten now. Nothing was deleted.
    #[error(
        "subscription `{0}` is held by a running process; stop it (or wait for its lease to run out) before forgetting it"
    )]
    Held(String),
    /// The subscription's position was deleted
    /// ([`forget_subscription`](super::PostgresLog::forget_subscription))
    /// while this process had it open.
    #[error(
        "the position of subscription `{0}` was deleted (forget_subscription) while this process had it open; start the subscription again to begin afresh"
    )]
    Forgotten(String),
    /// Running processes read the subscription split into another number
    /// of partitions than this process is configured with. Nothing was
    /// changed.
    #[error(
        "subscription `{subscription}` is split into {found} partitions by processes that are running now, but this process is configured with {configured} (PostgresLogBuilder::partitions); stop those processes first, and this one re-bases the subscription at its start, or configure {found}"
    )]
    Partitions {
        /// The subscription.
        subscription: String,
        /// How many partitions its running processes read.
        found: usize,
        /// How many this process is configured with.
        configured: usize,
    },
    /// A partition count of 0, or over 1,024.
    #[error("{0} is not a usable partition count (PostgresLogBuilder::partitions): use 1 to 1024")]
    PartitionCount(usize),
    /// An event could not be turned into JSON.
    #[error("the event could not be encoded as JSON")]
    Encode(#[source] serde_json::Error),
}

impl PostgresError {
    pub(crate) fn query(doing: &'static str) -> impl FnOnce(sqlx::Error) -> PostgresError {
        move |source| PostgresError::Query { doing, source }
    }

    /// Whether retrying cannot help: the layout or the cluster is wrong.
    fn is_damage(&self) -> bool {
        matches!(
            self,
            PostgresError::ClusterChanged { .. }
                | PostgresError::NewerLayout { .. }
                | PostgresError::Shape { .. }
                | PostgresError::OutOfRange(_)
                | PostgresError::Forgotten(_)
                | PostgresError::Partitions { .. }
        )
    }
}

impl From<PostgresError> for WriteError {
    fn from(err: PostgresError) -> Self {
        if err.is_damage() {
            WriteError::Damaged(Box::new(err))
        } else {
            WriteError::Failed(Box::new(err))
        }
    }
}

impl From<PostgresError> for ReadError {
    fn from(err: PostgresError) -> Self {
        if err.is_damage() {
            ReadError::Damaged(Box::new(err))
        } else {
            ReadError::Failed(Box::new(err))
        }
    }
}

impl From<PostgresError> for StoreError {
    fn from(err: PostgresError) -> Self {
        if err.is_damage() {
            StoreError::Damaged(Box::new(err))
        } else {
            StoreError::Failed(Box::new(err))
        }
    }
}
