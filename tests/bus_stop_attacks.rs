//! Attacks on stopping and replaying: stops racing stops and shutdowns,
//! stale handles, replays cut short, counts after a stop at a deadline.
//! Every wait is bounded, so a hang fails instead of stalling.

mod common;
use common::*;

use eventbus::testing::Recorder;
use eventbus::{
    AnyEvent, BatchConfig, BoxError, Bus, Consumer, ProtocolConsumer, Retry, SubscribeError, Track,
    Trackable, sink_fn,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A consumer steered from the test: fails while `fail`, waits for a
/// permit of `gate` while `block`, and counts how many run at once.
#[derive(Clone)]
struct Ctl {
    fail: Arc<AtomicBool>,
    block: Arc<AtomicBool>,
    gate: Arc<Semaphore>,
    started: Arc<AtomicU64>,
    running: Arc<AtomicU64>,
    max_running: Arc<AtomicU64>,
    seen: Recorder,
}

impl Ctl {
    fn new() -> Self {
        Ctl {
            fail: Arc::default(),
            block: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            started: Arc::default(),
            running: Arc::default(),
            max_running: Arc::default(),
            seen: Recorder::new(),
        }
    }
    fn started(&self) -> u64 {
        self.started.load(SeqCst)
    }
}

struct Running(Arc<AtomicU64>);
impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Consumer for Ctl {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        self.started.fetch_add(1, SeqCst);
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.max_running.fetch_max(now, SeqCst);
        let _running = Running(Arc::clone(&self.running));
        if self.fail.load(SeqCst) {
            return Err("downstream refused".into());
        }
        if self.block.load(SeqCst) {
            self.gate.acquire().await?.forget();
        }
        self.seen.handle(event).await
    }
}

/// `n` dead letters of `sub` (orders 1..=n), made by failing them once.
async fn letters(bus: &Bus, c: &Ctl, n: u64) {
    c.fail.store(true, SeqCst);
    for i in 1..=n {
        bus.notify(OrderPlaced::new(i)).await.unwrap();
    }
    within(5, "drain making letters", bus.drain())
        .await
        .unwrap();
    c.fail.store(false, SeqCst);
    assert_eq!(bus.dead_letters().count().await.unwrap(), n);
}

// ---------------------------------------------------------------------
// 1. A second stop while the first (given up on) is still stopping.
// ---------------------------------------------------------------------

/// Issue 9 item 2: "stop/unsubscribe need a deadline of their own". The
/// user gives up on a stop with `timeout`, then calls `stop()` again. The
/// second stop should wait for (or abort at) the bus's deadline and report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_stop_after_a_dropped_stop_waits_and_reports() {
    let bus = memory_bus(Duration::from_millis(300));
    let c = Ctl::new();
    c.block.store(true, SeqCst);
    let sub = bus.subscribe("stuck", c.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    eventually(2, "handler started", || c.started() == 1).await;

    // Give up on the first stop.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), sub.stop())
            .await
            .is_err()
    );

    let t = Instant::now();
    let report = within(5, "second stop", sub.stop()).await;
    let took = t.elapsed();
    // Let the bus's 300ms deadline pass many times over.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let listed = bus.stats();
    assert!(
        !report.timed_out.is_empty(),
        "second stop returned after {took:?} with a clean report {report:?}, \
         while the handler is still stuck; 1s later the subscription is still \
         listed and not aborted: {listed:?}"
    );
}

/// Two stops at once: both wait for the same subscription, both report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stops_at_once_both_report() {
    let bus = memory_bus(Duration::from_millis(300));
    let c = Ctl::new();
    c.block.store(true, SeqCst);
    let sub = bus.subscribe("stuck", c.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    eventually(2, "handler started", || c.started() == 1).await;

    let (a, b) = within(5, "two stops", async {
        tokio::join!(sub.stop(), async {
            tokio::task::yield_now().await;
            let t = Instant::now();
            let r = sub.stop().await;
            (r, t.elapsed())
        })
    })
    .await;
    let (b, b_took) = b;
    assert_eq!(a.timed_out.len(), 1, "first stop: {a:?}");
    assert_eq!(
        b.timed_out.len(),
        1,
        "second stop returned after {b_took:?} with {b:?} while the first was \
         still waiting on the stuck handler"
    );
}

