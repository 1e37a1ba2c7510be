//! The NATS JetStream backend against raw async-nats, in the same run, on
//! the server at `NATS_URL` (default `nats://127.0.0.1:4222`).
//!
//! ```sh
//! cargo run --release --example nats_throughput            # 40,000 events per row, 3 runs
//! cargo run --release --example nats_throughput -- --quick # 8,000 events, 1 run
//! cargo run --release --example nats_throughput -- --producers 64
//! ```
//!
//! - Accepted: 16 concurrent producers, each `notify` returning after the
//!   server acknowledged the publish, next to raw async-nats publishing
//!   the same message (same subject, headers, message id and JSON) from 16
//!   tasks, each awaiting the server's acknowledgement.
//! - Delivered: the same 16 producers with 4 subscriptions running, until
//!   every subscription has handled (and acknowledged) every event.
//! - Latency: one producer at a steady 1,000 events/s, notify called to
//!   handler.
//!
//! Each run works on a stream of its own, deleted after it.

#[path = "bench/shared.rs"]
mod shared;

use async_nats::jetstream;
use eventbus::{Bus, NatsLog};
use shared::{Stamped, median};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// Concurrent producers: 16, or `--producers N`.
fn producers() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--producers")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(16)
}

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A log on a stream of its own; deleted by [`delete`].
async fn fresh_log() -> NatsLog {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let prefix = format!(
        "bench.run{}_{}",
        std::process::id(),
        RUN.fetch_add(1, SeqCst)
    );
    NatsLog::builder()
        .url(url())
        .prefix(prefix)
        .connect()
        .await
        .expect("connect to NATS")
}

async fn delete(log: &NatsLog) {
    let js = jetstream::new(log.client().clone());
    for stream in [
        log.stream_name().to_owned(),
        format!("{}_DEAD_LETTERS", log.stream_name()),
        format!("{}_REPLAYS", log.stream_name()),
    ] {
        let _ = js.delete_stream(stream).await;
    }
}

/// Raw async-nats: the bus's message, each publish awaiting the server's
/// acknowledgement, from 16 tasks.
async fn raw_publishes(events: u64) -> Duration {
    let log = fresh_log().await;
    let js = jetstream::new(log.client().clone());
    let subject = log.subject("stamped");
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let producers = producers();
    for p in 0..producers {
        let (js, subject) = (js.clone(), subject.clone());
        tasks.spawn(async move {
            for n in (p..events).step_by(producers as usize) {
                let event = Stamped::new(n, 0);
                let payload = serde_json::to_vec(&event).unwrap();
                let message = jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .message_id(event.meta.id.to_string())
                    .header("Eventbus-Name", "stamped")
                    .header("Eventbus-Version", "1");
                js.send_publish(subject.clone(), message)
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let took = start.elapsed();
    delete(&log).await;
    took
}

/// The producers through the bus; with `subscriptions`, also until each
/// has handled every event. Returns (accepted, delivered).
async fn bus_run(events: u64, subscriptions: usize) -> (Duration, Option<Duration>) {
    let log = fresh_log().await;
    let bus = Bus::builder().backend(log.clone()).build().expect("bus");
    let run = shared::bus_run(bus, events, subscriptions, producers()).await;
    delete(&log).await;
    run
}

/// One producer at 1,000 events/s; p50 and p99 from notify to handler.
async fn latency(events: u64) -> (Duration, Duration) {
    let log = fresh_log().await;
    let bus = Bus::builder().backend(log.clone()).build().expect("bus");
    let latency = shared::latency(bus, events).await;
    delete(&log).await;
    latency
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (events, runs) = if quick { (8_000, 1) } else { (40_000, 3) };
    let rate = |d: Duration| events as f64 / d.as_secs_f64();

    let mut raw = Vec::new();
    let mut accepted = Vec::new();
    let mut delivered = Vec::new();
    let mut accepted_with_subscriptions = Vec::new();
    for _ in 0..runs {
        raw.push(raw_publishes(events).await);
        accepted.push(bus_run(events, 0).await.0);
        let (acc, del) = bus_run(events, 4).await;
        accepted_with_subscriptions.push(acc);
        delivered.push(del.expect("delivered"));
    }
    let (raw, accepted) = (median(raw), median(accepted));
    println!(
        "NATS JetStream: {events} events, {} producers, each publish acknowledged by the server, median of {runs} run(s)",
        producers()
    );
    println!("| measurement | events/s |");
    println!("| --- | --- |");
    println!(
        "| raw async-nats publish of the same message, awaiting its ack | {:.0} |",
        rate(raw)
    );
    println!(
        "| eventbus notify, no subscription | {:.0} ({:.2}x raw) |",
        rate(accepted),
        raw.as_secs_f64() / accepted.as_secs_f64()
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
    println!("| p50 | p99 |");
    println!("| --- | --- |");
    let (p50, p99) = latency(n).await;
    println!("| {p50:.1?} | {p99:.1?} |");
}
