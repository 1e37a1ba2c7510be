//! The `eventbus` tool, run as a user runs it, against logs the test makes
//! through the bus: a SQLite file, and a PostgreSQL outbox in a schema of
//! the test's own (skipped, said on stderr, when the server at
//! `EVENTBUS_POSTGRES_URL` is down, unless `EVENTBUS_REQUIRE_SERVICES=1`).

use eventbus::testing::Recorder;
use eventbus::{
    AnyEvent, BoxError, Bus, Consumer, PostgresLog, Retry, SqliteLog, Track, Trackable, event,
    register,
};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

/// An order, as a service would post it.
#[event]
pub struct OrderPlaced {
    /// The order.
    pub order_id: u64,
}

#[register]
impl Trackable for OrderPlaced {
    fn track(&self) -> Track {
        Track::new(self, self.order_id)
    }
}

/// Fails while `broken` is set, records otherwise.
#[derive(Clone, Default)]
struct Flaky {
    broken: Arc<AtomicBool>,
    seen: Recorder,
}

impl Consumer for Flaky {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        if self.broken.load(SeqCst) {
            return Err("payment provider unreachable".into());
        }
        self.seen.handle(event).await
    }
}

/// Runs the tool with `args`, stdin closed (not a terminal).
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventbus"))
        .args(args)
        .env_remove("EVENTBUS_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run the eventbus tool")
}

/// Runs the tool and returns its stdout, failing on a non-zero exit.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "eventbus {args:?} failed with {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs the tool expecting exit `code`; returns its stderr.
fn fails(code: i32, args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "eventbus {args:?}: stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty() || code == 1, "{out:?}");
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 errors");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn json(args: &[&str]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("eventbus {args:?}: {e}: {out}"))
}

/// Waits up to `secs` seconds for `done`.
async fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A log at `path` with three dead letters of `payments` (orders 1 to 3)
/// and `audit` having handled all three; no process holds it after.
async fn sqlite_log_with_letters(path: &Path) {
    let bus = Bus::builder()
        .backend(SqliteLog::open(path).await.unwrap())
        .build()
        .unwrap();
    let broken = Flaky::default();
    broken.broken.store(true, SeqCst);
    bus.subscribe("payments", broken)
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    bus.subscribe("audit", Flaky::default())
        .start()
        .await
        .unwrap();
    for id in 1..=3 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    bus.drain().await.unwrap();
    assert_eq!(bus.dead_letters().count().await.unwrap(), 3);
    assert!(bus.shutdown().await.is_clean());
    drop(bus);
    // The log's writer thread lets go of the file moments after the last
    // handle is gone: wait for it, as a service that stopped.
    let file = std::fs::File::open(path).unwrap();
    wait_until(10, "the stopped bus lets go of the file", || {
        file.try_lock().is_ok()
    })
    .await;
}