/// stop racing shutdown racing a second stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_racing_shutdown_racing_stop() {
    let bus = memory_bus(Duration::from_millis(300));
    let c = Ctl::new();
    c.block.store(true, SeqCst);
    let sub = bus.subscribe("stuck", c.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    eventually(2, "handler started", || c.started() == 1).await;

    let s1 = tokio::spawn({
        let sub = sub.clone();
        async move { sub.stop().await }
    });
    let sh = tokio::spawn({
        let bus = bus.clone();
        async move { bus.shutdown().await }
    });
    let s2 = tokio::spawn({
        let sub = sub.clone();
        async move { sub.stop_within(Duration::from_secs(10)).await }
    });
    let s1 = within(5, "stop 1", s1).await.unwrap();
    let sh = within(5, "shutdown", sh).await.unwrap();
    let s2 = within(5, "stop 2", s2).await.unwrap();
    assert_eq!(sh.timed_out.len(), 1, "shutdown: {sh:?}");
    assert_eq!(sh.stats.len(), 1, "shutdown stats: {sh:?}");
    // Whichever stop found it Running reports it; the other found it
    // Stopping and (see above) returns a clean, empty report.
    assert_eq!(
        s1.timed_out.len() + s2.timed_out.len(),
        2,
        "stop 1: {s1:?}\nstop 2: {s2:?}"
    );
    assert!(bus.stats().is_empty());
}

// ---------------------------------------------------------------------
// 2. stop_within(0)
// ---------------------------------------------------------------------

/// stop_within(ZERO) of an idle subscription: nothing is left, so nothing
/// should time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_within_zero_of_an_idle_subscription() {
    let bus = memory_bus(Duration::from_secs(5));
    let seen = Recorder::new();
    let sub = bus.subscribe("idle", seen.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    within(5, "drain", bus.drain()).await.unwrap();
    let report = within(5, "stop", sub.stop_within(Duration::ZERO)).await;
    assert!(
        report.timed_out.is_empty(),
        "an idle subscription, with lag 0, reported as cut short: {report:?}"
    );
}

/// A batching consumer has queued three payloads (delivered, lag 0) that
/// its sink, taking `write_time` a batch, has not written; the
/// subscription is stopped with `deadline`. Either the sink gets all three
/// or the report counts them as left (`buffered`).
async fn stop_a_batching_consumer(write_time: Duration, deadline: Duration) {
    let bus = memory_bus(Duration::from_secs(5));
    let written: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = sink_fn({
        let written = Arc::clone(&written);
        move |batch: Vec<Track>| {
            let written = Arc::clone(&written);
            async move {
                tokio::time::sleep(write_time).await;
                written
                    .lock()
                    .unwrap()
                    .extend(batch.into_iter().map(|t| t.distinct_id));
                Ok(())
            }
        }
    });
    let consumer = ProtocolConsumer::<dyn Trackable, _>::new(sink).batch(BatchConfig {
        size: 100,
        timeout: Duration::from_secs(60),
        retry: Retry::never(),
    });
    let sub = bus.subscribe("analytics", consumer).start().await.unwrap();
    for i in 1..=3 {
        bus.notify(OrderPlaced::new(i)).await.unwrap();
    }
    eventually(5, "3 queued in the batcher", || {
        let s = sub.stats();
        s.delivered == 3 && s.lag == 0
    })
    .await;
    let report = within(5, "stop", sub.stop_within(deadline)).await;
    tokio::time::sleep(write_time + Duration::from_millis(200)).await;
    let written = written.lock().unwrap().clone();
    let counted: u64 = report
        .timed_out
        .iter()
        .map(|s| s.lag + s.in_flight + s.buffered)
        .sum();
    assert!(
        written.len() == 3 || counted >= 3,
        "3 accepted events: sink got {written:?}, report counts {counted} left: {report:?}"
    );
}

