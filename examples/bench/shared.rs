//! What the backend benchmarks share: the event, the counting consumer,
//! the producer run, the latency run and the median. Each benchmark opens
//! its own backend and cleans up after it.

use eventbus::{AnyEvent, BoxError, Bus, Consumer, event};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

#[event]
pub struct Stamped {
    pub n: u64,
    pub sent_nanos: u64,
}

/// Counts what it handled, and records each event's latency when asked.
struct Counter {
    handled: Arc<AtomicU64>,
    origin: Instant,
    latencies: Option<Arc<std::sync::Mutex<Vec<u64>>>>,
}

impl Consumer for Counter {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        if let Some(latencies) = &self.latencies {
            let sent = event.downcast_ref::<Stamped>().expect("stamped").sent_nanos;
            let now = self.origin.elapsed().as_nanos() as u64;
            latencies.lock().unwrap().push(now.saturating_sub(sent));
        }
        self.handled.fetch_add(1, SeqCst);
        Ok(())
    }
}

/// `producers` concurrent producers notify `events` events, each event
/// made inside the timed loop; with `subscriptions`, also until each has
/// handled every event. Shuts the bus down. Returns (accepted, delivered).
pub async fn bus_run(
    bus: Bus,
    events: u64,
    subscriptions: usize,
    producers: u64,
) -> (Duration, Option<Duration>) {
    let origin = Instant::now();
    let counters: Vec<Arc<AtomicU64>> = (0..subscriptions).map(|_| Arc::default()).collect();
    for (i, handled) in counters.iter().enumerate() {
        bus.subscribe(
            format!("sub-{i}"),
            Counter {
                handled: Arc::clone(handled),
                origin,
                latencies: None,
            },
        )
        .max_demand(500)
        .start()
        .await
        .expect("subscribe");
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..producers {
        let bus = bus.clone();
        tasks.spawn(async move {
            for n in (p..events).step_by(producers as usize) {
                bus.notify(Stamped::new(n, 0)).await.expect("notify");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let accepted = start.elapsed();
    let delivered = if subscriptions > 0 {
        while counters.iter().any(|c| c.load(SeqCst) < events) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Some(start.elapsed())
    } else {
        None
    };
    bus.shutdown().await;
    (accepted, delivered)
}

/// One producer at 1,000 events/s; p50 and p99 from notify called to
/// handler. Shuts the bus down.
pub async fn latency(bus: Bus, events: u64) -> (Duration, Duration) {
    let origin = Instant::now();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handled = Arc::new(AtomicU64::new(0));
    bus.subscribe(
        "latency",
        Counter {
            handled: Arc::clone(&handled),
            origin,
            latencies: Some(Arc::clone(&latencies)),
        },
    )
    .start()
    .await
    .expect("subscribe");
    let start = Instant::now();
    for n in 0..events {
        let due = start + Duration::from_millis(n);
        tokio::time::sleep_until(due.into()).await;
        let sent = origin.elapsed().as_nanos() as u64;
        bus.notify(Stamped::new(n, sent)).await.expect("notify");
    }
    while handled.load(SeqCst) < events {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bus.shutdown().await;
    let mut samples = latencies.lock().unwrap().clone();
    samples.sort_unstable();
    let at = |q: f64| Duration::from_nanos(samples[((samples.len() - 1) as f64 * q) as usize]);
    (at(0.5), at(0.99))
}

pub fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}