/// A `tail --follow` child, killed when dropped, so a failing assertion
/// leaves no process behind.
struct Following {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Following {
    /// `eventbus <path> tail --follow --json --limit <limit>`, its output
    /// read line by line on a thread of its own.
    fn tail(path: &std::path::Path, limit: u32) -> Self {
        use std::io::BufRead;
        let limit = limit.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_eventbus"))
            .args([
                path.to_str().unwrap(),
                "tail",
                "--follow",
                "--json",
                "--limit",
                &limit,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Following { child, lines }
    }

    /// The next line printed, as JSON, within 10 s.
    fn next(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a line within 10 s");
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn letter_ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .expect("a list")
        .iter()
        .map(|l| l["id"].as_u64().expect("an id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_subscriptions_events_and_letters_as_tables_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    sqlite_log_with_letters(&path).await;
    let log = path.to_str().unwrap();

    let table = ok(&[log, "subscriptions"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("SUBSCRIPTION  POSITION  HEAD  LAG  DEAD LETTERS"),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().eq(["audit", "4", "4", "0", "0", "0"])),
        "{table}"
    );
    assert!(
        lines.iter().any(|l| l
            .split_whitespace()
            .eq(["payments", "4", "4", "0", "3", "0"])),
        "{table}"
    );
    assert!(
        table.ends_with("\nno process has the log open\n"),
        "{table}"
    );
    let subs = json(&[log, "subscriptions", "--json"]);
    assert_eq!(subs[1]["name"], "payments");
    assert_eq!(subs[1]["dead_letters"], 3);
    assert_eq!(subs[1]["lag"], 0);
    assert_eq!(subs[1]["head"], 4);

    let tail = ok(&[log, "tail"]);
    assert_eq!(tail.lines().count(), 3, "{tail}");
    assert!(
        tail.lines().all(|l| l.contains("order.placed v1")),
        "{tail}"
    );
    assert!(
        tail.lines().last().unwrap().contains(r#""order_id":3"#),
        "{tail}"
    );
    let lines = ok(&[log, "tail", "--json", "--limit", "2"]);
    let events: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{lines}");
    assert_eq!(events[0]["position"], 2);
    assert_eq!(events[1]["payload"]["order_id"], 3);
    assert_eq!(events[1]["name"], "order.placed");
    assert!(ok(&[log, "tail", "--name", "Nothing*"]).is_empty());
    assert_eq!(ok(&[log, "tail", "--name", "order.*"]).lines().count(), 3);
    // `audit` finished everything: nothing of it is left to tail.
    assert!(ok(&[log, "tail", "--subscription", "audit"]).is_empty());
    let missing = fails(1, &[log, "tail", "--subscription", "nobody"]);
    assert!(missing.contains("no subscription `nobody`"), "{missing}");

    let list = ok(&[log, "dead-letters", "list"]);
    assert!(list.starts_with("ID  SUBSCRIPTION  EVENT"), "{list}");
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(
        list.lines()
            .nth(1)
            .unwrap()
            .contains("payment provider unreachable"),
        "{list}"
    );
    let letters = json(&[log, "dead-letters", "list", "--json"]);
    assert_eq!(letter_ids(&letters), [1, 2, 3]);
    assert_eq!(letters[0]["subscription"], "payments");
    assert_eq!(letters[0]["replaying"], false);
    let filtered = json(&[
        log,
        "dead-letters",
        "list",
        "--json",
        "--error",
        "PROVIDER",
        "--name",
        "order.*",
        "--subscription",
        "payments",
        "--after",
        "1",
        "--limit",
        "1",
    ]);
    assert_eq!(letter_ids(&filtered), [2]);
    assert_eq!(
        json(&[log, "dead-letters", "list", "--json", "--error", "timeout"]),
        Value::Array(vec![])
    );
    assert_eq!(
        ok(&[log, "dead-letters", "list", "--subscription", "audit"]),
        "no dead letters match\n"
    );

    let show = ok(&[log, "dead-letters", "show", "2"]);
    assert!(show.contains("event:           order.placed v1"), "{show}");
    assert!(show.contains("  1. payment provider unreachable"), "{show}");
    assert!(show.contains(r#""order_id": 2"#), "{show}");
    let letter = json(&[log, "dead-letters", "show", "2", "--json"]);
    assert_eq!(letter["payload"]["order_id"], 2);
    assert_eq!(letter["errors"][0], "payment provider unreachable");
    let unknown = fails(1, &[log, "dead-letters", "show", "99"]);
    assert_eq!(unknown, "error: no dead letter has id 99\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tail_follow_prints_events_as_they_are_appended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    sqlite_log_with_letters(&path).await;
    let following = Following::tail(&path, 1);
    let next = || following.next();
    assert_eq!(next()["position"], 3);
    // A service appends while the tool follows.
    let bus = Bus::builder()
        .backend(SqliteLog::open(&path).await.unwrap())
        .build()
        .unwrap();
    for id in 4..=5 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    let (fourth, fifth) = (next(), next());
    assert_eq!(fourth["position"], 4);
    assert_eq!(fourth["payload"]["order_id"], 4);
    assert_eq!(fifth["position"], 5);
    assert!(bus.shutdown().await.is_clean());
}

/// With nothing shown first (`--limit 0`), `--follow` starts at the end of
/// the log: only what is appended afterwards is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tail_follow_with_nothing_shown_starts_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    sqlite_log_with_letters(&path).await;
    let following = Following::tail(&path, 0);
    // Give the tool time to read the log and start following.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bus = Bus::builder()
        .backend(SqliteLog::open(&path).await.unwrap())
        .build()
        .unwrap();
    bus.notify(OrderPlaced::new(4)).await.unwrap();
    let first = following.next();
    assert_eq!(
        first["position"], 4,
        "the three earlier events are not shown"
    );
    assert!(bus.shutdown().await.is_clean());
}

/// `--error` matches each message as written: quotes and backslashes,
/// which the stored JSON list escapes, match; the list's own syntax does
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_error_filter_matches_each_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    sqlite_log_with_letters(&path).await;
    let errors = serde_json::to_string(&[r#"he said "no""#, r"C:\temp"]).unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE dead_letters SET errors = ?1 WHERE id = 2", [errors])
        .unwrap();
    let log = path.to_str().unwrap();
    let ids = |text: &str| {
        letter_ids(&json(&[
            log,
            "dead-letters",
            "list",
            "--json",
            "--error",
            text,
        ]))
    };
    assert_eq!(ids(r#"said "no""#), [2]);
    assert_eq!(ids(r"C:\temp"), [2]);
    assert_eq!(ids("HE SAID"), [2], "any case");
    assert!(
        ids(r#"", ""#).is_empty(),
        "the JSON list's syntax is not a message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_quarantined_rows_are_listed_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    sqlite_log_with_letters(&path).await;
    let log = path.to_str().unwrap();
    assert_eq!(ok(&[log, "quarantine", "list"]), "no quarantined rows\n");
    // A row the bus set aside: written as the log's quarantine does.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO quarantine VALUES ('audit', 7, 'OrderPlaced', 9, x'7b6e6f74206a736f6e', 'unknown version 9 of OrderPlaced', 0)",
            [],
        )
        .unwrap();
    let list = ok(&[log, "quarantine", "list"]);
    assert!(
        list.lines().nth(1).unwrap().split_whitespace().take(4).eq([
            "audit",
            "7",
            "OrderPlaced",
            "v9"
        ]),
        "{list}"
    );
    let rows = json(&[
        log,
        "quarantine",
        "list",
        "--json",
        "--subscription",
        "audit",
    ]);
    assert_eq!(rows[0]["reason"], "unknown version 9 of OrderPlaced");
    // Not JSON: shown as the text it is.
    assert_eq!(rows[0]["payload"], "{not json");
    assert_eq!(
        json(&[
            log,
            "quarantine",
            "list",
            "--json",
            "--subscription",
            "payments"
        ]),
        Value::Array(vec![])
    );
    let show = ok(&[log, "quarantine", "show", "audit", "7"]);
    assert!(
        show.contains("reason:         unknown version 9 of OrderPlaced"),
        "{show}"
    );
    assert_eq!(
        json(&[log, "quarantine", "show", "audit", "7", "--json"])["position"],
        7
    );
    let missing = fails(1, &[log, "quarantine", "show", "audit", "8"]);
    assert!(
        missing.contains("no row at position 8 is quarantined for `audit`"),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_replay_runs_when_the_bus_starts_and_discard_removes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    sqlite_log_with_letters(&path).await;
    let log = path.to_str().unwrap();

    let replayed = ok(&[log, "dead-letters", "replay", "1"]);
    assert!(
        replayed.starts_with("replayed 1 dead letters: 1\n"),
        "{replayed}"
    );
    assert_eq!(
        json(&[log, "dead-letters", "show", "1", "--json"])["replaying"],
        true
    );
    // Asked twice: left as it is, and said so.
    let again = run(&[log, "dead-letters", "replay", "1"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stdout)
            .contains("being replayed already, left as they are: 1")
    );
    let unknown = run(&[log, "dead-letters", "replay", "42", "--json"]);
    assert_eq!(unknown.status.code(), Some(1));
    let outcome: Value = serde_json::from_slice(&unknown.stdout).unwrap();
    assert_eq!(outcome["not_found"][0], 42);

    // Many at once need `--yes` when nobody is at a terminal to ask.
    let unconfirmed = fails(
        1,
        &[
            log,
            "dead-letters",
            "discard",
            "--all-matching",
            "--subscription",
            "payments",
        ],
    );
    assert_eq!(
        unconfirmed,
        "error: 3 dead letters match; pass `--yes` to discard them all\n"
    );
    let mixed = fails(
        2,
        &[
            log,
            "dead-letters",
            "discard",
            "2",
            "--subscription",
            "payments",
        ],
    );
    assert!(mixed.contains("`--all-matching`"), "{mixed}");
    let discarded = json(&[log, "dead-letters", "discard", "2", "--json"]);
    assert_eq!(discarded["done"][0], 2);
    assert_eq!(
        letter_ids(&json(&[log, "dead-letters", "list", "--json"])),
        [1, 3]
    );

    // The service starts: the replay asked for while it was stopped runs.
    let bus = Bus::builder()
        .backend(SqliteLog::open(&path).await.unwrap())
        .build()
        .unwrap();
    let fixed = Flaky::default();
    bus.subscribe("payments", fixed.clone())
        .start()
        .await
        .unwrap();
    wait_until(10, "the replay delivered", || fixed.seen.len() == 1).await;
    assert_eq!(fixed.seen.of::<OrderPlaced>()[0].order_id, 1);
    wait_until(10, "the replayed letter removed", || {
        ok(&[log, "dead-letters", "list", "--json"]) != "[]\n"
            && letter_ids(&json(&[log, "dead-letters", "list", "--json"])) == [3]
    })
    .await;
    assert!(bus.shutdown().await.is_clean());
    // The process lets go of the file once its last handle is gone.
    drop(bus);

    // All that match, confirmed.
    let all = json(&[
        log,
        "dead-letters",
        "replay",
        "--all-matching",
        "--name",
        "order.placed",
        "--yes",
        "--json",
    ]);
    assert_eq!(all["done"], serde_json::json!([3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writes_are_refused_while_a_bus_holds_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    sqlite_log_with_letters(&path).await;
    let log = path.to_str().unwrap();
    let bus = Bus::builder()
        .backend(SqliteLog::open(&path).await.unwrap())
        .build()
        .unwrap();
    bus.subscribe("audit", Flaky::default())
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(4)).await.unwrap();

    let holder = format!("is open in process {}", std::process::id());
    for args in [
        &[log, "prune", "--max-age", "0s"][..],
        &[log, "dead-letters", "replay", "1"],
        &[log, "dead-letters", "discard", "1"],
        &[log, "dead-letters", "discard", "--all-matching", "--yes"],
    ] {
        let refused = fails(1, args);
        assert!(refused.contains(&holder), "{refused}");
        assert!(
            refused.contains("Stop that process and run this again"),
            "{refused}"
        );
    }
    // Reading beside it is fine, and nothing changed.
    assert_eq!(
        letter_ids(&json(&[log, "dead-letters", "list", "--json"])),
        [1, 2, 3]
    );
    assert_eq!(
        json(&[log, "prune", "--dry-run", "--max-age", "0s", "--json"])["dry_run"],
        true
    );
    let table = ok(&[log, "subscriptions"]);
    let pid = std::process::id();
    assert!(
        table.ends_with(&format!("\nopen in process {pid}\n"))
            || table.contains(&format!("\nopen in process {pid} (")),
        "{table}"
    );
    let subs = json(&[log, "subscriptions", "--json"]);
    assert_eq!(subs[1]["name"], "payments");
    assert_eq!(subs[1]["head"], 5);
    // `payments` does not run now: the new event waits for it.
    assert_eq!(subs[1]["lag"], 1);
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_prune_deletes_only_finished_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    sqlite_log_with_letters(&path).await;
    let log = path.to_str().unwrap();
    // Within the default limits: nothing goes.
    assert_eq!(
        ok(&[log, "prune", "--dry-run"]),
        "would delete 0 events, 0 dead letters, 0 quarantined rows\n"
    );
    let dry = json(&[log, "prune", "--dry-run", "--max-age", "0s", "--json"]);
    assert_eq!(dry["events"], 3);
    assert_eq!(
        ok(&[log, "tail"]).lines().count(),
        3,
        "a dry run deletes nothing"
    );
    assert_eq!(
        ok(&[log, "prune", "--max-events", "1"]),
        "deleted 2 events, 0 dead letters, 0 quarantined rows\n"
    );
    let left: Vec<Value> = ok(&[log, "tail", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["position"], 3);
    // Positions are never reused: the head stays.
    assert_eq!(json(&[log, "subscriptions", "--json"])[0]["head"], 4);
    // A subscription behind holds its events back.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE subscriptions SET position = 3 WHERE name = 'audit'",
            [],
        )
        .unwrap();
    assert_eq!(
        json(&[log, "prune", "--max-age", "0s", "--json"])["events"],
        0
    );
    let err = fails(2, &[log, "prune", "--max-age", "soon"]);
    assert!(
        err.contains("`soon` is not a duration; write it as 90s, 30m, 24h or 7d"),
        "{err}"
    );
}

#[test]
fn wrong_paths_urls_and_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.db");
    let err = fails(2, &[missing.to_str().unwrap(), "subscriptions"]);
    assert!(
        err.contains("the file does not exist; check the path"),
        "{err}"
    );
    assert!(!missing.exists(), "a missing log must not be created");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database at all, just some text here").unwrap();
    let err = fails(2, &[text.to_str().unwrap(), "dead-letters", "list"]);
    assert!(err.contains("is not an eventbus log"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        "not a database at all, just some text here"
    );

    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE users (id INTEGER)")
        .unwrap();
    let err = fails(2, &[other.to_str().unwrap(), "subscriptions"]);
    assert!(
        err.contains("not an eventbus log (a database with application id 0x0)"),
        "{err}"
    );

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, "").unwrap();
    let err = fails(2, &[empty.to_str().unwrap(), "subscriptions"]);
    assert!(err.contains("not an eventbus log (an empty file)"), "{err}");

    let err = fails(2, &[dir.path().to_str().unwrap(), "subscriptions"]);
    assert!(err.contains("not an eventbus log (a directory)"), "{err}");

    let newer = dir.path().join("newer.db");
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA application_id = 1163280979; PRAGMA user_version = 99; CREATE TABLE events (position INTEGER)")
        .unwrap();
    let err = fails(2, &[newer.to_str().unwrap(), "subscriptions"]);
    assert!(
        err.contains("has layout version 99, and this tool reads version 3; use the `eventbus` tool of the same release as the service"),
        "{err}"
    );

    let err = fails(2, &["http://127.0.0.1/events", "subscriptions"]);
    assert!(
        err.contains("neither a file path nor a postgres:// URL"),
        "{err}"
    );

    // Nothing listens on port 1; the password never shows.
    let err = fails(
        2,
        &["postgres://app:hunter2@127.0.0.1:1/db", "subscriptions"],
    );
    assert!(
        err.contains("cannot reach PostgreSQL at postgres://app:***@127.0.0.1:1/db"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let err = fails(
        2,
        &[
            "postgres://127.0.0.1:1/db",
            "--schema",
            "Bad-Name",
            "subscriptions",
        ],
    );
    assert!(err.contains("`--schema Bad-Name` is not a schema"), "{err}");
}

#[test]
fn a_server_that_answers_garbage_or_nothing_is_a_clear_error() {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    // Answers anything with bytes that are not the PostgreSQL protocol.
    let garbage = TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage_port = garbage.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in garbage.incoming().take(4) {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\nnot postgres");
        }
    });
    let url = format!("postgres://app@127.0.0.1:{garbage_port}/db");
    let err = fails(2, &[&url, "subscriptions"]);
    assert!(
        err.contains(&format!("cannot reach PostgreSQL at {url}: ")),
        "{err}"
    );

    // Accepts, then never says a word: the tool gives up after its wait.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let (stream, _) = silent.accept().unwrap();
        std::thread::sleep(Duration::from_secs(8));
        drop(stream);
    });
    let started = std::time::Instant::now();
    let url = format!("postgres://app@127.0.0.1:{silent_port}/db");
    let err = fails(2, &[&url, "subscriptions"]);
    assert!(err.contains("no answer within 5s"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the tool must not hang"
    );
    held.join().unwrap();
}

// ---- PostgreSQL ------------------------------------------------------

fn pg_url() -> String {
    std::env::var("EVENTBUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh schema name on a reachable server, dropped with the value;
/// `None` (said on stderr) when the server is down and not required.
struct Schema {
    name: String,
    pool: sqlx::PgPool,
}

impl Schema {
    async fn fresh(test: &str) -> Option<Schema> {
        let pool = match sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&pg_url())
            .await
        {
            Ok(pool) => pool,
            Err(err) => {
                let why = format!("PostgreSQL at {} is unreachable: {err}", pg_url());
                if std::env::var_os("EVENTBUS_REQUIRE_SERVICES").is_some_and(|v| v == "1") {
                    panic!("{why} (EVENTBUS_REQUIRE_SERVICES=1)");
                }
                eprintln!("SKIPPED {test}: {why}");
                return None;
            }
        };
        let name = format!("t_cli_{}_{}", std::process::id(), fastrand::u32(..));
        Some(Schema { name, pool })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (pool, name) = (self.pool.clone(), self.name.clone());
        // On a thread of its own: drop runs inside the test's runtime.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {name} CASCADE"
                    )))
                    .execute(&pool)
                    .await;
                });
        })
        .join()
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replay_is_delivered_by_the_running_bus() {
    let Some(schema) = Schema::fresh("postgres_replay_is_delivered_by_the_running_bus").await
    else {
        return;
    };
    let url = pg_url();
    let log = PostgresLog::builder()
        .url(&url)
        .schema(&schema.name)
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let bus = Bus::builder().backend(log).build().unwrap();
    let payments = Flaky::default();
    payments.broken.store(true, SeqCst);
    bus.subscribe("payments", payments.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    for id in 1..=3 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    bus.drain().await.unwrap();
    assert_eq!(bus.dead_letters().count().await.unwrap(), 3);
    payments.broken.store(false, SeqCst);
    let args = |rest: &[&'static str]| -> Vec<String> {
        let mut all = vec![url.clone(), "--schema".into(), schema.name.clone()];
        all.extend(rest.iter().map(|s| s.to_string()));
        all
    };
    let run_ok = |rest: &[&'static str]| {
        let all = args(rest);
        ok(&all.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let run_json =
        |rest: &[&'static str]| -> Value { serde_json::from_str(&run_ok(rest)).unwrap() };

    let table = run_ok(&["subscriptions"]);
    assert!(table.starts_with("SUBSCRIPTION  PARTITION  POSITION  HEAD  LAG  PARKED  DEAD LETTERS  QUARANTINED  MEMBERS  HOLDER"), "{table}");
    // One row per partition, each held by the running bus.
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], ["payments", "0"], "{table}");
    // Head, lag, parked, dead letters, quarantined, members.
    assert_eq!(&row[3..9], ["4", "0", "0", "3", "0", "1"], "{table}");
    let subs = run_json(&["subscriptions", "--json"]);
    let partitions = subs.as_array().unwrap();
    assert_eq!(partitions.len(), table.lines().count() - 1);
    for partition in partitions {
        assert_eq!(partition["name"], "payments");
        assert_eq!(partition["members"], 1);
        assert_eq!(partition["parked"], 0);
        assert_eq!(partition["lag"], 0);
        assert!(
            partition["holder"].is_string(),
            "a running bus holds the lease: {subs}"
        );
    }

    let events: Vec<Value> = run_ok(&["tail", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["payload"]["order_id"], 3);
    assert_eq!(run_ok(&["tail", "--limit", "1"]).lines().count(), 1);

    let letters = run_json(&["dead-letters", "list", "--json", "--error", "unreachable"]);
    let ids = letter_ids(&letters);
    assert_eq!(ids.len(), 3);
    let list = run_ok(&["dead-letters", "list"]);
    assert_eq!(list.lines().count(), 4, "{list}");
    let first = ids[0].to_string();
    let shown: Value = {
        let all = args(&["dead-letters", "show", "--json"]);
        let mut all: Vec<&str> = all.iter().map(String::as_str).collect();
        all.push(&first);
        serde_json::from_str(&ok(&all)).unwrap()
    };
    assert_eq!(shown["payload"]["order_id"], 1);
    assert_eq!(shown["errors"][0], "payment provider unreachable");

    // Asked from outside: the bus holding `payments` replays it.
    let replayed = {
        let all = args(&["dead-letters", "replay"]);
        let mut all: Vec<&str> = all.iter().map(String::as_str).collect();
        all.push(&first);
        ok(&all)
    };
    assert!(
        replayed.contains("replays them within about a second"),
        "{replayed}"
    );
    wait_until(15, "the running bus delivered the replay", || {
        payments.seen.len() == 1
    })
    .await;
    assert_eq!(payments.seen.of::<OrderPlaced>()[0].order_id, 1);
    let mut left = Vec::new();
    for _ in 0..100 {
        left = letter_ids(&run_json(&["dead-letters", "list", "--json"]));
        if left.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, ids[1..]);

    // Discarding through the shared store is safe while it runs.
    let unconfirmed = fails(
        1,
        &args(&["dead-letters", "discard", "--all-matching"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        unconfirmed.contains("2 dead letters match; pass `--yes`"),
        "{unconfirmed}"
    );
    let discarded = run_json(&[
        "dead-letters",
        "discard",
        "--all-matching",
        "--subscription",
        "payments",
        "--yes",
        "--json",
    ]);
    assert_eq!(
        letter_ids(&Value::Array(
            discarded["done"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| serde_json::json!({"id": id}))
                .collect()
        )),
        ids[1..]
    );
    assert_eq!(
        run_json(&["dead-letters", "list", "--json"]),
        Value::Array(vec![])
    );
    assert_eq!(
        payments.seen.len(),
        1,
        "a discarded letter is never delivered"
    );

    // Pruning is safe beside a running process on PostgreSQL.
    let dry = run_json(&["prune", "--dry-run", "--max-age", "0s", "--json"]);
    assert_eq!(dry["dry_run"], true);
    // Each event was its own transaction, and the cursors sit in the
    // last one: the two before it are finished.
    assert_eq!(dry["events"], 2, "{dry}");
    let pruned = run_json(&["prune", "--max-age", "0s", "--json"]);
    assert_eq!(pruned["dry_run"], false);
    // The bus prunes too; whichever gets the lock first does the work.
    if pruned["skipped"] == false {
        assert_eq!(pruned["events"], 2, "{pruned}");
    }
    wait_until(15, "the finished events pruned", || {
        run_ok(&["tail"]).lines().count() == 1
    })
    .await;
    assert_eq!(
        run_json(&["quarantine", "list", "--json"]),
        Value::Array(vec![])
    );

    assert!(bus.shutdown().await.is_clean());
    drop(bus);

    // With `payments` stopped, new events are its lag, and no one holds it.
    let producer = PostgresLog::builder()
        .url(&url)
        .schema(&schema.name)
        .connect()
        .await
        .unwrap();
    let bus = Bus::builder().backend(producer).build().unwrap();
    for id in 4..=5 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    let mut subs = Value::Null;
    for _ in 0..100 {
        subs = run_json(&["subscriptions", "--json"]);
        let partitions = subs.as_array().unwrap();
        let lag: u64 = partitions.iter().map(|p| p["lag"].as_u64().unwrap()).sum();
        if lag == 2 && partitions.iter().all(|p| p.get("holder").is_none()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let partitions = subs.as_array().unwrap();
    assert_eq!(
        partitions
            .iter()
            .map(|p| p["lag"].as_u64().unwrap())
            .sum::<u64>(),
        2,
        "{subs}"
    );
    assert!(
        partitions
            .iter()
            .all(|p| p.get("holder").is_none() && p["members"] == 0),
        "{subs}"
    );
    assert!(run_ok(&["subscriptions"]).contains("(none)"));
    assert!(bus.shutdown().await.is_clean());
    drop(schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_without_an_outbox_is_a_clear_error() {
    let Some(schema) = Schema::fresh("postgres_schema_without_an_outbox_is_a_clear_error").await
    else {
        return;
    };
    let url = pg_url();
    let err = fails(2, &[&url, "--schema", &schema.name, "subscriptions"]);
    assert!(
        err.contains(&format!("no eventbus outbox in schema `{}`", schema.name)),
        "{err}"
    );
    // Nothing was created.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&schema.name)
            .fetch_one(&schema.pool)
            .await
            .unwrap();
    assert!(!exists);
}
