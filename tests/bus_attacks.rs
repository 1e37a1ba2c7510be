//! Attacks on the paths around delivery: ways an accepted event could be
//! lost, a stream could stop in silence, or a call could hang (replays into
//! batching consumers, full disks, stops and shutdowns from handlers or
//! racing each other, migrations cut short, paging at the edges). Real
//! SQLite files in a tempdir, no mocks; every wait is bounded so a hang
//! fails the test.
//!
//! Each test is named `aNN_...` after the attack it makes.

use eventbus::dead_letter::{DeadLetterQuery, ReplayError};
use eventbus::testing::Recorder;
use eventbus::{
    AnyEvent, BatchConfig, BoxError, Bus, Consumer, DrainError, ProtocolConsumer, Retry,
    ShutdownReport, SqliteLog, Track, Trackable, sink_fn,
};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Barrier;

mod common;

use common::*;

type Call = Arc<dyn Fn(Bus) -> BoxFuture<'static, ()> + Send + Sync>;

/// Runs `call` on the bus from inside `handle`.
#[derive(Clone)]
struct CallsBack {
    bus: Arc<OnceLock<Bus>>,
    call: Call,
    seen: Recorder,
}

impl CallsBack {
    fn new(call: Call) -> Self {
        CallsBack {
            bus: Arc::default(),
            call,
            seen: Recorder::new(),
        }
    }
}

impl Consumer for CallsBack {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let bus = self.bus.get().expect("bus set").clone();
        (self.call)(bus).await;
        self.seen.handle(event).await
    }
}

/// `n` letters of `subscription`, made by a consumer that always fails.
async fn letters(bus: &Bus, subscription: &str, n: u64) {
    let sub = bus
        .subscribe(subscription, Broken)
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    for id in 1..=n {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    within(30, "drain", bus.drain()).await.unwrap();
    assert_eq!(bus.dead_letters().count_for(subscription).await.unwrap(), n);
    within(30, "stop", sub.stop()).await;
}

// ------------------------------------------------------- replays

/// A01: a replay into a batching consumer (ProtocolConsumer). `handle` only
/// puts the payload into the batcher; the letter must not go before the
/// sink has the event. Here the sink hangs and the shutdown deadline cuts
/// the replay short: the next run must still have the letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a01_replay_into_a_batching_consumer_keeps_the_letter_until_the_sink_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let bus = sqlite_bus(&path, Duration::from_millis(300)).await;
        letters(&bus, "tracking", 1).await;
        assert!(bus.shutdown().await.is_clean());
    }
    let during;
    let report;
    let sink_calls = Arc::new(AtomicUsize::new(0));
    {
        let bus = sqlite_bus(&path, Duration::from_millis(300)).await;
        // The analytics API accepts the connection and never answers.
        let sink = {
            let calls = Arc::clone(&sink_calls);
            sink_fn(move |_batch: Vec<Track>| {
                calls.fetch_add(1, SeqCst);
                async move {
                    std::future::pending::<()>().await;
                    Ok::<(), BoxError>(())
                }
            })
        };
        bus.subscribe(
            "tracking",
            ProtocolConsumer::<dyn Trackable, _>::new(sink).batch(BatchConfig {
                size: 100,
                timeout: Duration::from_millis(20),
                retry: Retry::never(),
            }),
        )
        .start()
        .await
        .unwrap();
        let id = bus.dead_letters().list().await.unwrap()[0].id;
        assert_eq!(bus.dead_letters().replay_all("tracking").await.unwrap(), 1);
        // Give the replay time to reach the sink.
        tokio::time::sleep(Duration::from_millis(200)).await;
        during = (
            bus.dead_letters().is_replaying(id).await.unwrap(),
            bus.dead_letters().count().await.unwrap(),
        );
        report = bus.shutdown().await;
    }
    let bus = sqlite_bus(&path, Duration::from_millis(300)).await;
    let after = bus.dead_letters().count().await.unwrap();
    bus.shutdown().await;
    assert_eq!(
        after,
        1,
        "the replayed event never reached the sink (sink calls {}), yet its letter is gone. \
         While the sink hung: is_replaying={}, stored letters={}. Shutdown report: {report:?}",
        sink_calls.load(SeqCst),
        during.0,
        during.1,
    );
}

