//! The NATS JetStream server the tests run against: the server on the
//! machine, with a stream (and its dead-letter stream and replay bucket)
//! of each test's own, deleted when the test ends.
//!
//! `NATS_URL` names the server (default `nats://127.0.0.1:4222`). When it
//! cannot be reached a test says so and passes without running, unless
//! `EVENTBUS_REQUIRE_SERVICES=1` is set (as CI sets it): then it fails.

use eventbus::NatsLog;
use eventbus::backend::NatsLogBuilder;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

pub fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A stream of this test's own, deleted with it.
pub struct Stream {
    /// The subject prefix: `t.<pid>_<n>_<random>`.
    pub prefix: String,
    /// The stream's name, as the log derives it from the prefix.
    pub name: String,
}

impl Stream {
    /// A fresh prefix on a reachable server; `None` (said on stderr) when
    /// the server is unreachable and services are not required.
    pub async fn fresh(test: &str) -> Option<Stream> {
        if let Err(err) = Self::reachable().await {
            let why = format!("NATS at {} is unreachable: {err}", url());
            if std::env::var_os("EVENTBUS_REQUIRE_SERVICES").is_some_and(|v| v == "1") {
                panic!("{why} (EVENTBUS_REQUIRE_SERVICES=1)");
            }
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
        Some(Self::named())
    }

    /// A fresh prefix, without checking the server.
    pub fn named() -> Stream {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let token = format!(
            "{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, SeqCst),
            fastrand::u32(..)
        );
        Stream {
            prefix: format!("t.{token}"),
            name: format!("T_{token}"),
        }
    }

    async fn reachable() -> Result<(), String> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(url())
            .await
            .map_err(|e| e.to_string())?;
        // The raw request: the client's typed account query does not parse
        // every server's answer.
        let answer = client
            .request("$JS.API.INFO", "".into())
            .await
            .map_err(|e| format!("JetStream: {e}"))?;
        let answer = String::from_utf8_lossy(&answer.payload);
        if answer.contains("account_info_response") && !answer.contains("\"error\"") {
            Ok(())
        } else {
            Err(format!("JetStream is not enabled: {answer}"))
        }
    }

    /// A log on this stream, with a short ack wait for tests.
    pub async fn log(&self) -> NatsLog {
        self.builder().connect().await.expect("connect to NATS")
    }

    pub fn builder(&self) -> NatsLogBuilder {
        NatsLog::builder()
            .url(url())
            .prefix(&self.prefix)
            .ack_wait(Duration::from_secs(2))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let name = self.name.clone();
        super::on_own_runtime(move || async move {
            let connect = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .connect(url());
            if let Ok(client) = connect.await {
                let js = async_nats::jetstream::new(client);
                let _ = js.delete_stream(&name).await;
                let _ = js.delete_stream(format!("{name}_DEAD_LETTERS")).await;
                let _ = js.delete_stream(format!("{name}_REPLAYS")).await;
            }
        });
    }
}

/// A NATS server of the test's own, with JetStream in a temporary
/// directory, on a free loopback port: for tests that kill and restart the
/// server, which the shared one serves every other test. Killed when
/// dropped, even after a failed assertion.
pub struct PrivateServer {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<std::process::Child>,
}

impl PrivateServer {
    /// The machine's server binary.
    const BINARY: &str = "/usr/sbin/nats-server";

    /// Starts one; `None` (said on stderr) when the machine has no
    /// nats-server and services are not required.
    pub fn start(test: &str) -> Option<PrivateServer> {
        if !std::path::Path::new(Self::BINARY).exists() {
            let why = format!("no {}", Self::BINARY);
            if std::env::var_os("EVENTBUS_REQUIRE_SERVICES").is_some_and(|v| v == "1") {
                panic!("{why} (EVENTBUS_REQUIRE_SERVICES=1)");
            }
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = PrivateServer {
            port,
            dir: tempfile::tempdir().expect("a temporary directory"),
            process: None,
        };
        server.run();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: what JetStream wrote to disk is what survives).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts it again on the same port and directory, and waits until it
    /// accepts connections.
    pub fn run(&mut self) {
        self.kill();
        let process = std::process::Command::new(Self::BINARY)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.process = Some(process);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not listen on {}", self.port);
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}
