//! Throughput, latency and memory of the in-memory bus, each measured next to
//! its raw Tokio baseline in the same run.
//!
//! ```sh
//! cargo run --release --example throughput            # the full run
//! cargo run --release --example throughput -- --quick # 100,000 events, 1 run each
//! cargo run --release --example throughput -- --latency # the latency table alone
//! ```
//!
//! - Throughput: 1 producer, K no-op subscriptions, lossless. Baselines: one
//!   bounded `tokio::sync::mpsc` (capacity 1024) per subscriber with the
//!   producer awaiting each send, and the same carrying batches of 1000,
//!   both making each event inside the timed loop. The bus runs twice: with
//!   its events made before the clock starts (the log alone), and made inside
//!   the loop, which is what a producer pays.
//! - Latency: K = 4, a steady 50,000 events/s, from just before the event is
//!   made to the handler; the producer runs as a Tokio task and then on its
//!   own OS thread, for the bus and for the mpsc baseline alike.
//! - Memory: peak RSS while 10,000,000 events are offered to a bus of
//!   capacity 4096 with one stalled subscription and one that keeps up.

use eventbus::{AnyEvent, BoxError, Bus, Consumer, event};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[event]
struct Tick {
    n: u64,
}

#[event]
struct Stamped {
    sent_nanos: u64,
}

struct Noop;

impl Consumer for Noop {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        black_box(event);
        Ok(())
    }
}

struct Args {
    events: usize,
    runs: usize,
    offered: usize,
    latency_events: usize,
    /// Only the latency table (`--latency`).
    latency_only: bool,
}

fn args() -> Args {
    let quick = std::env::args().any(|a| a == "--quick");
    let latency_only = std::env::args().any(|a| a == "--latency");
    if quick {
        Args {
            events: 100_000,
            runs: 1,
            offered: 1_000_000,
            latency_events: 10_000,
            latency_only,
        }
    } else {
        Args {
            events: 1_000_000,
            runs: 3,
            offered: 10_000_000,
            latency_events: 100_000,
            latency_only,
        }
    }
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    if !args.latency_only {
        // Memory first: the peak RSS is a high-water mark, and the
        // throughput runs below hold a million events at once.
        rt.block_on(memory(args.offered));
        throughput(&rt, &args);
    }
    latency(&rt, &args);
}

fn throughput(rt: &tokio::runtime::Runtime, args: &Args) {
    println!();
    println!(
        "Throughput: 1 producer, {} events, no-op subscribers, median of {} run(s), million deliveries/s",
        args.events, args.runs
    );
    println!(
        "| K | mpsc(1024) per event | mpsc, batches of 1000 | eventbus, events made before the clock | eventbus, events made in the loop | made before / per-event mpsc | made in the loop / per-event mpsc |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let events: Vec<AnyEvent> = (0..args.events as u64)
        .map(|n| Tick::new(n).into())
        .collect();
    for k in [1, 4, 16] {
        // One run of each in turn, so noise from other processes spreads
        // over every column instead of landing on one.
        let mut runs: [Vec<Duration>; 4] = Default::default();
        for _ in 0..args.runs {
            runs[0].push(rt.block_on(mpsc_per_event(args.events, k)));
            runs[1].push(rt.block_on(mpsc_batched(args.events, k)));
            runs[2].push(rt.block_on(bus_premade(&events, k)));
            runs[3].push(rt.block_on(bus_made_in_loop(args.events, k)));
        }
        let [per_event, batched, premade, in_loop] = runs.map(median);
        let rate = |d: Duration| (args.events * k) as f64 / d.as_secs_f64() / 1e6;
        println!(
            "| {k} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x | {:.2}x |",
            rate(per_event),
            rate(batched),
            rate(premade),
            rate(in_loop),
            per_event.as_secs_f64() / premade.as_secs_f64(),
            per_event.as_secs_f64() / in_loop.as_secs_f64(),
        );
    }
    drop(events);
}

fn latency(rt: &tokio::runtime::Runtime, args: &Args) {
    println!();
    println!(
        "Latency: K = 4, {} events at a steady 50,000 events/s, event made to handler, median of {} run(s) each",
        args.latency_events, args.runs
    );
    println!("| implementation | producer | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- |");
    for producer in [Producer::Task, Producer::Thread] {
        let mut mpsc = Vec::new();
        let mut bus = Vec::new();
        for _ in 0..args.runs {
            mpsc.push(rt.block_on(latency_mpsc(args.latency_events, producer)));
            bus.push(rt.block_on(latency_bus(args.latency_events, producer)));
        }
        for (label, runs) in [("tokio mpsc(1024) per consumer", mpsc), ("eventbus", bus)] {
            let (p50, p99, max) = median_percentiles(runs);
            println!(
                "| {label} | {} | {p50:.1?} | {p99:.1?} | {max:.1?} |",
                producer.label()
            );
        }
    }
}

/// Where the latency benchmark's producer runs.
#[derive(Clone, Copy)]
enum Producer {
    /// A task on the runtime, next to the consumers: the common case.
    Task,
    /// Its own OS thread, paced by spinning, entering the runtime only
    /// through `Handle::block_on`: a producer outside the runtime, such as
    /// a synchronous library calling in.
    Thread,
}

impl Producer {
    fn label(self) -> &'static str {
        match self {
            Producer::Task => "a Tokio task",
            Producer::Thread => "its own thread",
        }
    }

    /// Runs `produce` where this producer runs, and waits for it.
    async fn run<F>(self, produce: impl FnOnce() -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self {
            Producer::Task => tokio::spawn(produce()).await.expect("producer"),
            Producer::Thread => {
                let handle = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || handle.block_on(produce()))
                    .await
                    .expect("producer");
            }
        }
    }
}

