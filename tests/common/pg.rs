//! The PostgreSQL the tests run against: the server on the machine, a
//! schema of each test's own, dropped when the test ends.
//!
//! `EVENTBUS_POSTGRES_URL` names the server (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it cannot be reached a
//! test says so and passes without running, unless
//! `EVENTBUS_REQUIRE_SERVICES=1` is set (as CI sets it): then it fails.

use eventbus::PostgresLog;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

pub fn url() -> String {
    std::env::var("EVENTBUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema of this test's own, dropped with it.
pub struct Schema {
    pub name: String,
    pub pool: sqlx::PgPool,
}

impl Schema {
    /// A fresh schema name on a reachable server; `None` (said on stderr)
    /// when the server is unreachable and services are not required.
    pub async fn fresh(test: &str) -> Option<Schema> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pool = match sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url())
            .await
        {
            Ok(pool) => pool,
            Err(err) => {
                let why = format!("PostgreSQL at {} is unreachable: {err}", url());
                if std::env::var_os("EVENTBUS_REQUIRE_SERVICES").is_some_and(|v| v == "1") {
                    panic!("{why} (EVENTBUS_REQUIRE_SERVICES=1)");
                }
                eprintln!("SKIPPED {test}: {why}");
                return None;
            }
        };
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, SeqCst),
            fastrand::u32(..)
        );
        Some(Schema { name, pool })
    }

    /// An outbox in this schema, with a short lease and poll for tests.
    pub async fn log(&self) -> PostgresLog {
        self.builder().connect().await.expect("connect the outbox")
    }

    pub fn builder(&self) -> eventbus::backend::PostgresLogBuilder {
        PostgresLog::builder()
            .url(url())
            .schema(&self.name)
            .lease(Duration::from_secs(2))
            .poll_interval(Duration::from_millis(100))
    }

    /// Runs `sql` with `{schema}` replaced by this schema.
    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.replace("{schema}", &self.name)))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A number from `sql` (one row, one bigint column).
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.replace("{schema}", &self.name)))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // A connection of its own, on a thread of its own: the test's
        // runtime may be gone.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(pool) = sqlx::PgPool::connect(&url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {name} CASCADE"
                    )))
                    .execute(&pool)
                    .await;
                }
            });
        })
        .join();
    }
}
