//! The PostgreSQL outbox against raw sqlx, in the same run, on the server
//! at `EVENTBUS_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`).
//!
//! ```sh
//! cargo run --release --example postgres_throughput            # 20,000 events per row, 3 runs
//! cargo run --release --example postgres_throughput -- --quick # 4,000 events, 1 run
//! ```
//!
//! - Accepted: 16 concurrent producers, each event in a transaction of its
//!   own, next to raw sqlx inserting the same row (same columns, same
//!   indexes) in a transaction of its own from 16 tasks.
//! - Delivered: the same 16 producers with 4 subscriptions running, until
//!   every subscription has handled every event.
//! - Latency: one producer at a steady 1,000 events/s, notify called to
//!   handler, with NOTIFY wake-ups and with polling alone.
//!
//! Each run works in the schema `eventbus_bench`, dropped first.

#[path = "bench/shared.rs"]
mod shared;

use eventbus::{Bus, PostgresLog};
use shared::{Stamped, median};
use sqlx::PgPool;
use std::time::{Duration, Instant};

const PRODUCERS: u64 = 16;
const SCHEMA: &str = "eventbus_bench";

fn url() -> String {
    std::env::var("EVENTBUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn fresh_log(notify: bool) -> PostgresLog {
    let pool = PgPool::connect(&url()).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop the schema");
    PostgresLog::builder()
        .url(url())
        .schema(SCHEMA)
        .notify_on_commit(notify)
        .poll_interval(Duration::from_millis(100))
        .connect()
        .await
        .expect("connect the outbox")
}

/// Raw sqlx: the outbox's row, one transaction each, from 16 tasks.
async fn raw_inserts(events: u64) -> Duration {
    let log = fresh_log(false).await;
    let pool = log.pool().clone();
    let sql = format!(
        "INSERT INTO {SCHEMA}.events (event_id, name, version, payload) VALUES ($1, $2, $3, $4::jsonb)"
    );
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..PRODUCERS {
        let pool = pool.clone();
        let sql = sql.clone();
        tasks.spawn(async move {
            for n in (p..events).step_by(PRODUCERS as usize) {
                let event = Stamped::new(n, 0);
                let payload = serde_json::to_string(&event).unwrap();
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(event.meta.id)
                    .bind("stamped")
                    .bind(1)
                    .bind(payload)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    start.elapsed()
}

/// 16 producers through the bus; with `subscriptions`, also until each
/// has handled every event. Returns (accepted, delivered).
async fn bus_run(events: u64, subscriptions: usize, notify: bool) -> (Duration, Option<Duration>) {
    let bus = Bus::builder()
        .backend(fresh_log(notify).await)
        .build()
        .expect("bus");
    shared::bus_run(bus, events, subscriptions, PRODUCERS).await
}

/// One producer at 1,000 events/s; p50 and p99 from notify to handler.
async fn latency(events: u64, notify: bool) -> (Duration, Duration) {
    let bus = Bus::builder()
        .backend(fresh_log(notify).await)
        .build()
        .expect("bus");
    shared::latency(bus, events).await
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (events, runs) = if quick { (4_000, 1) } else { (20_000, 3) };
    let rate = |d: Duration| events as f64 / d.as_secs_f64();

    let mut raw = Vec::new();
    let mut accepted = Vec::new();
    let mut accepted_polling = Vec::new();
    let mut delivered = Vec::new();
    let mut accepted_with_subscriptions = Vec::new();
    for _ in 0..runs {
        raw.push(raw_inserts(events).await);
        accepted.push(bus_run(events, 0, true).await.0);
        accepted_polling.push(bus_run(events, 0, false).await.0);
        let (acc, del) = bus_run(events, 4, true).await;
        accepted_with_subscriptions.push(acc);
        delivered.push(del.expect("delivered"));
    }
    println!(
        "PostgreSQL outbox: {events} events, {PRODUCERS} producers, one transaction per event, median of {runs} run(s), events/s"
    );
    println!("| measurement | events/s |");
    println!("| --- | --- |");
    println!(
        "| raw sqlx insert of the same row | {:.0} |",
        rate(median(raw))
    );
    println!(
        "| eventbus notify, no subscription | {:.0} |",
        rate(median(accepted))
    );
    println!(
        "| eventbus notify, no subscription, `notify_on_commit(false)` | {:.0} |",
        rate(median(accepted_polling))
    );
    println!(
        "| eventbus notify, 4 subscriptions running | {:.0} |",
        rate(median(accepted_with_subscriptions))
    );
    println!(
        "| delivered to every one of 4 subscriptions (first notify to last handled) | {:.0} |",
        rate(median(delivered))
    );

    let n = if quick { 1_000 } else { 3_000 };
    println!();
    println!("Latency: one producer at 1,000 events/s, {n} events, notify called to handler");
    println!("| wake-up | p50 | p99 |");
    println!("| --- | --- | --- |");
    for (name, notify) in [("LISTEN/NOTIFY", true), ("polling every 100 ms", false)] {
        let (p50, p99) = latency(n, notify).await;
        println!("| {name} | {p50:.1?} | {p99:.1?} |");
    }
    let pool = PgPool::connect(&url()).await.expect("connect");
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"
    )))
    .execute(&pool)
    .await;
}