/// Each percentile's median over the runs.
fn median_percentiles(runs: Vec<(Duration, Duration, Duration)>) -> (Duration, Duration, Duration) {
    let column =
        |f: fn(&(Duration, Duration, Duration)) -> Duration| median(runs.iter().map(f).collect());
    (column(|r| r.0), column(|r| r.1), column(|r| r.2))
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

async fn mpsc_per_event(n: usize, k: usize) -> Duration {
    let (txs, consumers): (Vec<_>, Vec<_>) = (0..k)
        .map(|_| {
            let (tx, mut rx) = mpsc::channel::<AnyEvent>(1024);
            let consumer = tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    black_box(&event);
                }
            });
            (tx, consumer)
        })
        .unzip();
    let start = Instant::now();
    for n in 0..n as u64 {
        let event: AnyEvent = Tick::new(n).into();
        for tx in &txs {
            tx.send(event.clone()).await.expect("consumer alive");
        }
    }
    drop(txs);
    for c in consumers {
        c.await.expect("consumer");
    }
    start.elapsed()
}

async fn mpsc_batched(n: usize, k: usize) -> Duration {
    let (txs, consumers): (Vec<_>, Vec<_>) = (0..k)
        .map(|_| {
            let (tx, mut rx) = mpsc::channel::<Arc<[AnyEvent]>>(1024);
            let consumer = tokio::spawn(async move {
                while let Some(batch) = rx.recv().await {
                    for event in batch.iter() {
                        black_box(event);
                    }
                }
            });
            (tx, consumer)
        })
        .unzip();
    let start = Instant::now();
    let mut made = 0;
    while made < n {
        let len = 1000.min(n - made);
        let batch: Arc<[AnyEvent]> = (made..made + len)
            .map(|n| Tick::new(n as u64).into())
            .collect();
        made += len;
        for tx in &txs {
            tx.send(Arc::clone(&batch)).await.expect("consumer alive");
        }
    }
    drop(txs);
    for c in consumers {
        c.await.expect("consumer");
    }
    start.elapsed()
}

/// A bus with `k` no-op subscriptions, ready for the clock.
async fn bus_with(k: usize) -> Bus {
    let bus = Bus::builder().build().expect("bus");
    for i in 0..k {
        bus.subscribe(format!("noop-{i}"), Noop)
            .start()
            .await
            .expect("subscribe");
    }
    bus
}

async fn bus_premade(events: &[AnyEvent], k: usize) -> Duration {
    let bus = bus_with(k).await;
    let start = Instant::now();
    for event in events {
        bus.notify(event.clone()).await.expect("notify");
    }
    bus.drain().await.unwrap();
    let elapsed = start.elapsed();
    bus.shutdown().await;
    elapsed
}

async fn bus_made_in_loop(n: usize, k: usize) -> Duration {
    let bus = bus_with(k).await;
    let start = Instant::now();
    for n in 0..n as u64 {
        bus.notify(Tick::new(n)).await.expect("notify");
    }
    bus.drain().await.unwrap();
    let elapsed = start.elapsed();
    bus.shutdown().await;
    elapsed
}