/// A02: `replay_all` twice at once with a healthy consumer: every letter is
/// handled once, not once per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a02_replay_all_twice_at_once_handles_each_letter_once() {
    let bus = memory_bus(Duration::from_secs(5));
    let flaky = Flaky::default();
    flaky.broken.store(true, SeqCst);
    bus.subscribe("search", flaky.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    let n = 3000;
    for id in 1..=n {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    within(30, "drain", bus.drain()).await.unwrap();
    assert_eq!(bus.dead_letters().count().await.unwrap(), n);
    flaky.broken.store(false, SeqCst);
    let letters = bus.dead_letters().clone();
    let (a, b) = tokio::join!(
        tokio::spawn({
            let l = letters.clone();
            async move { l.replay_all("search").await }
        }),
        tokio::spawn({
            let l = letters.clone();
            async move { l.replay_all("search").await }
        }),
    );
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    within(30, "drain", bus.drain()).await.unwrap();
    let mut handled: BTreeMap<u64, usize> = BTreeMap::new();
    for id in order_ids(flaky.seen.events()) {
        *handled.entry(id).or_default() += 1;
    }
    let twice: Vec<u64> = handled
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    bus.shutdown().await;
    assert_eq!(handled.len() as u64, n, "every letter was handled");
    assert!(
        twice.is_empty(),
        "replay_all returned {a} and {b} (sum {}), {} of {n} letters were handled twice, e.g. {:?}",
        a + b,
        twice.len(),
        &twice[..twice.len().min(10)]
    );
}

/// A03: a replay that fails again, in concurrent and partitioned modes:
/// exactly one new letter, the old one gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a03_replay_that_fails_again_in_concurrent_and_partitioned_modes() {
    for mode in ["concurrent", "partitioned"] {
        let dir = tempfile::tempdir().unwrap();
        let bus = sqlite_bus(&dir.path().join("events.db"), Duration::from_secs(2)).await;
        letters(&bus, "payments", 3).await;
        let builder = bus.subscribe("payments", Broken).retry(Retry::never());
        let builder = match mode {
            "concurrent" => builder.concurrent(4),
            _ => builder.partitioned(2, |e: &AnyEvent| {
                e.downcast_ref::<OrderPlaced>().unwrap().order_id
            }),
        };
        builder.start().await.unwrap();
        let before = bus.dead_letters().list().await.unwrap();
        assert_eq!(bus.dead_letters().replay_all("payments").await.unwrap(), 3);
        within(10, "drain", bus.drain()).await.unwrap();
        let after = bus.dead_letters().list().await.unwrap();
        let old: BTreeSet<u64> = before.iter().map(|l| l.id).collect();
        assert_eq!(after.len(), 3, "{mode}: {after:?}");
        assert!(after.iter().all(|l| !old.contains(&l.id)), "{mode}");
        let mut orders = order_ids(after.into_iter().map(|l| l.event));
        orders.sort_unstable();
        assert_eq!(orders, [1, 2, 3], "{mode}");
        assert!(bus.shutdown().await.is_clean());
    }
}

