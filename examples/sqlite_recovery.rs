//! What the SQLite log costs when it has a lot to catch up on, next to the
//! raw SQLite work it replaces, measured in the same run:
//!
//! - **pruning a backlog**: `notify` latency while 1,000,000 finished events
//!   are pruned, next to one raw `DELETE` of them (what a producer used to
//!   wait behind);
//! - **restarting with large events**: the peak memory of a subscription
//!   catching up on 30 events of 10 MB, next to one raw read of them all
//!   (what a read bounded only by `max_demand` held);
//! - **opening with many dead letters**: time and peak memory to open a log
//!   holding 100,000 letters and read a first page, next to one raw read of
//!   all of them (what opening used to do).
//!
//! ```sh
//! cargo run --release --example sqlite_recovery
//! ```
//!
//! Each case runs in a child process of its own, so each peak memory figure
//! (`VmHWM`, Linux only) belongs to that case alone. Medians of 3 runs.

use eventbus::backend::sqlite::Retention;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, SqliteLog, StartFrom, event};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[event]
struct OrderPlaced {
    order_id: u64,
    note: String,
}

struct Noop;

impl Consumer for Noop {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        std::hint::black_box(event);
        Ok(())
    }
}

const BACKLOG: u64 = 1_000_000;
const LARGE: usize = 30;
const LARGE_BYTES: usize = 10 << 20;
const LETTERS: u64 = 100_000;

/// The peak resident memory of this process so far, in MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A log file with the layout in place and nothing running on it.
async fn fresh_log(path: &Path) {
    drop(SqliteLog::open(path).await.expect("open"));
    // The writer lets go of the file once it has checkpointed.
    drop(SqliteLog::open(path).await.expect("reopen"));
}

fn stored(order_id: u64, note: &str) -> String {
    serde_json::to_string(&OrderPlaced::new(order_id, note.to_owned())).expect("json")
}

/// 1,000,000 events that the subscription `done` has finished.
fn fill_finished(path: &Path) {
    let mut conn = rusqlite::Connection::open(path).expect("open");
    let tx = conn.transaction().expect("tx");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO events (name, version, event_id, payload, appended_at)
                 VALUES ('order.placed', 1, ?1, ?2, 0)",
            )
            .expect("prepare");
        let payload = stored(0, "").into_bytes();
        for n in 0..BACKLOG {
            insert
                .execute(rusqlite::params![n.to_string(), payload])
                .expect("insert");
        }
    }
    tx.execute(
        "INSERT INTO subscriptions (name, position, created_at) VALUES ('done', ?1, 0)",
        [BACKLOG as i64 + 1],
    )
    .expect("cursor");
    tx.commit().expect("commit");
}

/// Case `prune-raw`: one `DELETE` of the whole backlog; prints seconds.
async fn prune_raw(path: &Path) {
    fresh_log(path).await;
    fill_finished(path);
    let conn = rusqlite::Connection::open(path).expect("open");
    let start = Instant::now();
    conn.execute("DELETE FROM events WHERE position <= ?1", [BACKLOG as i64])
        .expect("delete");
    println!("{}", start.elapsed().as_secs_f64());
}

/// Case `prune-bus`: notifies one after another while the log prunes the
/// backlog; prints the longest and the p99 `notify` wait and the time until
/// the backlog was gone, in seconds.
async fn prune_bus(path: &Path) {
    fresh_log(path).await;
    fill_finished(path);
    let log = SqliteLog::options()
        .retention(Retention {
            max_age: Duration::ZERO,
            max_events: 0,
            every: Duration::ZERO,
        })
        .open(path)
        .await
        .expect("open");
    let bus = Bus::builder().backend(log).build().expect("bus");
    let watch = rusqlite::Connection::open(path).expect("open");
    let start = Instant::now();
    let mut waits = Vec::new();
    let mut pruned_after = None;
    for n in 0.. {
        let sent = Instant::now();
        bus.notify(OrderPlaced::new(n, String::new()))
            .await
            .expect("notify");
        waits.push(sent.elapsed().as_secs_f64());
        if n % 100 == 0 {
            let left: i64 = watch
                .query_row(
                    "SELECT COUNT(*) FROM events WHERE position <= ?1",
                    [BACKLOG as i64],
                    |r| r.get(0),
                )
                .expect("count");
            if left == 0 {
                pruned_after = Some(start.elapsed().as_secs_f64());
                break;
            }
        }
    }
    bus.shutdown().await;
    waits.sort_by(f64::total_cmp);
    let p99 = waits[waits.len() * 99 / 100];
    let max = waits[waits.len() - 1];
    println!(
        "{max} {p99} {} {}",
        pruned_after.unwrap_or(f64::NAN),
        waits.len()
    );
}

