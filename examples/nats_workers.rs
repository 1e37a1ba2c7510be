//! One subscription spread over processes, on NATS JetStream: a producer
//! and two workers share the `fulfil` subscription, the server splits the
//! orders between the workers, and when one worker is killed the other
//! gets what it had not acknowledged.
//!
//! ```sh
//! cargo run --example nats_workers              # the whole demo, against NATS_URL (default nats://127.0.0.1:4222)
//! cargo run --example nats_workers -- worker P  # one worker on prefix P, in a terminal of its own
//! cargo run --example nats_workers -- produce P 1000
//! ```
//!
//! The demo starts two workers (this program, as child processes), notifies
//! 2,000 orders, kills the first worker with SIGKILL halfway, and counts
//! what each handled: nothing is lost, and the few orders the killed
//! worker had handled without acknowledging are handled again. It works on
//! a stream of its own, deleted at the end.

use eventbus::{AnyEvent, BoxError, Bus, NatsLog, StartFrom, event};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[event(name = "order.paid")]
struct OrderPaid {
    order_id: u64,
}

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

async fn log(prefix: &str) -> Result<NatsLog, eventbus::NatsError> {
    NatsLog::builder()
        .url(url())
        .prefix(prefix)
        // A killed worker's orders go to the other after this.
        .ack_wait(Duration::from_secs(3))
        .connect()
        .await
}

/// Handles `fulfil` until killed: prints each order it handled.
async fn worker(prefix: &str) -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().backend(log(prefix).await?).build()?;
    bus.subscribe(
        "fulfil",
        eventbus::consumer_fn(|event: AnyEvent| async move {
            let order = event.downcast_ref::<OrderPaid>().ok_or("not an order")?;
            // The work: packing takes a moment.
            tokio::time::sleep(Duration::from_millis(10)).await;
            println!("handled {}", order.order_id);
            Ok::<(), BoxError>(())
        }),
    )
    .concurrent(8)
    .start_from(StartFrom::Beginning)
    .start()
    .await?;
    tokio::signal::ctrl_c().await?;
    bus.shutdown().await;
    Ok(())
}

async fn produce(prefix: &str, count: u64) -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().backend(log(prefix).await?).build()?;
    for order_id in 0..count {
        bus.notify(OrderPaid::new(order_id)).await?;
    }
    bus.shutdown().await;
    Ok(())
}

/// A worker child process, and what it printed it handled.
struct Worker {
    child: Child,
    handled: Arc<Mutex<Vec<u64>>>,
}

impl Worker {
    fn start(prefix: &str) -> std::io::Result<Worker> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["worker", prefix])
            .stdout(Stdio::piped())
            .spawn()?;
        let handled = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped");
        let lines = Arc::clone(&handled);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(id) = line.strip_prefix("handled ").and_then(|i| i.parse().ok()) {
                    lines.lock().unwrap().push(id);
                }
            }
        });
        Ok(Worker { child, handled })
    }

    fn handled(&self) -> Vec<u64> {
        self.handled.lock().unwrap().clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let prefix = format!("demo.workers{}", std::process::id());
    let log = log(&prefix).await?;
    let bus = Bus::builder().backend(log.clone()).build()?;
    let (mut first, second) = (Worker::start(&prefix)?, Worker::start(&prefix)?);
    let total = 2_000;
    let started = std::time::Instant::now();
    println!(
        "notifying {total} orders to {} on {}",
        log.stream_name(),
        url()
    );
    for order_id in 0..total {
        bus.notify(OrderPaid::new(order_id)).await?;
        if order_id == total / 2 {
            // Mid-stream, with orders in its hands: no shutdown, nothing
            // acknowledged or handed back from here on.
            let _ = first.child.kill();
            let _ = first.child.wait();
            println!(
                "killed worker {} (SIGKILL) after it handled {} orders; worker {} has handled {}",
                first.child.id(),
                first.handled().len(),
                second.child.id(),
                second.handled().len(),
            );
        }
    }
    let mut waited = 0;
    let everything = loop {
        let mut all = first.handled();
        all.extend(second.handled());
        let mut distinct = all.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() as u64 == total || waited > 300 {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    };
    let mut counts = BTreeMap::new();
    for id in &everything {
        *counts.entry(*id).or_insert(0) += 1;
    }
    let twice = counts.values().filter(|&&n| n > 1).count();
    println!(
        "{total} notified: the killed worker handled {}, the other {}; {} of {total} handled in {:.1?}; {twice} handled twice (handled by the killed worker, not yet acknowledged when it died)",
        first.handled().len(),
        second.handled().len(),
        counts.len(),
        started.elapsed(),
    );
    bus.shutdown().await;
    drop(second);
    let js = async_nats::jetstream::new(log.client().clone());
    for stream in [
        log.stream_name().to_owned(),
        format!("{}_DEAD_LETTERS", log.stream_name()),
        format!("{}_REPLAYS", log.stream_name()),
    ] {
        let _ = js.delete_stream(stream).await;
    }
    if counts.len() as u64 != total {
        return Err(format!("only {} of {total} orders were handled", counts.len()).into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => demo().await,
        ["worker", prefix] => worker(prefix).await,
        ["produce", prefix, count] => produce(prefix, count.parse()?).await,
        _ => Err("usage: nats_workers [worker PREFIX | produce PREFIX COUNT]".into()),
    }
}