/// A04: a letter replayed into a subscription that is then stopped (the
/// replay finishes during the stop) and restarted in the same process: the
/// replaying mark is released, a replay to a stopped subscription is
/// refused without leaving a mark, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a04_replay_across_stop_and_restart_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let bus = sqlite_bus(&dir.path().join("events.db"), Duration::from_secs(2)).await;
    letters(&bus, "payments", 2).await;
    let list = bus.dead_letters().list().await.unwrap();
    let (first, second) = (list[0].id, list[1].id);

    let gate = Gate::closed();
    let sub = bus
        .subscribe("payments", gate.clone())
        .start()
        .await
        .unwrap();
    bus.dead_letters().replay(first).await.unwrap();
    eventually(5, "the replay started", || !gate.started.is_empty()).await;
    let stopping = tokio::spawn(async move { sub.stop().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // While stopping: the name is not routable any more, or the replay is
    // queued and finished by the stop. Either way no mark may stay behind.
    let during = bus.dead_letters().replay(second).await;
    gate.permits.add_permits(10);
    within(5, "the stop", stopping).await.unwrap();
    assert!(!bus.dead_letters().is_replaying(first).await.unwrap());
    assert!(
        !bus.dead_letters().is_replaying(second).await.unwrap(),
        "during: {during:?}"
    );
    let refused = bus.dead_letters().replay(second).await;
    assert!(
        matches!(refused, Err(ReplayError::NoSubscription(_)))
            || bus.dead_letters().get(second).await.unwrap().is_none(),
        "{refused:?}"
    );
    assert!(!bus.dead_letters().is_replaying(second).await.unwrap());

    let healed = Recorder::new();
    within(5, "restart", async {
        loop {
            match bus.subscribe("payments", healed.clone()).start().await {
                Ok(_) => break,
                Err(eventbus::SubscribeError::DuplicateName(_)) => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Err(err) => panic!("{err}"),
            }
        }
    })
    .await;
    bus.dead_letters().replay_all("payments").await.unwrap();
    within(10, "drain", bus.drain()).await.unwrap();
    let mut handled = order_ids(gate.seen.events());
    handled.extend(order_ids(healed.events()));
    handled.sort_unstable();
    assert_eq!(handled, [1, 2], "during-stop replay: {during:?}");
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
    assert!(bus.shutdown().await.is_clean());
}

/// A05: `discard` while the letter's replay is retrying is refused: the
/// replay could still fail for good and bring the event back under a new
/// id, which is not what a discard promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a05_discard_during_a_failing_replay() {
    let bus = memory_bus(Duration::from_secs(5));
    letters(&bus, "payments", 1).await;
    let id = bus.dead_letters().list().await.unwrap()[0].id;
    bus.subscribe("payments", Broken)
        .retry(
            Retry::exponential(Duration::from_millis(100))
                .max_attempts(3)
                .without_jitter(),
        )
        .start()
        .await
        .unwrap();
    bus.dead_letters().replay(id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let refused = bus.dead_letters().discard(id).await.unwrap_err();
    assert!(
        matches!(refused, eventbus::dead_letter::DiscardError::InProgress(i) if i == id),
        "{refused}"
    );
    within(10, "drain", bus.drain()).await.unwrap();
    // The replay failed for good: the event is one new letter, which can
    // be discarded now.
    let left = bus.dead_letters().list().await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(bus.dead_letters().discard(left[0].id).await.unwrap());
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
    bus.shutdown().await;
}

// ------------------------------------------------ full disk, batcher sink

/// A06: a full file while a ProtocolConsumer's batcher dead-letters a batch
/// its sink rejected. Nothing may be released past an unstored letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a06_full_disk_while_the_batcher_dead_letters_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let mut accepted = Vec::new();
    let stalled;
    {
        let bus = capped_bus(&path, 256 * 1024).await;
        let sink = sink_fn(|_batch: Vec<Track>| async {
            Err::<(), BoxError>("analytics API returned 502".into())
        });
        let sub = bus
            .subscribe(
                "tracking",
                ProtocolConsumer::<dyn Trackable, _>::new(sink).batch(BatchConfig {
                    size: 10,
                    timeout: Duration::from_millis(5),
                    retry: Retry::never(),
                }),
            )
            .start()
            .await
            .unwrap();
        for id in 0..100_000 {
            match bus.notify(OrderPlaced::new(id)).await {
                Ok(()) => accepted.push(id),
                Err(_) => break,
            }
        }
        stalled = within(30, "the subscription says it is stalled", async {
            loop {
                if let Some(reason) = sub.stats().stalled {
                    return reason;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        bus.shutdown().await;
    }
    let bus = sqlite_bus(&path, Duration::from_secs(5)).await;
    let healed = Recorder::new();
    bus.subscribe("tracking", healed.clone())
        .start()
        .await
        .unwrap();
    within(60, "drain after restart", bus.drain())
        .await
        .unwrap();
    let letters = bus.dead_letters().list_for("tracking").await.unwrap();
    let covered: BTreeSet<u64> = order_ids(letters.into_iter().map(|l| l.event))
        .into_iter()
        .chain(order_ids(healed.events()))
        .collect();
    let missing: Vec<u64> = accepted
        .iter()
        .filter(|id| !covered.contains(id))
        .copied()
        .collect();
    bus.shutdown().await;
    assert!(accepted.len() > 100, "{}", accepted.len());
    assert!(
        missing.is_empty(),
        "stalled with {stalled:?}; lost {} of {}: {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(20)]
    );
}

/// A07: `stop()` of a subscription that waits for a dead letter the full
/// file cannot take: the stop has the bus's deadline, stops it there and
/// says why it could not finish; the file is free for the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a07_stop_while_a_dead_letter_cannot_be_stored_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let bus = capped_bus(&path, 256 * 1024).await;
    let sub = bus
        .subscribe("search", Broken)
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    for id in 0..100_000 {
        if bus.notify(OrderPlaced::new(id)).await.is_err() {
            break;
        }
    }
    // Stuck for good: a few letters may still find room (pages freed
    // behind the first refusals) after the first stall is shown.
    within(30, "a lasting stall", async {
        loop {
            let before = sub.stats().dead_lettered;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = sub.stats();
            if after.stalled.is_some() && after.dead_lettered == before {
                break;
            }
        }
    })
    .await;
    let report = within(10, "the stop", sub.stop()).await;
    assert_eq!(report.timed_out.len(), 1, "{report:?}");
    let stalled = report.timed_out[0].stalled.as_deref().unwrap_or_default();
    assert!(
        stalled.contains("the database or disk is full"),
        "{report:?}"
    );
    assert!(within(10, "shutdown", bus.shutdown()).await.is_clean());
    drop((bus, sub));
    let reopened = within(10, "reopen", SqliteLog::open(&path)).await;
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}

// ---------------------------------------------- calls from inside handlers

/// A08: `drain()` called from a batcher's sink (the consumer's side of a
/// ProtocolConsumer). Must be an error or return, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a08_drain_from_a_batchers_sink() {
    let bus = memory_bus(Duration::from_secs(1));
    let slot: Arc<OnceLock<Bus>> = Arc::default();
    let answer: Arc<Mutex<Option<Result<(), DrainError>>>> = Arc::default();
    let sink = {
        let slot = Arc::clone(&slot);
        let answer = Arc::clone(&answer);
        sink_fn(move |_batch: Vec<Track>| {
            let bus = slot.get().unwrap().clone();
            let answer = Arc::clone(&answer);
            async move {
                let drained = bus.drain().await;
                *answer.lock().unwrap() = Some(drained);
                Ok::<(), BoxError>(())
            }
        })
    };
    slot.set(bus.clone()).unwrap();
    bus.subscribe(
        "tracking",
        ProtocolConsumer::<dyn Trackable, _>::new(sink).batch(BatchConfig {
            size: 1,
            timeout: Duration::from_millis(10),
            retry: Retry::never(),
        }),
    )
    .start()
    .await
    .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(a) = answer.lock().unwrap().take() {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let outside = tokio::time::timeout(Duration::from_secs(3), bus.drain()).await;
    let report = within(10, "shutdown", bus.shutdown()).await;
    assert!(
        got.is_ok(),
        "drain() from inside the sink did not return in 5 s; drain() from outside: {}; shutdown: {report:?}",
        match outside {
            Ok(r) => format!("{r:?}"),
            Err(_) => "also hung 3 s".into(),
        }
    );
}

/// A09: `shutdown()` from the handlers of two different subscriptions at the
/// same time. Each should return at once, listing its own subscription as
/// still running, and neither handler may be cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a09_shutdown_from_handlers_of_two_subscriptions() {
    let bus = memory_bus(Duration::from_secs(3));
    let barrier = Arc::new(Barrier::new(2));
    let reports: Arc<Mutex<Vec<(String, Duration, ShutdownReport)>>> = Arc::default();
    let make = |name: &'static str| {
        let barrier = Arc::clone(&barrier);
        let reports = Arc::clone(&reports);
        CallsBack::new(Arc::new(move |bus: Bus| {
            let barrier = Arc::clone(&barrier);
            let reports = Arc::clone(&reports);
            async move {
                barrier.wait().await;
                let t = Instant::now();
                let report = bus.shutdown().await;
                reports
                    .lock()
                    .unwrap()
                    .push((name.to_owned(), t.elapsed(), report));
            }
            .boxed()
        }))
    };
    let (a, b) = (make("a"), make("b"));
    a.bus.set(bus.clone()).unwrap();
    b.bus.set(bus.clone()).unwrap();
    bus.subscribe("a", a.clone()).start().await.unwrap();
    bus.subscribe("b", b.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    // Allow the whole shutdown deadline and then some.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let outer = within(10, "outer shutdown", bus.shutdown()).await;
    let reports = reports.lock().unwrap().clone();
    let summary = format!(
        "handler reports: {reports:#?}\nhandled: a={} b={}\nouter: {outer:?}",
        a.seen.len(),
        b.seen.len()
    );
    assert_eq!(reports.len(), 2, "{summary}");
    assert!(
        reports
            .iter()
            .all(|(_, took, r)| *took < Duration::from_secs(1) && r.timed_out.is_empty()),
        "{summary}"
    );
    assert_eq!((a.seen.len(), b.seen.len()), (1, 1), "{summary}");
}

/// A10: two handlers stopping each other's subscription at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a10_two_handlers_unsubscribe_each_other() {
    let bus = memory_bus(Duration::from_secs(1));
    let barrier = Arc::new(Barrier::new(2));
    let make = |other: &'static str| {
        let barrier = Arc::clone(&barrier);
        CallsBack::new(Arc::new(move |bus: Bus| {
            let barrier = Arc::clone(&barrier);
            async move {
                barrier.wait().await;
                bus.unsubscribe(other).await;
            }
            .boxed()
        }))
    };
    let (a, b) = (make("b"), make("a"));
    a.bus.set(bus.clone()).unwrap();
    b.bus.set(bus.clone()).unwrap();
    bus.subscribe("a", a.clone()).start().await.unwrap();
    bus.subscribe("b", b.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(5), async {
        while a.seen.is_empty() || b.seen.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let report = within(10, "shutdown", bus.shutdown()).await;
    assert!(
        finished.is_ok(),
        "neither handler returned within 5 s (a={}, b={}); shutdown then said {report:?}",
        a.seen.len(),
        b.seen.len()
    );
}

/// A11: `stop()` from a handler in partitioned and sequential modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a11_stop_from_a_handler_in_partitioned_and_sequential_modes() {
    for mode in ["partitioned", "sequential"] {
        let dir = tempfile::tempdir().unwrap();
        let bus = sqlite_bus(&dir.path().join("events.db"), Duration::from_secs(2)).await;
        let consumer = CallsBack::new(Arc::new(|bus: Bus| {
            async move {
                assert!(bus.unsubscribe("audit").await.is_some());
            }
            .boxed()
        }));
        consumer.bus.set(bus.clone()).unwrap();
        let builder = bus.subscribe("audit", consumer.clone());
        let builder = match mode {
            "partitioned" => builder.partitioned(3, |e: &AnyEvent| {
                e.downcast_ref::<OrderPlaced>().unwrap().order_id
            }),
            _ => builder,
        };
        builder.start().await.unwrap();
        for id in 1..=5 {
            bus.notify(OrderPlaced::new(id)).await.unwrap();
        }
        eventually(10, &format!("{mode}: the stop finished"), || {
            !bus.stats().iter().any(|s| s.name == "audit")
        })
        .await;
        within(10, "restart", async {
            loop {
                match bus.subscribe("audit", Recorder::new()).start().await {
                    Ok(_) => break,
                    Err(eventbus::SubscribeError::DuplicateName(_)) => {
                        tokio::time::sleep(Duration::from_millis(2)).await
                    }
                    Err(err) => panic!("{err}"),
                }
            }
        })
        .await;
        assert!(within(10, "shutdown", bus.shutdown()).await.is_clean());
    }
}

// ------------------------------------------------------------- shutdown

/// A12: a second `shutdown()` while the first is still waiting: it must not
/// report a clean stop while accepted events are still unhandled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a12_a_second_shutdown_does_not_report_clean_while_work_is_left() {
    let bus = memory_bus(Duration::from_secs(5));
    let gate = Gate::closed();
    bus.subscribe("audit", gate.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    eventually(5, "the handler started", || !gate.started.is_empty()).await;
    let first = tokio::spawn({
        let bus = bus.clone();
        async move { bus.shutdown().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = within(10, "second shutdown", bus.shutdown()).await;
    let handled_when_second_returned = gate.seen.len();
    gate.permits.add_permits(1);
    let first = within(10, "first shutdown", first).await.unwrap();
    assert!(
        !second.is_clean() || handled_when_second_returned == 1,
        "the second shutdown returned a clean report {second:?} while the accepted event was still \
         unhandled (first shutdown later returned {first:?})"
    );
}

/// A13: `stop()` in progress and `shutdown()` at the same time: the shutdown
/// must not report clean while the stopping subscription still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a13_shutdown_during_a_stop_does_not_report_clean_while_work_is_left() {
    let bus = memory_bus(Duration::from_millis(500));
    let gate = Gate::closed();
    let sub = bus.subscribe("audit", gate.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    eventually(5, "the handler started", || !gate.started.is_empty()).await;
    let stopping = tokio::spawn(async move { sub.stop().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = within(10, "shutdown", bus.shutdown()).await;
    let handled = gate.seen.len();
    gate.permits.add_permits(1);
    within(10, "stop", stopping).await.unwrap();
    assert!(
        !report.is_clean() || handled == 1,
        "shutdown returned clean {report:?} while the stopping subscription had not handled its event"
    );
}

/// A14: shutdown racing notify on the default in-memory log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a14_shutdown_racing_notify_on_the_memory_log() {
    for round in 0..30u64 {
        let bus = memory_bus(Duration::from_secs(10));
        let seen = Recorder::new();
        bus.subscribe("audit", seen.clone()).start().await.unwrap();
        let producers: Vec<_> = (0..100)
            .map(|id| {
                let bus = bus.clone();
                tokio::spawn(
                    async move { bus.notify(OrderPlaced::new(id)).await.ok().map(|()| id) },
                )
            })
            .collect();
        let pause = Duration::from_micros(50 * (round % 7));
        let start = Instant::now();
        while start.elapsed() < pause {
            tokio::task::yield_now().await;
        }
        let report = within(20, "shutdown", bus.shutdown()).await;
        let mut accepted = Vec::new();
        for p in producers {
            accepted.extend(p.await.unwrap());
        }
        accepted.sort_unstable();
        let mut delivered = order_ids(seen.events());
        delivered.sort_unstable();
        assert!(report.is_clean(), "round {round}: {report:?}");
        assert_eq!(delivered, accepted, "round {round}");
    }
}

/// A15: notifies cancelled (their futures dropped) right at shutdown on
/// SQLite: no hang, every `Ok` delivered, and an event whose notify was
/// cancelled is delivered at most once per run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a15_notify_cancelled_mid_append_at_shutdown() {
    for round in 0..10u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let seen = Recorder::new();
        let mut accepted = Vec::new();
        {
            let bus = sqlite_bus(&path, Duration::from_secs(10)).await;
            bus.subscribe("audit", seen.clone()).start().await.unwrap();
            let producers: Vec<_> = (0..100u64)
                .map(|id| {
                    let bus = bus.clone();
                    tokio::spawn(async move {
                        // Cancelled after a few hundred microseconds.
                        let cut = Duration::from_micros(100 + (id * 37 + round * 11) % 500);
                        match tokio::time::timeout(cut, bus.notify(OrderPlaced::new(id))).await {
                            Ok(Ok(())) => Some(id),
                            _ => None,
                        }
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_micros(200 + 50 * round)).await;
            let report = within(20, "shutdown", bus.shutdown()).await;
            for p in producers {
                accepted.extend(p.await.unwrap());
            }
            assert!(report.is_clean(), "round {round}: {report:?}");
        }
        let mut delivered = order_ids(seen.events());
        delivered.sort_unstable();
        accepted.sort_unstable();
        let missing: Vec<u64> = accepted
            .iter()
            .filter(|id| delivered.binary_search(id).is_err())
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: accepted but not delivered: {missing:?}"
        );
        // The next run delivers what was committed after the cursor stopped
        // (cancelled notifies), and no accepted event twice.
        let bus = within(10, "reopen", sqlite_bus(&path, Duration::from_secs(10))).await;
        let next = Recorder::new();
        bus.subscribe("audit", next.clone()).start().await.unwrap();
        within(10, "drain", bus.drain()).await.unwrap();
        bus.shutdown().await;
        let again: Vec<u64> = order_ids(next.events())
            .into_iter()
            .filter(|id| delivered.binary_search(id).is_ok())
            .collect();
        assert!(
            again.is_empty(),
            "round {round}: delivered twice: {again:?}"
        );
    }
}

// ------------------------------------------------------------- migration

fn table_names(path: &Path) -> (i64, Vec<String>, i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type IN ('table','index') AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let letters: i64 = conn
        .query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))
        .unwrap();
    (version, names, letters)
}

/// A16: a migration that fails part-way (an index of the new layout's name
/// already exists, so the third statement fails): the file stays a whole v1
/// file with its letters, and opens once the obstacle is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a16_a_migration_that_fails_part_way_leaves_the_v1_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    v1_file(&path, &[3, 7]);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE INDEX dead_letters_by_subscription ON retries (subscription);")
            .unwrap();
    }
    let err = within(10, "open", SqliteLog::open(&path)).await.err();
    assert!(
        err.is_some(),
        "the migration cannot succeed with the obstacle"
    );
    let (version, names, letters) = table_names(&path);
    assert_eq!(version, 1, "{err:?}: {names:?}");
    assert!(!names.iter().any(|n| n == "dead_letters_v1"), "{names:?}");
    assert_eq!(letters, 2);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("DROP INDEX dead_letters_by_subscription;")
            .unwrap();
    }
    let bus = sqlite_bus(&path, Duration::from_secs(2)).await;
    let got: Vec<u64> = bus
        .dead_letters()
        .list()
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(got, [3, 7]);
    letters_after_migration_get_new_order_ids(&bus).await;
    bus.shutdown().await;
}

