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

    /// Waits, up to `secs` seconds, until `count(sql)` is at least `n`;
    /// fails the test with `what` when it never is.
    pub async fn wait_for_count(&self, secs: u64, what: &str, sql: &str, n: i64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        while self.count(sql).await < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} within {secs} s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.name.clone();
        super::on_own_runtime(move || async move {
            if let Ok(pool) = sqlx::PgPool::connect(&url()).await {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {name} CASCADE"
                )))
                .execute(&pool)
                .await;
            }
        });
    }
}

/// A PostgreSQL server of the test's own, in a temporary directory on a
/// free loopback port, for tests that stop and restart the server: the
/// shared one serves every other test running at the same time.
///
/// Built with the `initdb`, `pg_ctl` and `postgres` of the machine's
/// PostgreSQL; as root, they run as the `postgres` user. Stopped (fast)
/// when dropped, even after a failed assertion.
pub struct PrivateServer {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
}

impl PrivateServer {
    /// Initializes and starts one; `None` (said on stderr) when the
    /// machine has no PostgreSQL binaries and services are not required.
    pub fn start(test: &str) -> Option<PrivateServer> {
        let Some(bin) = Self::binaries() else {
            let why = "no PostgreSQL binaries (initdb, pg_ctl) under /usr/lib/postgresql";
            if std::env::var_os("EVENTBUS_REQUIRE_SERVICES").is_some_and(|v| v == "1") {
                panic!("{why} (EVENTBUS_REQUIRE_SERVICES=1)");
            }
            eprintln!("SKIPPED {test}: {why}");
            return None;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = PrivateServer { port, dir, bin };
        if Self::as_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(server.dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the server's directory");
        }
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        server.pg_ctl_start();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it (fast shutdown: sessions are cut) and waits until it is
    /// down.
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Starts it again and waits until it accepts connections.
    pub fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = format!("{}/server.log", self.dir.path().display());
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `program` of the server's binaries, as `postgres` when run as root
    /// (the server refuses to run as root).
    fn command(&self, program: &str) -> std::process::Command {
        let program = self.bin.join(program);
        if Self::as_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        }
    }

    fn as_root() -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
    }

    /// The newest `/usr/lib/postgresql/<version>/bin` with `initdb`.
    fn binaries() -> Option<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
            .collect();
        found.sort();
        found.pop()
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}
