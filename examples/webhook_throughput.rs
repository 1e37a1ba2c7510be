//! Webhook deliveries to 100 endpoints on a local receiver, next to raw
//! reqwest posts to the same receiver, in the same run.
//!
//! ```sh
//! cargo run --release --example webhook_throughput            # 3 runs per row
//! cargo run --release --example webhook_throughput -- --quick # 1 run, fewer events
//! ```
//!
//! - Throughput: events notified as fast as the bus takes them, each
//!   delivered to 100 endpoints; deliveries per second from the first
//!   notify to the last request received. The baseline posts the same
//!   bodies with reqwest from 64 tasks (the dispatcher's default
//!   concurrency), with no store and no signature.
//! - With bad endpoints: the same, with endpoint 0 always answering 500 and
//!   endpoint 1 answering after 2 s; only the 98 healthy endpoints count.
//! - Latency: 20 events per second (2,000 deliveries per second) for 5 s,
//!   notify called to request received at a healthy endpoint, with and
//!   without the bad endpoints.
//!
//! The store is a SQLite file in a temporary directory, as a service
//! would keep it.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use eventbus::webhooks::{Endpoint, StaticEndpoints, Webhooks};
use eventbus::{Bus, Webhook, Webhookable, event, json, register};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const ENDPOINTS: usize = 100;
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The clock every latency is measured on.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

#[event]
pub struct OrderShipped {
    pub order: u64,
    pub sent_us: u64,
}

#[register]
impl Webhookable for OrderShipped {
    fn webhook(&self) -> Webhook {
        Webhook::new(
            "order.shipped",
            json!({ "order": self.order, "sent_us": self.sent_us }),
        )
    }
}

/// The receiver: counts requests at healthy endpoints and keeps their
/// latencies.
#[derive(Default)]
struct Seen {
    healthy: AtomicU64,
    last_us: AtomicU64,
    latencies: Mutex<Vec<u64>>,
    bad: std::sync::atomic::AtomicBool,
}

async fn receive(State(seen): State<Arc<Seen>>, request: Request) -> StatusCode {
    let path = request.uri().path().to_owned();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let bad = seen.bad.load(SeqCst);
    match path.as_str() {
        "/ep/0" if bad => return StatusCode::INTERNAL_SERVER_ERROR,
        "/ep/1" if bad => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            return StatusCode::OK;
        }
        _ => {}
    }
    let sent = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["data"]["sent_us"].as_u64());
    let now = now_us();
    if let Some(sent) = sent {
        seen.latencies
            .lock()
            .unwrap()
            .push(now.saturating_sub(sent));
    }
    seen.healthy.fetch_add(1, SeqCst);
    seen.last_us.fetch_max(now, SeqCst);
    StatusCode::NO_CONTENT
}