/// Writes the 30 large events with no subscription to read them.
async fn write_large(path: &Path) {
    let bus = Bus::builder()
        .backend(SqliteLog::open(path).await.expect("open"))
        .build()
        .expect("bus");
    let note = "x".repeat(LARGE_BYTES);
    for n in 0..LARGE as u64 {
        bus.notify(OrderPlaced::new(n, note.clone()))
            .await
            .expect("notify");
    }
    bus.shutdown().await;
}

/// Case `large-raw`: reads the 30 events in one query; prints the peak MiB
/// that added.
async fn large_raw(path: &Path) {
    let before = peak_mib();
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut stmt = conn
        .prepare("SELECT payload FROM events ORDER BY position LIMIT 1000")
        .expect("prepare");
    let rows: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let events: Vec<AnyEvent> = rows
        .iter()
        .map(|p| {
            eventbus::registry()
                .decode("order.placed", 1, p)
                .expect("decode")
        })
        .collect();
    std::hint::black_box((&rows, &events));
    println!("{}", peak_mib() - before);
}

/// Case `large-bus`: a subscription from the beginning, `max_demand` 1000,
/// catches up on the 30 events; prints the peak MiB that added.
async fn large_bus(path: &Path) {
    let before = peak_mib();
    let bus = Bus::builder()
        .backend(SqliteLog::open(path).await.expect("open"))
        .build()
        .expect("bus");
    bus.subscribe("catch-up", Noop)
        .start_from(StartFrom::Beginning)
        .max_demand(1000)
        .start()
        .await
        .expect("subscribe");
    bus.drain().await.expect("drain");
    bus.shutdown().await;
    println!("{}", peak_mib() - before);
}

fn fill_letters(path: &Path) {
    let mut conn = rusqlite::Connection::open(path).expect("open");
    let tx = conn.transaction().expect("tx");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO dead_letters
                 (subscription, name, version, payload, errors, attempts, first_failed_at, last_failed_at)
                 VALUES ('webhooks', 'order.placed', 1, ?1, '[\"endpoint returned 503\"]', 5, 0, 0)",
            )
            .expect("prepare");
        for n in 0..LETTERS {
            insert
                .execute([stored(n, "a note of some length for the payload").into_bytes()])
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
}