/// A stop with no time at all: the batch is written or counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_within_zero_loses_no_batched_payload_uncounted() {
    stop_a_batching_consumer(Duration::ZERO, Duration::ZERO).await;
}

/// The sink takes 100 ms, the stop has 20: the stop cuts the batcher off,
/// and the report counts its three payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_at_its_deadline_counts_the_batched_payloads_it_drops() {
    stop_a_batching_consumer(Duration::from_millis(100), Duration::from_millis(20)).await;
}

// ---------------------------------------------------------------------
// 3. A stop cut short with replays queued.
// ---------------------------------------------------------------------

/// Sequential subscription stuck on an event, 3 replays queued behind it,
/// stopped at a deadline: letters must stay, claims must go, and the
/// final counters must not say 3 are still replaying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_stop_with_queued_replays_keeps_letters_and_counts() {
    let bus = memory_bus(Duration::from_secs(5));
    let c = Ctl::new();
    let sub = bus
        .subscribe("payments", c.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    letters(&bus, &c, 3).await;
    c.block.store(true, SeqCst);
    bus.notify(OrderPlaced::new(10)).await.unwrap();
    eventually(2, "stuck on 10", || c.started() == 4).await;
    assert_eq!(bus.dead_letters().replay_all("payments").await.unwrap(), 3);
    assert_eq!(sub.stats().replaying, 3);

    let report = within(5, "stop", sub.stop_within(Duration::from_millis(200))).await;
    assert_eq!(report.timed_out.len(), 1, "{report:?}");
    assert_eq!(report.timed_out[0].replaying, 3, "left: {report:?}");

    // The letters stay, still marked: the subscription's next start
    // replays them.
    let kept = bus.dead_letters().list().await.unwrap();
    assert_eq!(kept.len(), 3);
    assert!(kept.iter().all(|l| l.replaying), "{kept:?}");
    let fin = &report.stats[0];
    let later = sub.stats();
    assert!(
        fin.replaying == 0 && fin.in_flight == 0,
        "final counters of a stopped subscription still say replaying {} / in_flight {}; \
         sub.stats() afterwards: {later:?}",
        fin.replaying,
        fin.in_flight
    );
}

/// Same, concurrent(1): the replay is taken off the queue and waits for
/// the permit inside the runner when the abort comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_stop_concurrent_replay_waiting_for_permit() {
    let bus = memory_bus(Duration::from_secs(5));
    let c = Ctl::new();
    let sub = bus
        .subscribe("payments", c.clone())
        .retry(Retry::never())
        .concurrent(1)
        .start()
        .await
        .unwrap();
    letters(&bus, &c, 1).await;
    c.block.store(true, SeqCst);
    bus.notify(OrderPlaced::new(10)).await.unwrap();
    eventually(2, "stuck on 10", || c.started() == 2).await;
    bus.dead_letters().replay_all("payments").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(c.started(), 2, "replay must wait for the permit");

    let report = within(5, "stop", sub.stop_within(Duration::from_millis(200))).await;
    assert_eq!(report.timed_out.len(), 1, "{report:?}");
    assert_eq!(bus.dead_letters().count().await.unwrap(), 1, "letter kept");
    let id = bus.dead_letters().list().await.unwrap()[0].id;
    assert!(
        bus.dead_letters().is_replaying(id).await.unwrap(),
        "still marked, for the next start"
    );
    let fin = &report.stats[0];
    assert!(
        fin.replaying == 0,
        "final counters say a replay is still running: {fin:?}"
    );
}