async fn start_receiver(seen: Arc<Seen>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(receive).with_state(seen);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn endpoints(port: u16) -> StaticEndpoints {
    let endpoints = StaticEndpoints::new();
    for i in 0..ENDPOINTS {
        let url = format!("http://127.0.0.1:{port}/ep/{i}");
        endpoints.insert(Endpoint::new(format!("ep_{i}"), &url, SECRET).unwrap());
    }
    endpoints
}

/// A bus delivering to the 100 endpoints, its store in `dir`.
async fn webhook_bus(port: u16, dir: &std::path::Path) -> (Bus, Webhooks) {
    let webhooks = Webhooks::builder(endpoints(port))
        .allow("127.0.0.1/32".parse().unwrap())
        .store_path(dir.join("webhooks.db"))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let bus = Bus::builder().build().unwrap();
    bus.subscribe("webhooks", webhooks.consumer())
        .concurrent(8)
        .start()
        .await
        .unwrap();
    (bus, webhooks)
}

/// Deliveries per second to the healthy endpoints, for `events` events.
async fn throughput(events: u64, bad: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    seen.bad.store(bad, SeqCst);
    let port = start_receiver(Arc::clone(&seen)).await;
    let (bus, _webhooks) = webhook_bus(port, dir.path()).await;
    let healthy = if bad { ENDPOINTS - 2 } else { ENDPOINTS } as u64;
    let start = now_us();
    for order in 0..events {
        bus.notify(OrderShipped::new(order, now_us()))
            .await
            .unwrap();
    }
    while seen.healthy.load(SeqCst) < events * healthy {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = (seen.last_us.load(SeqCst) - start) as f64 / 1e6;
    bus.shutdown().await;
    (events * healthy) as f64 / secs
}

/// Raw reqwest posts of the same body, from 64 tasks.
async fn raw(posts: u64) -> f64 {
    let seen = Arc::new(Seen::default());
    let port = start_receiver(Arc::clone(&seen)).await;
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let start = now_us();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (client, next) = (client.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, SeqCst);
                if n >= posts {
                    break;
                }
                let body = serde_json::to_vec(&json!({
                    "type": "order.shipped",
                    "timestamp": chrono::Utc::now(),
                    "data": { "order": n / ENDPOINTS as u64, "sent_us": now_us() },
                }))
                .unwrap();
                let url = format!("http://127.0.0.1:{port}/ep/{}", n % ENDPOINTS as u64);
                let response = client.post(url).body(body).send().await.unwrap();
                assert!(response.status().is_success());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let secs = (seen.last_us.load(SeqCst) - start) as f64 / 1e6;
    posts as f64 / secs
}

/// p50 and p99 of notify-to-request at the healthy endpoints, at 20
/// events per second for `secs` seconds.
async fn latency(secs: u64, bad: bool) -> (Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    seen.bad.store(bad, SeqCst);
    let port = start_receiver(Arc::clone(&seen)).await;
    let (bus, _webhooks) = webhook_bus(port, dir.path()).await;
    let healthy = if bad { ENDPOINTS - 2 } else { ENDPOINTS } as u64;
    let events = secs * 20;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for order in 0..events {
        tick.tick().await;
        bus.notify(OrderShipped::new(order, now_us()))
            .await
            .unwrap();
    }
    while seen.healthy.load(SeqCst) < events * healthy {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bus.shutdown().await;
    let mut all = seen.latencies.lock().unwrap().clone();
    all.sort_unstable();
    let at = |q: f64| Duration::from_micros(all[((all.len() - 1) as f64 * q) as usize]);
    (at(0.50), at(0.99))
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (runs, events, secs) = if quick { (1, 30, 3) } else { (3, 100, 5) };
    epoch();
    let deliveries = events * ENDPOINTS as u64;
    println!(
        "{events} events x {ENDPOINTS} endpoints = {deliveries} deliveries per run, median of {runs}"
    );

    let (mut base, mut good, mut bad) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        base.push(raw(deliveries).await);
        good.push(throughput(events, false).await);
        bad.push(throughput(events, true).await);
    }
    let (base, good, bad) = (median(base), median(good), median(bad));
    println!();
    println!("| measurement | deliveries/s | vs raw reqwest |");
    println!("| --- | --- | --- |");
    println!("| raw reqwest posts, 64 tasks | {base:.0} | 1.00x |");
    println!(
        "| webhooks, 100 healthy endpoints | {good:.0} | {:.2}x |",
        good / base
    );
    println!(
        "| webhooks, 98 healthy + 1 failing + 1 slow (healthy counted) | {bad:.0} | {:.2}x |",
        bad / base
    );

    let (mut p50_good, mut p99_good, mut p50_bad, mut p99_bad) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (p50, p99) = latency(secs, false).await;
        p50_good.push(p50.as_secs_f64());
        p99_good.push(p99.as_secs_f64());
        let (p50, p99) = latency(secs, true).await;
        p50_bad.push(p50.as_secs_f64());
        p99_bad.push(p99.as_secs_f64());
    }
    let ms = |v: Vec<f64>| median(v) * 1e3;
    let (p50_good, p99_good, p50_bad, p99_bad) =
        (ms(p50_good), ms(p99_good), ms(p50_bad), ms(p99_bad));
    println!();
    println!(
        "Latency at 2,000 deliveries/s (20 events/s x 100 endpoints), notify to request, healthy endpoints:"
    );
    println!();
    println!("| endpoints | p50 | p99 |");
    println!("| --- | --- | --- |");
    println!("| 100 healthy | {p50_good:.2} ms | {p99_good:.2} ms |");
    println!("| 98 healthy + 1 failing + 1 slow | {p50_bad:.2} ms | {p99_bad:.2} ms |");
    println!();
    println!(
        "healthy p99 with the bad endpoints: {:.2}x the run without them (target: at most 2x)",
        p99_bad / p99_good
    );
}
