//! A crash test that really crashes: a child process notifies events into a
//! SQLite log while two subscriptions record what they handle, and is killed
//! with SIGKILL at random moments, several times, then restarted to finish.
//! Every event whose `notify` returned must have been handled by both
//! subscriptions; duplicates are allowed (at-least-once) and reported.

use eventbus::{AnyEvent, BoxError, Bus, Consumer, SqliteLog, event};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

const DIR: &str = "EVENTBUS_CRASH_DIR";
const RUN: &str = "EVENTBUS_CRASH_RUN";
const EVENTS: &str = "EVENTBUS_CRASH_EVENTS";

#[event]
pub struct OrderPlaced {
    pub order_id: u64,
}

/// Appends each handled order id to a file, one line per event.
struct Journal(Mutex<std::fs::File>);

impl Journal {
    fn open(path: &Path) -> Journal {
        Journal(Mutex::new(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(path)
                .expect("journal"),
        ))
    }

    fn record(&self, id: u64) {
        // One write per line: a kill leaves whole lines or none.
        let line = format!("{id}\n");
        self.0
            .lock()
            .expect("journal lock")
            .write_all(line.as_bytes())
            .expect("journal write");
    }
}

impl Consumer for Journal {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let order = event.downcast_ref::<OrderPlaced>().ok_or("not an order")?;
        self.record(order.order_id);
        Ok(())
    }
}

/// The child: runs only when the parent starts this binary with `DIR` set.
#[test]
#[ignore = "run as a child process by `every_accepted_event_survives_sigkill`"]
fn crash_child() {
    let Some(dir) = std::env::var_os(DIR).map(PathBuf::from) else {
        return;
    };
    let run: u64 = std::env::var(RUN).unwrap().parse().unwrap();
    let events: u64 = std::env::var(EVENTS).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = SqliteLog::open(dir.join("events.db")).await.unwrap();
        let bus = Bus::builder().backend(log).build().unwrap();
        bus.subscribe(
            "sequential",
            Journal::open(&dir.join("handled-sequential.log")),
        )
        .max_demand(50)
        .start()
        .await
        .unwrap();
        bus.subscribe(
            "concurrent",
            Journal::open(&dir.join("handled-concurrent.log")),
        )
        .concurrent(8)
        .start()
        .await
        .unwrap();
        let accepted = Journal::open(&dir.join("accepted.log"));
        for i in 0..events {
            let id = run * 1_000_000 + i;
            bus.notify(OrderPlaced::new(id)).await.unwrap();
            accepted.record(id);
        }
        bus.drain().await.unwrap();
        assert!(bus.shutdown().await.is_clean());
    });
}

fn ids(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().expect("whole lines only"))
        .collect()
}

fn child(dir: &Path, run: u64, events: u64) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "crash_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(DIR, dir)
    .env(RUN, run.to_string())
    .env(EVENTS, events.to_string())
    .stdout(std::process::Stdio::null());
    cmd
}

#[test]
fn every_accepted_event_survives_sigkill() {
    if std::env::var_os(DIR).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut kills = 0;
    for run in 1..=5 {
        let mut process = child(dir.path(), run, 20_000).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(150..=700)));
        if process.try_wait().unwrap().is_none() {
            process.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        process.wait().unwrap();
    }
    // The last run notifies nothing new: it resumes and finishes.
    let status = child(dir.path(), 6, 0).status().unwrap();
    assert!(status.success(), "the final run finishes cleanly");

    let accepted = ids(&dir.path().join("accepted.log"));
    assert!(
        !accepted.is_empty(),
        "some events were accepted (seed {seed})"
    );
    for subscription in ["sequential", "concurrent"] {
        let handled = ids(&dir.path().join(format!("handled-{subscription}.log")));
        let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
        for id in &handled {
            *counts.entry(*id).or_default() += 1;
        }
        let lost: Vec<u64> = accepted
            .iter()
            .copied()
            .filter(|id| !counts.contains_key(id))
            .take(10)
            .collect();
        let duplicates: u32 = counts.values().map(|c| c - 1).sum();
        println!(
            "{subscription}: {} accepted, {} handled, {} duplicates, {} kills (seed {seed})",
            accepted.len(),
            counts.len(),
            duplicates,
            kills
        );
        assert!(
            lost.is_empty(),
            "{subscription} lost accepted events {lost:?} (seed {seed})"
        );
    }
}