/// Paces a producer at 50,000 events/s without sleeping past the deadline:
/// Tokio's timer has millisecond resolution, so wait by yielding (on a
/// thread of its own, `block_on` turns that into spinning).
async fn pace(start: Instant, i: usize) {
    let due = start + Duration::from_micros(20 * i as u64);
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

fn percentiles(mut samples: Vec<u64>) -> (Duration, Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| Duration::from_nanos(samples[((samples.len() - 1) as f64 * q) as usize]);
    (at(0.50), at(0.99), at(1.0))
}

fn nanos_since(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

async fn latency_mpsc(n: usize, producer: Producer) -> (Duration, Duration, Duration) {
    let origin = Instant::now();
    let (txs, consumers): (Vec<_>, Vec<_>) = (0..4)
        .map(|_| {
            let (tx, mut rx) = mpsc::channel::<AnyEvent>(1024);
            let consumer = tokio::spawn(async move {
                let mut samples = Vec::with_capacity(n);
                while let Some(event) = rx.recv().await {
                    let sent = event.downcast_ref::<Stamped>().expect("stamped").sent_nanos;
                    samples.push(nanos_since(origin) - sent);
                }
                samples
            });
            (tx, consumer)
        })
        .unzip();
    producer
        .run(move || async move {
            let start = Instant::now();
            for i in 0..n {
                pace(start, i).await;
                let event: AnyEvent = Stamped::new(nanos_since(origin)).into();
                for tx in &txs {
                    tx.send(event.clone()).await.expect("consumer alive");
                }
            }
        })
        .await;
    let mut samples = Vec::new();
    for c in consumers {
        samples.extend(c.await.expect("consumer"));
    }
    percentiles(samples)
}

struct LatencyProbe {
    origin: Instant,
    samples: std::sync::Mutex<Vec<u64>>,
}

impl Consumer for LatencyProbe {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let sent = event.downcast_ref::<Stamped>().expect("stamped").sent_nanos;
        let latency = nanos_since(self.origin) - sent;
        self.samples.lock().expect("samples").push(latency);
        Ok(())
    }
}

async fn latency_bus(n: usize, producer: Producer) -> (Duration, Duration, Duration) {
    let origin = Instant::now();
    let bus = Bus::builder().build().expect("bus");
    let probes: Vec<Arc<LatencyProbe>> = (0..4)
        .map(|_| {
            Arc::new(LatencyProbe {
                origin,
                samples: std::sync::Mutex::new(Vec::with_capacity(n)),
            })
        })
        .collect();
    for (i, probe) in probes.iter().enumerate() {
        bus.subscribe(format!("probe-{i}"), Arc::clone(probe))
            .start()
            .await
            .expect("subscribe");
    }
    let producing = bus.clone();
    producer
        .run(move || async move {
            let start = Instant::now();
            for i in 0..n {
                pace(start, i).await;
                producing
                    .notify(Stamped::new(nanos_since(origin)))
                    .await
                    .expect("notify");
            }
        })
        .await;
    bus.drain().await.unwrap();
    bus.shutdown().await;
    let samples = probes
        .iter()
        .flat_map(|p| p.samples.lock().expect("samples").clone())
        .collect();
    percentiles(samples)
}

/// Peak resident memory of this process so far, from `/proc/self/status`.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

struct Stalled(Arc<tokio::sync::Semaphore>);

impl Consumer for Stalled {
    async fn handle(&self, _event: &AnyEvent) -> Result<(), BoxError> {
        self.0.acquire().await?.forget();
        Ok(())
    }
}

async fn memory(offered: usize) {
    let rss = |label: &str| match peak_rss_mib() {
        Some(mib) => println!("| {label} | {mib:.1} MiB |"),
        None => println!("| {label} | unavailable (no /proc) |"),
    };
    println!(
        "Memory: {offered} events offered with try_notify to a bus of capacity 4096, one subscription stalled, one keeping up"
    );
    println!("| moment | peak RSS |");
    println!("| --- | --- |");
    rss("before the bus");
    let bus = Bus::builder().capacity(4096).build().expect("bus");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    bus.subscribe("stalled", Stalled(Arc::clone(&gate)))
        .start()
        .await
        .expect("subscribe");
    bus.subscribe("keeping-up", Noop)
        .start()
        .await
        .expect("subscribe");
    let (mut accepted, mut full) = (0u64, 0u64);
    for n in 0..offered as u64 {
        match bus.try_notify(Tick::new(n)) {
            Ok(()) => accepted += 1,
            Err(_) => full += 1,
        }
        if n as usize == offered / 10 {
            rss(&format!("after {} offered", offered / 10));
        }
    }
    rss(&format!(
        "after {offered} offered ({accepted} accepted, {full} refused as full)"
    ));
    gate.add_permits(usize::MAX >> 4);
    bus.drain().await.unwrap();
    bus.shutdown().await;
}
