//! The talk's scenario: 10,000 events, each handled by a task that sleeps a
//! random 100-500 ms, run five ways, next to the ideal.
//!
//! ```sh
//! cargo run --release --example talk_benchmark                      # 10,000 events; limits 10,000, 1,000, 100
//! cargo run --release --example talk_benchmark -- --events 1000 --limits 1000,100 --sequential-events 10
//! ```
//!
//! The ideal fills concurrency slots in arrival order: each event starts the
//! moment a slot frees up, so with no limit it is the longest sleep (the
//! physical limit) and with one slot it is the sum of all sleeps. Sequential
//! implementations run `--sequential-events` events (default 20), since
//! 10,000 of them would take almost an hour. Every row is the median of
//! `--runs` runs (default 5), with the range beside it; a limit's baseline
//! and bus runs alternate. The default run takes about 7 minutes, most of it
//! at the limit of 100; `--limits 10000` runs the headline row alone.

use eventbus::{AnyEvent, BoxError, Bus, Consumer, event};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[event]
struct JobQueued {
    sleep_ms: u64,
}

struct Sleeper;

impl Consumer for Sleeper {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let job = event.downcast_ref::<JobQueued>().ok_or("not a job")?;
        tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
        Ok(())
    }
}

struct Args {
    events: usize,
    limits: Vec<usize>,
    sequential_events: usize,
    runs: usize,
}

fn args() -> Args {
    let mut args = Args {
        events: 10_000,
        limits: vec![10_000, 1_000, 100],
        sequential_events: 20,
        runs: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => args.events = value.parse().expect("--events N"),
            "--runs" => args.runs = value.parse::<usize>().expect("--runs N").max(1),
            "--sequential-events" => {
                args.sequential_events = value.parse().expect("--sequential-events N");
            }
            "--limits" => {
                args.limits = value
                    .split(',')
                    .map(|l| l.parse().expect("--limits A,B,C"))
                    .collect();
            }
            other => panic!("unknown flag {other}; see the example's docs"),
        }
    }
    args
}

/// When the last event finishes if each starts as soon as one of `slots`
/// slots is free, in arrival order.
fn ideal(sleeps: &[u64], slots: usize) -> Duration {
    let mut free: BinaryHeap<Reverse<u64>> = (0..slots.min(sleeps.len()).max(1))
        .map(|_| Reverse(0))
        .collect();
    let mut end = 0;
    for &sleep in sleeps {
        let Reverse(start) = free.pop().expect("a slot");
        end = end.max(start + sleep);
        free.push(Reverse(start + sleep));
    }
    Duration::from_millis(end)
}

fn row(name: &str, events: usize, limit: &str, mut walls: Vec<Duration>, ideal: Duration) {
    walls.sort();
    let over = |wall: Duration| (wall.as_secs_f64() / ideal.as_secs_f64() - 1.0) * 100.0;
    let median = walls[walls.len() / 2];
    println!(
        "| {name} | {events} | {limit} | {:.3} s | {:.3} s | {:+.2}% | {:+.2}% to {:+.2}% |",
        median.as_secs_f64(),
        ideal.as_secs_f64(),
        over(median),
        over(walls[0]),
        over(walls[walls.len() - 1]),
    );
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::main]
async fn main() {
    let args = args();
    let mut rng = fastrand::Rng::with_seed(42);
    let sleeps: Vec<u64> = (0..args.events).map(|_| rng.u64(100..=500)).collect();
    let few = &sleeps[..args.sequential_events.min(sleeps.len())];
    let longest = Duration::from_millis(*sleeps.iter().max().expect("events"));

    println!(
        "{} events sleeping 100-500 ms (seed 42); the physical limit is the longest sleep, {:.3} s",
        sleeps.len(),
        longest.as_secs_f64()
    );
    println!(
        "| implementation | events | concurrency limit | wall (median of {}) | ideal | over ideal | range |",
        args.runs
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let runs = args.runs;

    let fire = repeat(runs, || fire_and_forget(&sleeps)).await;
    row(
        "fire-and-forget tokio::spawn",
        sleeps.len(),
        "none",
        fire,
        longest,
    );
    let seq = repeat(runs, || call_and_wait(few)).await;
    row(
        "sequential call-and-wait",
        few.len(),
        "1",
        seq,
        ideal(few, 1),
    );
    let par = repeat(runs, || parallel(&sleeps)).await;
    row("parallel call-and-wait", sleeps.len(), "none", par, longest);
    let bus_seq = repeat(runs, || bus_run(few, None)).await;
    row(
        "eventbus, sequential",
        few.len(),
        "1",
        bus_seq,
        ideal(few, 1),
    );
    for &limit in &args.limits {
        let limit_s = limit.to_string();
        // The baseline and the bus take turns, so a noisy moment on a shared
        // machine falls on both rather than on one row.
        let (mut sem, mut bus) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for _ in 0..runs {
            sem.push(semaphore(&sleeps, limit).await);
            bus.push(bus_run(&sleeps, Some(limit)).await);
        }
        row(
            "tokio::spawn + Semaphore",
            sleeps.len(),
            &limit_s,
            sem,
            ideal(&sleeps, limit),
        );
        row(
            "eventbus, concurrent",
            sleeps.len(),
            &limit_s,
            bus,
            ideal(&sleeps, limit),
        );
    }
}

async fn repeat<F, Fut>(runs: usize, mut f: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let mut walls = Vec::with_capacity(runs);
    for _ in 0..runs {
        walls.push(f().await);
    }
    walls
}

/// Nobody waits, so count completions to see the end.
async fn fire_and_forget(sleeps: &[u64]) -> Duration {
    let start = Instant::now();
    let left = Arc::new(Semaphore::new(0));
    for &ms in sleeps {
        let left = Arc::clone(&left);
        tokio::spawn(async move {
            sleep_ms(ms).await;
            left.add_permits(1);
        });
    }
    let _all = left.acquire_many(sleeps.len() as u32).await.expect("open");
    start.elapsed()
}

async fn call_and_wait(sleeps: &[u64]) -> Duration {
    let start = Instant::now();
    for &ms in sleeps {
        sleep_ms(ms).await;
    }
    start.elapsed()
}

async fn parallel(sleeps: &[u64]) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = sleeps
        .iter()
        .map(|&ms| tokio::spawn(sleep_ms(ms)))
        .collect();
    for h in handles {
        h.await.expect("task");
    }
    start.elapsed()
}

async fn semaphore(sleeps: &[u64], limit: usize) -> Duration {
    let start = Instant::now();
    let permits = Arc::new(Semaphore::new(limit));
    let mut handles = Vec::with_capacity(sleeps.len());
    for &ms in sleeps {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("open");
        handles.push(tokio::spawn(async move {
            sleep_ms(ms).await;
            drop(permit);
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    start.elapsed()
}

/// The bus, sequential (`None`) or concurrent with a limit.
async fn bus_run(sleeps: &[u64], limit: Option<usize>) -> Duration {
    let bus = Bus::builder()
        .capacity(sleeps.len().max(1))
        .build()
        .expect("bus");
    let subscription = bus.subscribe("jobs", Sleeper);
    let subscription = match limit {
        Some(limit) => subscription.concurrent(limit),
        None => subscription.sequential(),
    };
    subscription.start().await.expect("subscribe");
    let start = Instant::now();
    for &ms in sleeps {
        bus.notify(JobQueued::new(ms)).await.expect("notify");
    }
    bus.drain().await.unwrap();
    let wall = start.elapsed();
    bus.shutdown().await;
    wall
}