// ---------------------------------------------------------------------
// 4. Many replays through a concurrency limit.
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_replays_concurrent_no_leak() {
    let bus = memory_bus(Duration::from_secs(5));
    let c = Ctl::new();
    let sub = bus
        .subscribe("search", c.clone())
        .retry(Retry::never())
        .concurrent(2)
        .start()
        .await
        .unwrap();
    letters(&bus, &c, 60).await;
    c.max_running.store(0, SeqCst);
    // Round 0: every replay and every new event fails again (new letters);
    // round 1: everything succeeds.
    for (round, expect) in [(0u64, 60usize), (1, 70)] {
        c.fail.store(round == 0, SeqCst);
        let sent = bus.dead_letters().replay_all("search").await.unwrap();
        assert_eq!(sent, expect, "round {round}");
        for i in 100..110 {
            bus.notify(OrderPlaced::new(i + round * 100)).await.unwrap();
        }
        within(10, "drain after replays", bus.drain())
            .await
            .unwrap();
        c.fail.store(false, SeqCst);
    }
    let s = sub.stats();
    assert_eq!((s.in_flight, s.replaying), (0, 0), "{s:?}");
    assert!(
        c.max_running.load(SeqCst) <= 2,
        "max {}",
        c.max_running.load(SeqCst)
    );
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
    assert_eq!(c.seen.len(), 80);
    // Both permits are free: two blocked handlers start at once.
    c.block.store(true, SeqCst);
    let before = c.started();
    bus.notify(OrderPlaced::new(900)).await.unwrap();
    bus.notify(OrderPlaced::new(901)).await.unwrap();
    eventually(3, "two at once", || c.started() == before + 2).await;
    c.gate.add_permits(2);
    within(5, "drain", bus.drain()).await.unwrap();
    let report = within(5, "shutdown", bus.shutdown()).await;
    assert!(report.timed_out.is_empty());
    let fin = &report.stats[0];
    assert_eq!(fin.in_flight, 0, "{fin:?}");
}

// ---------------------------------------------------------------------
// 5. drain while a replay waits behind a full limit.
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_replay_behind_full_limit() {
    let bus = memory_bus(Duration::from_secs(5));
    let c = Ctl::new();
    let sub = bus
        .subscribe("mail", c.clone())
        .retry(Retry::never())
        .concurrent(1)
        .start()
        .await
        .unwrap();
    letters(&bus, &c, 1).await;
    let id = bus.dead_letters().list().await.unwrap()[0].id;
    c.block.store(true, SeqCst);
    bus.notify(OrderPlaced::new(10)).await.unwrap();
    eventually(2, "stuck", || c.started() == 2).await;
    bus.dead_letters().replay(id).await.unwrap();
    // drain must wait: the event and the replay are unfinished.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), bus.drain())
            .await
            .is_err(),
        "drain returned with a replay still queued"
    );
    assert_eq!(c.started(), 2, "the replay ran past the concurrency limit");
    assert!(bus.dead_letters().is_replaying(id).await.unwrap());
    assert_eq!(sub.stats().replaying, 1);
    c.gate.add_permits(2);
    within(5, "drain", bus.drain()).await.unwrap();
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
    assert_eq!(order_ids(c.seen.events()), vec![10, 1]);
    let s = sub.stats();
    assert_eq!((s.in_flight, s.replaying), (0, 0), "{s:?}");
}