/// Case `letters-raw`: loads every letter row and decodes its event, as
/// opening used to; prints seconds and the peak MiB that added.
async fn letters_raw(path: &Path) {
    let before = peak_mib();
    let start = Instant::now();
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut stmt = conn
        .prepare("SELECT name, version, payload, errors FROM dead_letters ORDER BY id")
        .expect("prepare");
    let letters: Vec<(AnyEvent, String)> = stmt
        .query_map([], |r| {
            let name: String = r.get(0)?;
            let payload: Vec<u8> = r.get(2)?;
            let event = eventbus::registry()
                .decode(&name, r.get(1)?, &payload)
                .expect("decode");
            Ok((event, r.get(3)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    std::hint::black_box(&letters);
    println!("{} {}", start.elapsed().as_secs_f64(), peak_mib() - before);
}

/// Case `letters-bus`: opens the log, builds the bus and reads the first
/// page of 100 letters; prints seconds and the peak MiB that added.
async fn letters_bus(path: &Path) {
    let before = peak_mib();
    let start = Instant::now();
    let bus = Bus::builder()
        .backend(SqliteLog::open(path).await.expect("open"))
        .build()
        .expect("bus");
    let page = bus
        .dead_letters()
        .page(&eventbus::dead_letter::DeadLetterQuery::new())
        .await
        .expect("page");
    assert_eq!(page.letters.len(), 100);
    let elapsed = start.elapsed().as_secs_f64();
    println!("{elapsed} {}", peak_mib() - before);
    bus.shutdown().await;
}

/// Runs one case in a child process, three times, and returns each run's
/// printed numbers. A case that reads a prepared file gets a fresh copy of
/// it, made by another child, so its peak memory is its own.
fn runs(case: &str, prepared: Option<&str>) -> Vec<Vec<f64>> {
    let exe = std::env::current_exe().expect("exe");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("events.db");
    let child = |args: &[&str]| {
        let out = Command::new(&exe).args(args).output().expect("run case");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let file = file.to_str().expect("utf-8 path");
    (0..3)
        .map(|_| {
            for leftover in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{file}{leftover}"));
            }
            if let Some(kind) = prepared {
                child(&["--prepare", kind, "--file", file]);
            }
            child(&["--case", case, "--file", file])
                .split_whitespace()
                .map(|v| v.parse().expect("a number"))
                .collect()
        })
        .collect()
}

fn median(runs: &[Vec<f64>], column: usize) -> f64 {
    let mut values: Vec<f64> = runs.iter().map(|r| r[column]).collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| std::path::PathBuf::from(&args[i + 1]))
    };
    if let (Some(kind), Some(file)) = (arg("--prepare"), arg("--file")) {
        fresh_log(&file).await;
        match kind.to_str() {
            Some("large") => write_large(&file).await,
            Some("letters") => fill_letters(&file),
            other => panic!("unknown file {other:?}"),
        }
        return;
    }
    if let (Some(case), Some(file)) = (arg("--case"), arg("--file")) {
        match case.to_str().expect("utf-8") {
            "prune-raw" => prune_raw(&file).await,
            "prune-bus" => prune_bus(&file).await,
            "large-raw" => large_raw(&file).await,
            "large-bus" => large_bus(&file).await,
            "letters-raw" => letters_raw(&file).await,
            "letters-bus" => letters_bus(&file).await,
            other => panic!("unknown case {other}"),
        }
        return;
    }

    let raw = runs("prune-raw", None);
    let bus = runs("prune-bus", None);
    println!("Pruning {BACKLOG} finished events (medians of 3):");
    println!("| measurement | seconds |");
    println!("| --- | --- |");
    println!(
        "| raw: one DELETE of the backlog | {:.3} |",
        median(&raw, 0)
    );
    println!(
        "| eventbus: longest notify wait while pruning | {:.3} |",
        median(&bus, 0)
    );
    println!(
        "| eventbus: p99 notify wait while pruning | {:.4} |",
        median(&bus, 1)
    );
    println!(
        "| eventbus: until the backlog was gone | {:.3} |",
        median(&bus, 2)
    );
    println!("({} notifies in the median run)", median(&bus, 3));
    println!();

    let raw = runs("large-raw", Some("large"));
    let bus = runs("large-bus", Some("large"));
    println!(
        "Catching up on {LARGE} events of {} MiB (peak memory added, medians of 3):",
        LARGE_BYTES >> 20
    );
    println!("| measurement | MiB |");
    println!("| --- | --- |");
    println!(
        "| raw: one read of all {LARGE}, decoded | {:.0} |",
        median(&raw, 0)
    );
    println!(
        "| eventbus: subscription with max_demand 1000 | {:.0} |",
        median(&bus, 0)
    );
    println!();

    let raw = runs("letters-raw", Some("letters"));
    let bus = runs("letters-bus", Some("letters"));
    println!("Opening a log with {LETTERS} dead letters (medians of 3):");
    println!("| measurement | seconds | peak MiB added |");
    println!("| --- | --- | --- |");
    println!(
        "| raw: load and decode every letter | {:.3} | {:.0} |",
        median(&raw, 0),
        median(&raw, 1)
    );
    println!(
        "| eventbus: open, build the bus, read the first page of 100 | {:.3} | {:.0} |",
        median(&bus, 0),
        median(&bus, 1)
    );
}
