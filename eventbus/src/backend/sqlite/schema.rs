//! The database layout, and the check that a file is ours before we write
//! to it.

use super::error::OpenError;
use rusqlite::Connection;
use std::path::Path;

/// `EVBS`, stamped into the file header so another application's database
/// is never mistaken for ours.
pub(crate) const APPLICATION_ID: i64 = 0x4556_4253;
/// The layout version this code writes. Version 2 gives dead letters ids
/// that are never reused (`AUTOINCREMENT`) and an index to page them by
/// subscription.
pub(crate) const SCHEMA_VERSION: i64 = 3;

const CREATE: &str = "
CREATE TABLE events (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    event_id    TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    appended_at INTEGER NOT NULL
);
CREATE TABLE subscriptions (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE quarantine (
    subscription   TEXT    NOT NULL,
    position       INTEGER NOT NULL,
    name           TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    reason         TEXT    NOT NULL,
    quarantined_at INTEGER NOT NULL,
    PRIMARY KEY (subscription, position)
);
CREATE TABLE retries (
    subscription    TEXT    NOT NULL,
    position        INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    first_failed_at INTEGER NOT NULL,
    PRIMARY KEY (subscription, position)
);
";

/// The dead-letter table as of version 2, created by both a new file and
/// the migration from version 1.
const DEAD_LETTERS: &str = "
CREATE TABLE dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription    TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    payload         BLOB    NOT NULL,
    errors          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_at INTEGER NOT NULL,
    last_failed_at  INTEGER NOT NULL,
    replay_requested_at INTEGER
);
CREATE INDEX dead_letters_by_subscription ON dead_letters (subscription, id);
";

/// Version 1 to 2: the dead-letter table is rebuilt with `AUTOINCREMENT`,
/// so the id of a removed letter is never given to a new one. Rows keep
/// their ids, and `sqlite_sequence` starts past the highest.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE dead_letters RENAME TO dead_letters_v1;
{DEAD_LETTERS}
INSERT INTO dead_letters
    (id, subscription, name, version, payload, errors, attempts, first_failed_at, last_failed_at)
    SELECT id, subscription, name, version, payload, errors, attempts, first_failed_at, last_failed_at
    FROM dead_letters_v1;
DROP TABLE dead_letters_v1;
";

/// What [`check`] found in a file.
/// Version 3 marks dead letters asked to be replayed, so a replay asked for
/// survives a crash and can be asked for by any process.
const MIGRATE_2_TO_3: &str = "
ALTER TABLE dead_letters ADD COLUMN replay_requested_at INTEGER;
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// A new or empty database: the layout is still to be created.
    Empty,
    /// Our layout, at a version this code reads.
    Ours,
}

/// Checks that a file is empty, or ours and not newer than this code. Only
/// reads: a file that is refused is left exactly as it was.
pub(crate) fn check(conn: &Connection, path: &Path) -> Result<Found, OpenError> {
    let application_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| OpenError::classify(path, e))?;
    let tables: Vec<String> = {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .map_err(|e| OpenError::classify(path, e))?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| OpenError::classify(path, e))?
    };
    if application_id == 0 && tables.is_empty() {
        return Ok(Found::Empty);
    }
    if application_id != APPLICATION_ID {
        return Err(OpenError::NotOurs {
            path: path.to_owned(),
            found: if tables.is_empty() {
                format!("application id {application_id:#x}")
            } else {
                format!("tables {}", tables.join(", "))
            },
        });
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| OpenError::classify(path, e))?;
    if version > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(Found::Ours)
}

/// Creates the layout in a database [`check`] found empty.
pub(crate) fn create(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    conn.execute_batch(&format!(
        "BEGIN; {CREATE} {DEAD_LETTERS} PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))
    .map_err(|e| OpenError::classify(path, e))
}

/// Brings a database [`check`] found ours up to [`SCHEMA_VERSION`].
pub(crate) fn migrate(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| OpenError::classify(path, e))?;
    if version < 2 {
        // Rebuilt straight into the newest layout of the table.
        let migrate = MIGRATE_1_TO_2.replace("{DEAD_LETTERS}", DEAD_LETTERS);
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {migrate} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))
        .map_err(|e| OpenError::classify(path, e))?;
    } else if version < 3 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {MIGRATE_2_TO_3} PRAGMA user_version = 3; COMMIT;"
        ))
        .map_err(|e| OpenError::classify(path, e))?;
    }
    Ok(())
}