// ---------------------------------------------------------------------
// 6. Restart under the same name while the old one is Stopping.
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_same_name_after_dropped_stop() {
    let bus = memory_bus(Duration::from_secs(5));
    let c = Ctl::new();
    c.block.store(true, SeqCst);
    let old = bus
        .subscribe("billing", c.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    eventually(2, "stuck", || c.started() == 1).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(50), old.stop())
            .await
            .is_err()
    );
    assert_eq!(bus.stats().len(), 1, "still listed while stopping");
    let c2 = Ctl::new();
    match bus.subscribe("billing", c2.clone()).start().await {
        Err(SubscribeError::DuplicateName(_)) => {}
        other => panic!("expected DuplicateName while old runs: {other:?}"),
    }
    // The old one finishes its event; then the name is free.
    c.gate.add_permits(1);
    eventually(2, "old finished", || c.seen.len() == 1).await;
    let new = within(3, "restart", async {
        loop {
            match bus
                .subscribe("billing", c2.clone())
                .retry(Retry::never())
                .start()
                .await
            {
                Ok(s) => break s,
                Err(SubscribeError::DuplicateName(_)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    // New events and replays reach the new run, once each.
    letters(&bus, &c2, 2).await;
    assert_eq!(bus.dead_letters().replay_all("billing").await.unwrap(), 2);
    bus.notify(OrderPlaced::new(7)).await.unwrap();
    within(5, "drain", bus.drain()).await.unwrap();
    let mut got = order_ids(c2.seen.events());
    got.sort();
    assert_eq!(got, vec![1, 2, 7]);
    assert_eq!(c.seen.len(), 1, "old run saw nothing new");
    let stats = bus.stats();
    assert_eq!(stats.len(), 1, "{stats:?}");
    // Stopping the old handle now must not stop the new run.
    let r = within(5, "old stop", old.stop()).await;
    assert!(r.timed_out.is_empty());
    eprintln!(
        "old handle's stop reported: {r:?}; bus.stats() now: {:?}",
        bus.stats()
    );
    bus.notify(OrderPlaced::new(8)).await.unwrap();
    within(5, "drain", bus.drain()).await.unwrap();
    assert!(
        order_ids(c2.seen.events()).contains(&8),
        "the old handle's stop stopped the new subscription under the same name"
    );
    let report = within(5, "shutdown", bus.shutdown()).await;
    assert_eq!(report.stats.len(), 1, "{report:?}");
    drop(new);
}

// ---------------------------------------------------------------------
// 7. shutdown from a handler in concurrent mode.
// ---------------------------------------------------------------------

#[derive(Clone)]
struct ShutsDown {
    bus: Arc<OnceLock<Bus>>,
    seen: Recorder,
}

impl Consumer for ShutsDown {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let id = event.downcast_ref::<OrderPlaced>().unwrap().order_id;
        if id == 0 {
            let report = self.bus.get().unwrap().shutdown().await;
            assert_eq!(report.still_running, vec!["audit".to_string()]);
        } else {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        self.seen.handle(event).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_handler_concurrent_keeps_final_counters() {
    let bus = memory_bus(Duration::from_secs(5));
    let consumer = ShutsDown {
        bus: Arc::default(),
        seen: Recorder::new(),
    };
    consumer.bus.set(bus.clone()).ok().unwrap();
    bus.subscribe("audit", consumer.clone())
        .concurrent(4)
        .start()
        .await
        .unwrap();
    let mut accepted = 0;
    for i in 1..=12 {
        bus.notify(OrderPlaced::new(i)).await.unwrap();
        accepted += 1;
    }
    bus.notify(OrderPlaced::new(0)).await.unwrap();
    accepted += 1;
    for i in 13..=20 {
        if bus.notify(OrderPlaced::new(i)).await.is_ok() {
            accepted += 1;
        }
    }
    // Let the background shutdown finish.
    eventually(5, "all handled", || consumer.seen.len() == accepted).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = within(5, "outer shutdown", bus.shutdown()).await;
    let stats = bus.stats();
    assert!(
        report.stats.iter().any(|s| s.name == "audit") || stats.iter().any(|s| s.name == "audit"),
        "{accepted} handled, but the final counters are gone: report {report:?}, stats {stats:?}"
    );
}

// ---------------------------------------------------------------------
// 8. Partitioned: a replay whose key panics; in_flight and replaying.
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_replay_key_panic_counts() {
    let bus = memory_bus(Duration::from_secs(5));
    let c = Ctl::new();
    let sub = bus
        .subscribe("ledger", c.clone())
        .retry(Retry::never())
        .partitioned(3, |e: &AnyEvent| {
            let id = e.downcast_ref::<OrderPlaced>().unwrap().order_id;
            assert!(id != 13, "no key for 13");
            id % 2
        })
        .start()
        .await
        .unwrap();
    c.fail.store(true, SeqCst);
    for i in [13, 1, 2, 3, 4] {
        bus.notify(OrderPlaced::new(i)).await.unwrap();
    }
    within(5, "drain", bus.drain()).await.unwrap();
    c.fail.store(false, SeqCst);
    let s = sub.stats();
    assert_eq!((s.failed, s.dead_lettered), (5, 5), "{s:?}");
    let sent = bus.dead_letters().replay_all("ledger").await.unwrap();
    assert_eq!(sent, 5);
    within(5, "drain", bus.drain()).await.unwrap();
    let s = sub.stats();
    // 13 fails its key again (a new letter), the other 4 are delivered.
    assert_eq!(bus.dead_letters().count().await.unwrap(), 1);
    assert_eq!((s.in_flight, s.replaying), (0, 0), "{s:?}");
    assert_eq!((s.failed, s.dead_lettered, s.delivered), (6, 6, 4), "{s:?}");
    let mut got = order_ids(c.seen.events());
    got.sort();
    assert_eq!(got, vec![1, 2, 3, 4]);
}

/// Partitioned replays of one key stay behind that key's queued events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_replay_behind_stuck_key_and_stop() {
    let bus = memory_bus(Duration::from_millis(300));
    let c = Ctl::new();
    let sub = bus
        .subscribe("ledger", c.clone())
        .retry(Retry::never())
        .partitioned(2, |_e: &AnyEvent| 7u64)
        .start()
        .await
        .unwrap();
    letters(&bus, &c, 2).await;
    c.block.store(true, SeqCst);
    bus.notify(OrderPlaced::new(10)).await.unwrap();
    eventually(2, "stuck", || c.started() == 3).await;
    bus.dead_letters().replay_all("ledger").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(c.started(), 3, "replay jumped its lane");
    let report = within(5, "stop", sub.stop()).await;
    assert_eq!(report.timed_out.len(), 1, "{report:?}");
    assert_eq!(bus.dead_letters().count().await.unwrap(), 2, "letters kept");
    let fin = &report.stats[0];
    assert!(
        fin.replaying == 0 && fin.in_flight == 0,
        "final counters after the stop: {fin:?}"
    );
}

// ---------------------------------------------------------------------
// 9. Sequential replay: is it counted in flight?
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_replay_counts_in_flight() {
    let bus = memory_bus(Duration::from_secs(5));
    let c = Ctl::new();
    let sub = bus
        .subscribe("seq", c.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    letters(&bus, &c, 1).await;
    c.block.store(true, SeqCst);
    bus.dead_letters().replay_all("seq").await.unwrap();
    eventually(2, "replay in handler", || c.started() == 2).await;
    let s = sub.stats();
    c.gate.add_permits(1);
    within(5, "drain", bus.drain()).await.unwrap();
    assert_eq!(
        s.in_flight, 1,
        "a replay inside the handler is not counted in flight (sequential): {s:?}"
    );
}

// ---------------------------------------------------------------------
// 10. A consumer that refuses to be built frees its name.
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_protocol_consumer_frees_its_name() {
    let bus = memory_bus(Duration::from_secs(5));
    let sink = sink_fn(|_b: Vec<Track>| async { Ok(()) });
    let consumer = ProtocolConsumer::<dyn Trackable, _>::new(sink).batch(BatchConfig {
        size: 0,
        ..BatchConfig::default()
    });
    match bus.subscribe("a", consumer).start().await {
        Err(SubscribeError::Consumer(_)) => {}
        other => panic!("expected SubscribeError::Consumer, got {other:?}"),
    }
    // The name is free after the refusal.
    let ok = bus.subscribe("a", Recorder::new()).start().await;
    assert!(ok.is_ok());
}