async fn letters_after_migration_get_new_order_ids(bus: &Bus) {
    bus.subscribe("payments", Broken)
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    within(10, "drain", bus.drain()).await.unwrap();
    let got: Vec<u64> = bus
        .dead_letters()
        .list()
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(got, [3, 7, 8]);
}

/// A17: a v1 file with letters opened twice at once in one process: one
/// open wins and migrates, the other is refused (or waits), nothing is
/// lost or migrated twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a17_a_v1_file_opened_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    v1_file(&path, &[1, 2, 3]);
    let (a, b) = tokio::join!(SqliteLog::open(&path), SqliteLog::open(&path));
    let oks = [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count();
    assert_eq!(
        oks,
        1,
        "a: {:?} b: {:?}",
        a.as_ref().err(),
        b.as_ref().err()
    );
    let log = a.or(b).unwrap();
    let bus = Bus::builder().backend(log).build().unwrap();
    let got: Vec<u64> = bus
        .dead_letters()
        .list()
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(got, [1, 2, 3]);
    bus.shutdown().await;
    drop(bus);
    let (version, _, letters) = table_names(&path);
    assert_eq!((version, letters), (3, 3));
}

// ------------------------------------------------------- dead-letter pages

/// A18: pages past the end, a limit of 0 set on the public field, and a
/// store where most rows do not decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a18_memory_store_page_with_limit_0_set_on_the_field() {
    let bus = memory_bus(Duration::from_secs(2));
    letters(&bus, "payments", 3).await;
    let mut query = DeadLetterQuery::new();
    // `limit` is a public field; `limit(0)` clamps to 1, the field does not.
    query.limit = 0;
    let page = bus.dead_letters().page(&query).await.unwrap();
    bus.shutdown().await;
    assert!(
        !page.letters.is_empty() || page.next.is_some(),
        "limit 0 on the in-memory store says there are no letters (empty page, next None) while 3 are stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a19_sqlite_pages_past_the_end_and_around_undecodable_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let bus = sqlite_bus(&path, Duration::from_secs(2)).await;
        letters(&bus, "payments", 2).await;
        bus.shutdown().await;
    }
    {
        // Five letters a newer version wrote, then one more of ours.
        let conn = rusqlite::Connection::open(&path).unwrap();
        for _ in 0..5 {
            conn.execute_batch(
                "INSERT INTO dead_letters
                    (subscription, name, version, payload, errors, attempts, first_failed_at, last_failed_at)
                 VALUES ('payments', 'order.refunded', 9, X'FF00FF', X'FF', 1, 0, 0);",
            )
            .unwrap();
        }
    }
    let bus = sqlite_bus(&path, Duration::from_secs(2)).await;
    // One more letter of ours: id 8. (The `letters` helper would check
    // `count_for`, which also counts the undecodable rows.)
    let sub = bus
        .subscribe("payments", Broken)
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(3)).await.unwrap();
    within(10, "drain", bus.drain()).await.unwrap();
    within(10, "stop", sub.stop()).await;
    let dl = bus.dead_letters();
    for after in [8, 9, 1_000, i64::MAX as u64, u64::MAX] {
        let page = dl.page(&DeadLetterQuery::new().after(after)).await.unwrap();
        assert!(
            page.letters.is_empty() && page.next.is_none(),
            "after {after}: {page:?}"
        );
    }
    // limit 1 walks over the undecodable rows page by page.
    let mut query = DeadLetterQuery::new().limit(0);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = dl.page(&query).await.unwrap();
        pages += 1;
        seen.extend(page.letters.iter().map(|l| l.id));
        match page.next {
            Some(n) => query = query.after(n),
            None => break,
        }
        assert!(pages < 50, "paging does not end");
    }
    assert_eq!(seen, [1, 2, 8]);
    assert_eq!(dl.list().await.unwrap().len(), 3);
    assert_eq!(dl.count().await.unwrap(), 8);
    // An undecodable letter: can it be discarded?
    let discarded = dl.discard(4).await;
    let replayed = dl.replay(4).await;
    let count = dl.count().await.unwrap();
    bus.shutdown().await;
    assert!(
        count == 7,
        "an undecodable letter cannot be removed through the API: discard(4) = {:?}, replay(4) = {:?}, count still {count}",
        discarded,
        replayed,
    );
}

