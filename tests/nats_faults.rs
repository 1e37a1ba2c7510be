//! What happens to accepted events when things break under the NATS
//! backend: the server restarts mid-stream, and a process sharing a
//! subscription is killed with SIGKILL mid-stream. Each runs real
//! processes: a server of the test's own, and child processes that are
//! this same test binary.

mod common;

use common::nats::{PrivateServer, Stream};
use common::{OrderPlaced, order_ids, within};
use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, NatsLog, StartFrom};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The server is killed and started again while a producer notifies and a
/// subscription delivers: `notify` waits (or says why it gave up), the
/// subscription resumes by itself, and every accepted event is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_stream_loses_nothing_accepted() {
    let Some(mut server) = PrivateServer::start(module_path!()) else {
        return;
    };
    let log = NatsLog::builder()
        .url(server.url())
        .prefix("restart")
        .ack_wait(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let bus = Bus::builder()
        .backend(log)
        .shutdown_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let seen = Recorder::new();
    bus.subscribe("audit", seen.clone()).start().await.unwrap();

    // One producer notifies 1, 2, 3, ... at a steady pace; what `notify`
    // refuses is recorded with its error and not counted as accepted.
    let (producer, notified) = common::steady_producer(&bus, 1..=300, Duration::from_millis(5));
    within(30, "the first 100 handled", async {
        while seen.len() < 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.run();
    within(60, "the producer", producer).await.unwrap();

    let accepted = notified.accepted.lock().unwrap().clone();
    let refused = notified.refused.lock().unwrap().clone();
    within(60, "every accepted event handled", async {
        loop {
            let handled: std::collections::BTreeSet<u64> =
                order_ids(seen.events()).into_iter().collect();
            if accepted.iter().all(|id| handled.contains(id)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mut counts = BTreeMap::new();
    for id in order_ids(seen.events()) {
        *counts.entry(id).or_insert(0) += 1;
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "{} accepted, {} refused (first: {:?}), {} handled, {duplicates} handled twice",
        accepted.len(),
        refused.len(),
        refused.first(),
        counts.len(),
    );
    assert!(
        accepted.len() >= 250,
        "most notifies waited out the restart"
    );
    for (_, why) in &refused {
        assert!(why.contains("NATS"), "a refusal says why: {why}");
    }
    let report = bus.shutdown().await;
    assert!(report.is_clean(), "{report:?}");
}

/// Set in a child process: the subject prefix of the stream it works on.
const WORKER_PREFIX: &str = "EVENTBUS_NATS_WORKER_PREFIX";
/// Set in a child process: the directory it records what it handled in.
const WORKER_DIR: &str = "EVENTBUS_NATS_WORKER_DIR";

/// Not a test of its own: the body of a worker that the test below runs
/// as a child process (this same binary). It reads the `shared`
/// subscription and appends every order it handles to a file named after
/// its process id, before the handler returns; it runs until it is
/// killed, or for at most a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the body of a child process of a_worker_killed_mid_stream_loses_nothing"]
async fn worker_child_process() {
    let (Ok(prefix), Ok(dir)) = (std::env::var(WORKER_PREFIX), std::env::var(WORKER_DIR)) else {
        return;
    };
    let log = NatsLog::builder()
        .url(common::nats::url())
        .prefix(&prefix)
        .ack_wait(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let bus = Bus::builder().backend(log).build().unwrap();
    let path = format!("{dir}/{}.txt", std::process::id());
    let file = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap(),
    ));
    bus.subscribe(
        "shared",
        eventbus::consumer_fn(move |event: AnyEvent| {
            let file = Arc::clone(&file);
            async move {
                let id = event.downcast_ref::<OrderPlaced>().unwrap().order_id;
                writeln!(file.lock().unwrap(), "start {id}")?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                writeln!(file.lock().unwrap(), "done {id}")?;
                Ok::<(), BoxError>(())
            }
        }),
    )
    .concurrent(4)
    .start_from(StartFrom::Beginning)
    .start()
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// A worker process; killed when dropped, even when the test fails.
struct Worker(std::process::Child);

impl Worker {
    fn start(prefix: &str, dir: &std::path::Path) -> Worker {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "worker_child_process",
                "--ignored",
                "--nocapture",
            ])
            .env(WORKER_PREFIX, prefix)
            .env(WORKER_DIR, dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a worker");
        Worker(child)
    }

    /// What this worker recorded as handled.
    fn handled(&self, dir: &std::path::Path) -> Vec<u64> {
        self.recorded(dir, "done ")
    }

    /// What this worker started and had not finished.
    fn in_hand(&self, dir: &std::path::Path) -> Vec<u64> {
        let done = self.handled(dir);
        let mut started = self.recorded(dir, "start ");
        started.retain(|id| !done.contains(id));
        started
    }

    fn recorded(&self, dir: &std::path::Path, what: &str) -> Vec<u64> {
        std::fs::read_to_string(dir.join(format!("{}.txt", self.0.id())))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(what)?.parse().ok())
            .collect()
    }

    /// SIGKILL: nothing settled, nothing handed back.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two worker processes share a subscription; one is killed with SIGKILL
/// mid-stream. Its unacknowledged events reach the other after the ack
/// wait; nothing accepted is lost; what was handled twice is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_loses_nothing() {
    let Some(stream) = Stream::fresh(module_path!()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::builder().backend(stream.log().await).build().unwrap();
    let mut first = Worker::start(&stream.prefix, dir.path());
    let second = Worker::start(&stream.prefix, dir.path());
    let total = 600u64;
    for id in 0..total / 2 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    within(30, "both workers at work", async {
        while first.handled(dir.path()).len() < 20 || second.handled(dir.path()).len() < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for id in total / 2..total {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    first.kill();
    let by_first = first.handled(dir.path());
    // Events it had taken and not finished: never acknowledged, so the
    // server must give them to the other worker after the ack wait.
    let in_hand = first.in_hand(dir.path());
    assert!(!in_hand.is_empty(), "the kill came between events");
    assert!(
        (by_first.len() as u64) < total,
        "the kill came after the end of the stream"
    );

    within(60, "every event handled after the kill", async {
        loop {
            let mut all: Vec<u64> = first.handled(dir.path());
            all.extend(second.handled(dir.path()));
            all.sort_unstable();
            all.dedup();
            if all.len() as u64 == total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let by_second = second.handled(dir.path());
    for id in &in_hand {
        assert!(
            by_second.contains(id),
            "order {id}, in the killed worker's hands, reached the other"
        );
    }
    let mut counts = BTreeMap::new();
    for id in by_first.iter().chain(&by_second) {
        *counts.entry(*id).or_insert(0u32) += 1;
    }
    let duplicates: u32 = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "{total} accepted; the killed worker handled {} before SIGKILL and had {} in hand, the other {}; {duplicates} handled twice",
        by_first.len(),
        in_hand.len(),
        by_second.len(),
    );
    assert_eq!(counts.len() as u64, total, "none lost");
    assert!(!by_second.is_empty());
    bus.shutdown().await;
}

/// The server goes away and stays away: `notify` keeps trying for the
/// publish patience, then says what failed and that the event may still
/// be stored. Started again, the same log works on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stays_down_gives_producers_a_clear_error() {
    let Some(mut server) = PrivateServer::start(module_path!()) else {
        return;
    };
    let log = NatsLog::builder()
        .url(server.url())
        .prefix("down")
        // A killed server may forget an acknowledgement: what it then
        // delivers again comes after this.
        .ack_wait(Duration::from_secs(2))
        .publish_patience(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let bus = Bus::builder().backend(log).build().unwrap();
    let seen = Recorder::new();
    bus.subscribe("audit", seen.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    server.kill();
    let started = std::time::Instant::now();
    let err = within(20, "a refused notify", bus.notify(OrderPlaced::new(2)))
        .await
        .unwrap_err();
    let text = common::chain(&err);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited first"
    );
    assert!(
        text.contains("NATS JetStream failed while publishing `order.placed`")
            && text.contains("the server may still store it"),
        "{text}"
    );
    server.run();
    within(30, "a notify after the restart", async {
        while bus.notify(OrderPlaced::new(3)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    within(30, "drain", bus.drain()).await.unwrap();
    // The refused event's publish may have left before the connection
    // dropped, or waited in the client for the reconnect: it may be stored,
    // as the error says. A killed server may also forget an
    // acknowledgement and deliver an event again.
    let handled: std::collections::BTreeSet<u64> = order_ids(seen.events()).into_iter().collect();
    assert!(handled.contains(&1) && handled.contains(&3), "{handled:?}");
    assert!(handled.is_subset(&[1, 2, 3].into()), "{handled:?}");
    bus.shutdown().await;
}
