//! What a backend gives the suite: a [`Harness`] per trial, which opens
//! buses on storage of its own, and the hooks only that backend can
//! provide. Everything a case knows of a backend goes through here.
//!
//! Adding a backend is an impl of [`Harness`] and a line in [`backends`].
//! A backend that needs a service (PostgreSQL, NATS) finds it through an
//! environment variable and returns `Err` from `fresh` when it cannot reach
//! it: its trials are then ignored with that reason, or fail where
//! `EVENTBUS_REQUIRE_SERVICES=1` is set.

use eventbus::{Bus, BusBuilder, NatsLog, PostgresLog, SqliteLog};
use futures_util::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// One backend, as the suite registers it.
pub(crate) struct Backend {
    /// The first part of each trial's name: `memory`, `sqlite`.
    pub(crate) name: &'static str,
    /// Fresh, empty storage for one trial.
    pub(crate) fresh: fn() -> Fresh,
}

/// A harness on fresh storage, or why the backend cannot be reached.
pub(crate) type Fresh = BoxFuture<'static, Result<Box<dyn Harness>, String>>;

/// Every backend the suite runs against.
pub(crate) fn backends() -> Vec<Backend> {
    vec![
        Backend {
            name: "memory",
            fresh: || Box::pin(async { Ok(Box::new(Memory) as Box<dyn Harness>) }),
        },
        Backend {
            name: "sqlite",
            fresh: Sqlite::fresh,
        },
        Backend {
            name: "postgres",
            fresh: Postgres::fresh,
        },
        Backend {
            name: "nats",
            fresh: Nats::fresh,
        },
    ]
}

/// What a case asks of the bus it opens. The harness applies it, so a
/// change to how a bus is built touches the harnesses, not the cases.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BusSettings {
    /// How long `shutdown` waits for subscriptions to finish.
    pub(crate) shutdown_timeout: Duration,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl BusSettings {
    /// Builds the bus a harness configured its backend on.
    pub(crate) fn build(self, backend: BusBuilder) -> Bus {
        backend
            .shutdown_timeout(self.shutdown_timeout)
            .build()
            .expect("the suite's settings are valid for every backend")
    }
}

/// One trial's storage on one backend.
pub(crate) trait Harness: Send + Sync {
    /// Opens a bus on this harness's storage. On a durable backend, opening
    /// again (after the last bus was shut down and dropped) reopens what it
    /// left: the same file, schema or stream.
    fn open(&self, settings: BusSettings) -> BoxFuture<'_, Bus>;

    /// Writes behind the bus's back. Every durable backend provides it: the
    /// cases that need it are the durable ones.
    fn tamper(&self) -> Option<&dyn Tamper> {
        None
    }
}

/// Changes only a backend can make to what it stores, as a bug, a bad
/// migration or a rolled-back deploy would.
pub(crate) trait Tamper: Send + Sync {
    /// Stores, as the next event of the log, an event named `name` that no
    /// event of this binary decodes. Called while a bus is open.
    fn store_undecodable<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()>;

    /// What the backend set aside for `subscription` because it did not
    /// decode, in log order. Called while a bus is open.
    fn quarantined<'a>(&'a self, subscription: &'a str) -> BoxFuture<'a, Vec<Quarantined>>;
}

/// An event set aside as undecodable.
#[derive(Debug, Clone)]
pub(crate) struct Quarantined {
    /// The stored event name.
    pub(crate) name: String,
    /// Why it did not decode.
    pub(crate) reason: String,
}

/// `Bus::builder().build()`: nothing to reopen, every bus starts empty.
struct Memory;

impl Harness for Memory {
    fn open(&self, settings: BusSettings) -> BoxFuture<'_, Bus> {
        Box::pin(async move { settings.build(Bus::builder()) })
    }
}

/// A SQLite file in a directory of the trial's own.
struct Sqlite {
    path: PathBuf,
    /// The log of the bus opened last, for the quarantine. Let go of before
    /// the next open: the file admits one owner at a time.
    log: Mutex<Option<SqliteLog>>,
    // Last, so the directory goes after the log.
    _dir: tempfile::TempDir,
}

impl Sqlite {
    fn fresh() -> Fresh {
        Box::pin(async {
            let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
            Ok(Box::new(Sqlite {
                path: dir.path().join("events.db"),
                log: Mutex::new(None),
                _dir: dir,
            }) as Box<dyn Harness>)
        })
    }

    fn current_log(&self) -> SqliteLog {
        self.log
            .lock()
            .expect("log lock")
            .clone()
            .expect("a bus is open on the harness")
    }
}

impl Harness for Sqlite {
    fn open(&self, settings: BusSettings) -> BoxFuture<'_, Bus> {
        Box::pin(async move {
            drop(self.log.lock().expect("log lock").take());
            let log = SqliteLog::open(&self.path)
                .await
                .unwrap_or_else(|e| panic!("cannot open the SQLite log: {e}"));
            *self.log.lock().expect("log lock") = Some(log.clone());
            settings.build(Bus::builder().backend(log))
        })
    }

    fn tamper(&self) -> Option<&dyn Tamper> {
        Some(self)
    }
}

