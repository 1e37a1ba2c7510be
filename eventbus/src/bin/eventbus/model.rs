//! What the tool shows, the same for both backends: each row serializes as
//! the `--json` output and prints as a table row.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// A subscription's place in the log; on PostgreSQL one row per partition.
#[derive(Debug, Serialize)]
pub(crate) struct SubscriptionRow {
    pub(crate) name: String,
    /// PostgreSQL only: the partition this cursor is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) partition: Option<i32>,
    /// The first position the subscription has not finished.
    pub(crate) position: u64,
    /// The position the next event appended gets.
    pub(crate) head: u64,
    /// Events appended and not finished by it.
    pub(crate) lag: u64,
    /// PostgreSQL only: the member holding the partition's lease, while
    /// the lease runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) holder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lease_until: Option<DateTime<Utc>>,
    /// PostgreSQL only: processes whose membership is current.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) members: Option<u64>,
    /// PostgreSQL only: failed events parked until their retry, which the
    /// position has moved past.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) parked: Option<u64>,
    pub(crate) dead_letters: u64,
    pub(crate) quarantined: u64,
}

/// An event of the log.
#[derive(Debug, Serialize)]
pub(crate) struct EventRow {
    pub(crate) position: u64,
    pub(crate) name: String,
    pub(crate) version: i64,
    pub(crate) id: String,
    pub(crate) time: DateTime<Utc>,
    pub(crate) payload: Value,
}

/// A dead letter as stored: the tool has no event types, so the event
/// stays its name, version and JSON.
#[derive(Debug, Serialize)]
pub(crate) struct LetterRow {
    pub(crate) id: u64,
    pub(crate) subscription: String,
    pub(crate) name: String,
    pub(crate) version: i64,
    pub(crate) payload: Value,
    pub(crate) errors: Vec<String>,
    pub(crate) attempts: i64,
    pub(crate) first_failed_at: DateTime<Utc>,
    pub(crate) last_failed_at: DateTime<Utc>,
    /// Marked for replay, and the replay has not finished.
    pub(crate) replaying: bool,
}

/// A row that no longer decoded, set aside for a subscription.
#[derive(Debug, Serialize)]
pub(crate) struct QuarantineRow {
    pub(crate) subscription: String,
    pub(crate) position: u64,
    pub(crate) name: String,
    pub(crate) version: i64,
    pub(crate) payload: Value,
    pub(crate) reason: String,
    pub(crate) quarantined_at: DateTime<Utc>,
}

/// Which dead letters a command is about.
#[derive(Debug, Clone, Default)]
pub(crate) struct LetterFilter {
    pub(crate) subscription: Option<String>,
    /// An event name; `*` matches any run of characters.
    pub(crate) name: Option<String>,
    /// Text the error chain contains, in any case.
    pub(crate) error: Option<String>,
}

impl LetterFilter {
    /// `name` as a SQL `LIKE` pattern with `\` as its escape.
    pub(crate) fn name_like(&self) -> Option<String> {
        self.name
            .as_deref()
            .map(|n| like_escape(n).replace('*', "%"))
    }

    /// `error` as a SQL `LIKE` pattern matching it anywhere.
    pub(crate) fn error_like(&self) -> Option<String> {
        self.error
            .as_deref()
            .map(|e| format!("%{}%", like_escape(e)))
    }
}

fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Stored payload bytes as JSON, or as a string when they are not JSON
/// (a quarantined row may be anything).
pub(crate) fn payload_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// A stored error list (JSON) as strings, or the raw text as one.
pub(crate) fn errors_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|_| vec![text.to_owned()])
}

/// What pruning deleted, or would delete on a dry run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct PruneReport {
    pub(crate) dry_run: bool,
    pub(crate) events: u64,
    pub(crate) dead_letters: u64,
    pub(crate) quarantined: u64,
    /// PostgreSQL: another process was pruning, so this did nothing.
    pub(crate) skipped: bool,
}

/// How a replay or discard of each letter went.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Outcome {
    /// Ids replayed (marked) or discarded.
    pub(crate) done: Vec<u64>,
    /// Ids already marked for replay, left as they were.
    pub(crate) replaying: Vec<u64>,
    /// Ids no letter has.
    pub(crate) not_found: Vec<u64>,
}
