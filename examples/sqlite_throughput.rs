//! Durable throughput of the SQLite log, next to raw SQLite inserts of the
//! same rows measured in the same run.
//!
//! ```sh
//! cargo run --release --example sqlite_throughput
//! cargo run --release --example sqlite_throughput -- --quick
//! ```
//!
//! Each figure is the median of 3 runs, in events per second, for both
//! durability modes: `synchronous = NORMAL` (the default: survives a process
//! crash) and `FULL` (also survives power loss). Files go to a temporary
//! directory on the same disk.

use eventbus::backend::sqlite::Synchronous;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, SqliteLog, event};
use std::path::Path;
use std::time::{Duration, Instant};

#[event]
struct OrderPlaced {
    order_id: u64,
    customer: String,
    cents: u64,
}

struct Noop;

impl Consumer for Noop {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        std::hint::black_box(event);
        Ok(())
    }
}

fn event(n: u64) -> OrderPlaced {
    OrderPlaced::new(n, format!("customer-{}", n % 1000), 1_000 + n % 9_000)
}

fn median(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut rates: Vec<f64> = (0..runs).map(|_| f()).collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn pragma(mode: Synchronous) -> &'static str {
    match mode {
        Synchronous::Full => "FULL",
        _ => "NORMAL",
    }
}

/// Raw inserts of the rows the log writes, with rusqlite directly.
fn raw_inserts(dir: &Path, mode: Synchronous, rows: u64, per_tx: u64) -> f64 {
    let path = dir.join(format!(
        "raw-{}-{per_tx}-{}.db",
        pragma(mode),
        fastrand::u64(..)
    ));
    let mut conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {};
         CREATE TABLE events (position INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
           version INTEGER NOT NULL, event_id TEXT NOT NULL, payload BLOB NOT NULL, appended_at INTEGER NOT NULL);",
        pragma(mode)
    ))
    .expect("schema");
    let events: Vec<(String, Vec<u8>)> = (0..rows)
        .map(|n| {
            let e = AnyEvent::new(event(n));
            (e.meta().id.to_string(), e.to_json_bytes().expect("json"))
        })
        .collect();
    let start = Instant::now();
    for chunk in events.chunks(per_tx as usize) {
        let tx = conn.transaction().expect("tx");
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO events (name, version, event_id, payload, appended_at) VALUES ('order.placed', 1, ?1, ?2, 0)")
                .expect("prepare");
            for (id, payload) in chunk {
                stmt.execute(rusqlite::params![id, payload])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    drop(conn);
    let _ = std::fs::remove_file(&path);
    rate
}

/// `producers` tasks notifying `events` events in all into a durable bus.
async fn durable_notify(
    dir: &Path,
    mode: Synchronous,
    producers: u64,
    events: u64,
    subscribers: usize,
) -> f64 {
    let path = dir.join(format!(
        "bus-{}-{producers}-{}.db",
        pragma(mode),
        fastrand::u64(..)
    ));
    let log = SqliteLog::options()
        .synchronous(mode)
        .open(&path)
        .await
        .expect("open");
    let bus = Bus::builder().backend(log).build().expect("bus");
    for i in 0..subscribers {
        bus.subscribe(format!("noop-{i}"), Noop)
            .start()
            .await
            .expect("subscribe");
    }
    let per = events / producers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for n in 0..per {
                    bus.notify(event(p * per + n)).await.expect("notify");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("producer");
    }
    if subscribers > 0 {
        bus.drain().await.unwrap();
    }
    let rate = (per * producers) as f64 / start.elapsed().as_secs_f64();
    bus.shutdown().await;
    drop(bus);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    rate
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 1 } else { 3 };
    let (few, many) = if quick {
        (500, 20_000)
    } else {
        (2_000, 100_000)
    };
    let dir = tempfile::tempdir().expect("temp dir");

    println!(
        "SQLite log throughput, events/s, median of {runs} run(s); single-row and 1-producer runs use {few} events, the rest {many}"
    );
    println!("| measurement | NORMAL (default) | FULL |");
    println!("| --- | --- | --- |");
    let both = |label: &str, normal: f64, full: f64| {
        println!("| {label} | {normal:.0} | {full:.0} |");
    };
    let modes = [Synchronous::Normal, Synchronous::Full];

    let r: Vec<f64> = modes
        .iter()
        .map(|&m| median(runs, || raw_inserts(dir.path(), m, few, 1)))
        .collect();
    both("raw SQLite, one row per transaction", r[0], r[1]);
    let r: Vec<f64> = modes
        .iter()
        .map(|&m| median(runs, || raw_inserts(dir.path(), m, many, 1000)))
        .collect();
    both("raw SQLite, 1000 rows per transaction", r[0], r[1]);

    for (producers, events) in [(1, few), (16, many), (256, many)] {
        let mut r = Vec::new();
        for &m in &modes {
            let mut rates = Vec::new();
            for _ in 0..runs {
                rates.push(durable_notify(dir.path(), m, producers, events, 0).await);
            }
            rates.sort_by(f64::total_cmp);
            r.push(rates[rates.len() / 2]);
        }
        both(
            &format!("eventbus notify, {producers} concurrent producer(s)"),
            r[0],
            r[1],
        );
    }

    let mut r = Vec::new();
    for &m in &modes {
        let mut rates = Vec::new();
        for _ in 0..runs {
            rates.push(durable_notify(dir.path(), m, 16, many, 4).await);
        }
        rates.sort_by(f64::total_cmp);
        r.push(rates[rates.len() / 2]);
    }
    both(
        "eventbus end to end: 16 producers, delivered to all 4 subscriptions",
        r[0],
        r[1],
    );
}