impl Tamper for Sqlite {
    fn store_undecodable<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let conn =
                rusqlite::Connection::open(&self.path).expect("open the file beside the log");
            // The log's writer may hold the lock for a commit.
            conn.busy_timeout(Duration::from_secs(10))
                .expect("set a busy timeout");
            conn.execute(
                "INSERT INTO events (name, version, event_id, payload, appended_at)
                 VALUES (?1, 1, 'stored-behind-the-bus', '{}', 0)",
                [name],
            )
            .expect("insert an event behind the bus's back");
        })
    }

    fn quarantined<'a>(&'a self, subscription: &'a str) -> BoxFuture<'a, Vec<Quarantined>> {
        Box::pin(async move {
            self.current_log()
                .quarantined(subscription)
                .await
                .expect("read the quarantine")
                .into_iter()
                .map(|q| Quarantined {
                    name: q.name,
                    reason: q.reason,
                })
                .collect()
        })
    }
}

/// A schema of the trial's own on the PostgreSQL server of
/// `EVENTBUS_POSTGRES_URL`, dropped after the trial.
struct Postgres {
    schema: crate::common::pg::Schema,
    /// The outbox of the bus opened last, for the tamper hooks.
    log: Mutex<Option<PostgresLog>>,
}

impl Postgres {
    fn fresh() -> Fresh {
        Box::pin(async {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&crate::common::pg::url())
                .await
                .map_err(|e| format!("PostgreSQL at {}: {e}", crate::common::pg::url()))?;
            let name = format!("suite_{}_{}", std::process::id(), fastrand::u64(..));
            Ok(Box::new(Postgres {
                schema: crate::common::pg::Schema { name, pool },
                log: Mutex::new(None),
            }) as Box<dyn Harness>)
        })
    }
}

impl Harness for Postgres {
    fn open(&self, settings: BusSettings) -> BoxFuture<'_, Bus> {
        Box::pin(async move {
            let log = self
                .schema
                .builder()
                .connect()
                .await
                .unwrap_or_else(|e| panic!("cannot open the PostgreSQL outbox: {e}"));
            *self.log.lock().expect("log lock") = Some(log.clone());
            settings.build(Bus::builder().backend(log))
        })
    }

    fn tamper(&self) -> Option<&dyn Tamper> {
        Some(self)
    }
}

impl Tamper for Postgres {
    fn store_undecodable<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {}.events (event_id, name, version, payload)
                 VALUES (gen_random_uuid(), $1, 1, '{{}}')",
                self.schema.name
            )))
            .bind(name)
            .execute(&self.schema.pool)
            .await
            .expect("insert an event behind the bus's back");
        })
    }

    fn quarantined<'a>(&'a self, subscription: &'a str) -> BoxFuture<'a, Vec<Quarantined>> {
        Box::pin(async move {
            let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT name, reason FROM {}.quarantine WHERE subscription = $1 ORDER BY position",
                self.schema.name
            )))
            .bind(subscription)
            .fetch_all(&self.schema.pool)
            .await
            .expect("read the quarantine");
            rows.into_iter()
                .map(|(name, reason)| Quarantined { name, reason })
                .collect()
        })
    }
}

/// A stream of the trial's own on the NATS server of `NATS_URL`, deleted
/// after the trial.
struct Nats {
    stream: crate::common::nats::Stream,
    /// The log of the bus opened last, for the tamper hooks.
    log: Mutex<Option<NatsLog>>,
}

impl Nats {
    fn fresh() -> Fresh {
        Box::pin(async {
            let stream = crate::common::nats::Stream::named();
            // Reached once here, so an unreachable server is the trial's
            // reason to be ignored, not a panic inside it.
            stream.builder().connect().await.map_err(|e| {
                let mut why = format!("NATS at {}: {e}", crate::common::nats::url());
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    why.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                why
            })?;
            Ok(Box::new(Nats {
                stream,
                log: Mutex::new(None),
            }) as Box<dyn Harness>)
        })
    }

    fn current_log(&self) -> NatsLog {
        self.log
            .lock()
            .expect("log lock")
            .clone()
            .expect("a bus is open on the harness")
    }
}

impl Harness for Nats {
    fn open(&self, settings: BusSettings) -> BoxFuture<'_, Bus> {
        Box::pin(async move {
            let log = self.stream.log().await;
            *self.log.lock().expect("log lock") = Some(log.clone());
            settings.build(Bus::builder().backend(log))
        })
    }

    fn tamper(&self) -> Option<&dyn Tamper> {
        Some(self)
    }
}

impl Tamper for Nats {
    fn store_undecodable<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let log = self.current_log();
            let js = async_nats::jetstream::new(log.client().clone());
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Eventbus-Name", name);
            headers.insert("Eventbus-Version", "1");
            js.publish_with_headers(log.subject(name), headers, "{}".into())
                .await
                .expect("publish behind the bus's back")
                .await
                .expect("the server stored it");
        })
    }

    fn quarantined<'a>(&'a self, subscription: &'a str) -> BoxFuture<'a, Vec<Quarantined>> {
        Box::pin(async move {
            self.current_log()
                .quarantined(subscription)
                .await
                .expect("read the quarantine")
                .into_iter()
                .map(|q| Quarantined {
                    name: q.name,
                    reason: q.reason,
                })
                .collect()
        })
    }
}