// --------------------------------------------- forget racing subscribe

/// A20: `forget_subscription` racing `subscribe` of the same name: either
/// the forget is refused or it happens first; the subscription that starts
/// receives new events, and its position is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a20_forget_subscription_racing_subscribe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let log = SqliteLog::open(&path).await.unwrap();
    let bus = Bus::builder()
        .backend(log.clone())
        .shutdown_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut outcomes = BTreeMap::new();
    for round in 0..40u64 {
        let first = bus
            .subscribe("search", Recorder::new())
            .start()
            .await
            .unwrap();
        bus.notify(OrderPlaced::new(round * 10)).await.unwrap();
        within(10, "drain", bus.drain()).await.unwrap();
        within(10, "stop", first.stop()).await;
        let rec = Recorder::new();
        let forget = {
            let log = log.clone();
            tokio::spawn(async move { log.forget_subscription("search").await })
        };
        let started = bus.subscribe("search", rec.clone()).start().await;
        let forgot = forget.await.unwrap();
        *outcomes
            .entry(format!(
                "forget ok={} subscribe ok={}",
                forgot.is_ok(),
                started.is_ok()
            ))
            .or_insert(0) += 1;
        let sub = started.expect("subscribe");
        bus.notify(OrderPlaced::new(round * 10 + 1)).await.unwrap();
        within(10, "drain", bus.drain()).await.unwrap();
        assert_eq!(
            order_ids(rec.events()),
            [round * 10 + 1],
            "round {round}: {forgot:?}"
        );
        within(10, "stop", sub.stop()).await;
        let stored: Option<i64> = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT position FROM subscriptions WHERE name = 'search'",
                [],
                |r| r.get(0),
            )
            .ok();
        assert_eq!(
            stored,
            Some(log.len() as i64 + 1),
            "round {round}: {forgot:?}"
        );
    }
    println!("{outcomes:?}");
    bus.shutdown().await;
}
