//! The bus delivers every event to every subscription, in order, with back
//! pressure instead of loss, and subscriptions come and go while events flow.

use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, Filter, MemoryLog, Trackable, event, register};
use futures_util::FutureExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;

#[event]
pub struct UserCreated {
    pub user_id: u64,
}

#[event]
pub struct UserDeleted {
    pub user_id: u64,
}

#[event(name = "billing.invoice_paid")]
pub struct InvoicePaid {
    pub invoice_id: u64,
}

#[register]
impl Trackable for InvoicePaid {
    fn track(&self) -> eventbus::Track {
        eventbus::Track::new(self, "billing")
    }
}

/// A consumer that waits for a permit per event: a stalled subscription
/// until the test hands out permits.
#[derive(Clone)]
struct Gate {
    permits: Arc<Semaphore>,
    seen: Recorder,
}

impl Gate {
    fn closed() -> Self {
        Gate {
            permits: Arc::new(Semaphore::new(0)),
            seen: Recorder::new(),
        }
    }
}

impl Consumer for Gate {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        self.permits.acquire().await?.forget();
        self.seen.handle(event).await
    }
}

fn ids(recorder: &Recorder) -> Vec<u64> {
    recorder
        .of::<UserCreated>()
        .iter()
        .map(|e| e.user_id)
        .collect()
}

#[tokio::test]
async fn every_subscription_gets_every_event_in_order() {
    let bus = Bus::builder().capacity(64).build().unwrap();
    let recorders: Vec<Recorder> = (0..3).map(|_| Recorder::new()).collect();
    for (i, r) in recorders.iter().enumerate() {
        bus.subscribe(format!("sub-{i}"), r.clone())
            .max_demand(7)
            .start()
            .await
            .unwrap();
    }
    for id in 0..1_000 {
        bus.notify(UserCreated::new(id)).await.unwrap();
    }
    bus.drain().await.unwrap();
    for r in &recorders {
        assert_eq!(ids(r), (0..1_000).collect::<Vec<_>>());
    }
    let stats = bus.stats();
    assert_eq!(stats.len(), 3);
    assert!(stats.iter().all(|s| s.delivered == 1_000 && s.lag == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_producers_lose_nothing() {
    let bus = Bus::builder().capacity(16).build().unwrap();
    let all = Recorder::new();
    bus.subscribe("all", all.clone()).start().await.unwrap();
    let producers: Vec<_> = (0..8)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 0..500 {
                    bus.notify(UserCreated::new(p * 1_000 + i)).await.unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    bus.drain().await.unwrap();
    let mut got = ids(&all);
    assert_eq!(got.len(), 4_000);
    // Each producer's events arrive in that producer's order.
    for p in 0..8 {
        let mine: Vec<u64> = got.iter().copied().filter(|id| id / 1_000 == p).collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]));
    }
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), 4_000, "no duplicates");
}

#[tokio::test]
async fn a_full_buffer_makes_the_producer_wait_not_drop() {
    let bus = Bus::builder().capacity(4).build().unwrap();
    let gate = Gate::closed();
    bus.subscribe("slow", gate.clone())
        .max_demand(1)
        .start()
        .await
        .unwrap();

    for id in 0..4 {
        bus.try_notify(UserCreated::new(id)).unwrap();
    }
    let full = bus.try_notify(UserCreated::new(4)).unwrap_err();
    assert!(matches!(full, eventbus::TryNotifyError::Full(_)));
    assert_eq!(
        full.to_string(),
        "bus is full: the slowest subscription is a full buffer behind"
    );
    let handed_back = full.into_event();
    assert_eq!(
        handed_back.downcast_ref::<UserCreated>().unwrap().user_id,
        4
    );

    // `notify` waits instead.
    let waiting = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.notify(handed_back).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());

    gate.permits.add_permits(100);
    waiting.await.unwrap().unwrap();
    bus.drain().await.unwrap();
    assert_eq!(ids(&gate.seen), [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_new_subscription_starts_at_the_head() {
    let bus = Bus::builder().build().unwrap();
    let early = Recorder::new();
    bus.subscribe("early", early.clone()).start().await.unwrap();
    bus.notify(UserCreated::new(1)).await.unwrap();

    let late = Recorder::new();
    bus.subscribe("late", late.clone()).start().await.unwrap();
    bus.notify(UserCreated::new(2)).await.unwrap();
    bus.drain().await.unwrap();

    assert_eq!(ids(&early), [1, 2]);
    assert_eq!(ids(&late), [2]);
}

#[tokio::test]
async fn removing_a_stalled_subscription_frees_the_producer() {
    let bus = Bus::builder().capacity(2).build().unwrap();
    let stalled_gate = Gate::closed();
    let stalled = bus
        .subscribe("stalled", stalled_gate.clone())
        .max_demand(1)
        .start()
        .await
        .unwrap();
    let healthy = Recorder::new();
    bus.subscribe("healthy", healthy.clone())
        .start()
        .await
        .unwrap();

    bus.notify(UserCreated::new(1)).await.unwrap();
    bus.notify(UserCreated::new(2)).await.unwrap();
    let third = UserCreated::new(3);
    assert!(bus.notify(third.clone()).now_or_never().is_none(), "full");

    // Stopping waits for the event in flight, so let exactly that one
    // through once the stop is under way.
    let stopper = tokio::spawn({
        let stalled = stalled.clone();
        async move { stalled.stop().await }
    });
    tokio::task::yield_now().await;
    stalled_gate.permits.add_permits(1);
    assert!(stopper.await.unwrap().is_clean());
    // Listed while it stopped; gone once the stop has finished.
    assert!(bus.stats().iter().all(|s| s.name != "stalled"));

    bus.notify(third).await.unwrap();
    bus.drain().await.unwrap();
    assert_eq!(ids(&healthy), [1, 2, 3]);
}

#[tokio::test]
async fn filters_pick_events_by_name_prefix_and_protocol() {
    let bus = Bus::builder().build().unwrap();
    let exact = Recorder::new();
    let prefix = Recorder::new();
    let trackable = Recorder::new();
    bus.subscribe("exact", exact.clone())
        .events(["user.deleted"])
        .unwrap()
        .start()
        .await
        .unwrap();
    bus.subscribe("prefix", prefix.clone())
        .events(["user.*"])
        .unwrap()
        .start()
        .await
        .unwrap();
    bus.subscribe("trackable", trackable.clone())
        .protocol::<dyn Trackable>()
        .start()
        .await
        .unwrap();

    bus.notify(UserCreated::new(1)).await.unwrap();
    bus.notify(InvoicePaid::new(9)).await.unwrap();
    bus.notify(UserDeleted::new(1)).await.unwrap();
    bus.drain().await.unwrap();

    assert_eq!(exact.names(), ["user.deleted"]);
    assert_eq!(prefix.names(), ["user.created", "user.deleted"]);
    assert_eq!(trackable.names(), ["billing.invoice_paid"]);
    let stats = bus.stats();
    let exact_stats = stats.iter().find(|s| s.name == "exact").unwrap();
    assert_eq!((exact_stats.delivered, exact_stats.filtered), (1, 2));
}

#[tokio::test]
async fn filtered_events_do_not_use_up_demand() {
    let bus = Bus::builder().build().unwrap();
    let deleted = Recorder::new();
    bus.subscribe("deleted", deleted.clone())
        .events(["user.deleted"])
        .unwrap()
        .max_demand(1)
        .start()
        .await
        .unwrap();
    for id in 0..50 {
        bus.notify(UserCreated::new(id)).await.unwrap();
    }
    bus.notify(UserDeleted::new(7)).await.unwrap();
    bus.drain().await.unwrap();
    assert_eq!(deleted.names(), ["user.deleted"]);
    assert_eq!(bus.stats()[0].filtered, 50);
}

#[test]
fn bad_patterns_name_the_pattern() {
    let err = Filter::all().event("user.*.created").unwrap_err();
    assert_eq!(
        err.to_string(),
        "event pattern `user.*.created` is not supported; use an exact name like `user.created`, a prefix like `user.*`, or `*`"
    );
    assert!(Filter::all().event("").is_err());
}

#[tokio::test]
async fn a_bus_runs_on_a_log_given_to_it() {
    let bus = Bus::builder().backend(MemoryLog::new(8)).build().unwrap();
    let all = Recorder::new();
    bus.subscribe("all", all.clone()).start().await.unwrap();
    for id in 0..100 {
        bus.notify(UserCreated::new(id)).await.unwrap();
    }
    bus.drain().await.unwrap();
    assert_eq!(all.len(), 100);
}

#[tokio::test]
async fn stopped_subscriptions_miss_later_events_and_free_their_name() {
    let bus = Bus::builder().build().unwrap();
    let first = Recorder::new();
    let sub = bus.subscribe("audit", first.clone()).start().await.unwrap();
    bus.notify(UserCreated::new(1)).await.unwrap();
    bus.drain().await.unwrap();
    sub.stop().await;
    bus.notify(UserCreated::new(2)).await.unwrap();
    assert_eq!(ids(&first), [1]);

    let second = Recorder::new();
    bus.subscribe("audit", second.clone())
        .start()
        .await
        .unwrap();
    bus.notify(UserCreated::new(3)).await.unwrap();
    bus.drain().await.unwrap();
    assert_eq!(ids(&second), [3]);
    assert!(bus.unsubscribe("nobody").await.is_none());
}

#[tokio::test]
async fn shutdown_finishes_what_was_notified_then_refuses_more() {
    let bus = Bus::builder().capacity(1024).build().unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let slow = {
        let handled = Arc::clone(&handled);
        eventbus::consumer_fn(move |_event| {
            let handled = Arc::clone(&handled);
            async move {
                tokio::task::yield_now().await;
                handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    bus.subscribe("slow", slow)
        .concurrent(4)
        .start()
        .await
        .unwrap();
    for id in 0..500 {
        bus.notify(UserCreated::new(id)).await.unwrap();
    }
    let report = bus.shutdown().await;
    assert!(report.is_clean());
    assert_eq!(handled.load(Ordering::SeqCst), 500);

    let err = bus.notify(UserCreated::new(1)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "bus is shut down; the event was not accepted"
    );
    assert!(err.into_event().is_some(), "the event is handed back");
    let err = bus
        .subscribe("late", Recorder::new())
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "bus is shut down; no new subscriptions");
    assert!(
        bus.shutdown().await.is_clean(),
        "a second shutdown is a no-op"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_at_its_deadline_and_reports_what_is_left() {
    let bus = Bus::builder()
        .shutdown_timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let stuck = Gate::closed();
    bus.subscribe("stuck", stuck.clone()).start().await.unwrap();
    bus.notify(UserCreated::new(1)).await.unwrap();
    bus.notify(UserCreated::new(2)).await.unwrap();
    let report = bus.shutdown().await;
    assert_eq!(report.timed_out.len(), 1);
    assert_eq!(report.timed_out[0].name, "stuck");
    assert_eq!(report.timed_out[0].lag, 2);
}

/// Counts handlers still running.
#[derive(Clone, Default)]
struct Endless {
    running: Arc<AtomicUsize>,
}

impl Consumer for Endless {
    async fn handle(&self, _event: &AnyEvent) -> Result<(), BoxError> {
        struct Running(Arc<AtomicUsize>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        let _running = Running(Arc::clone(&self.running));
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_deadline_stops_in_flight_tasks_too() {
    let bus = Bus::builder()
        .shutdown_timeout(std::time::Duration::from_secs(1))
        .build()
        .unwrap();
    let concurrent = Endless::default();
    let partitioned = Endless::default();
    bus.subscribe("concurrent", concurrent.clone())
        .concurrent(4)
        .start()
        .await
        .unwrap();
    bus.subscribe("partitioned", partitioned.clone())
        .partitioned(2, |e: &AnyEvent| {
            e.downcast_ref::<UserCreated>().unwrap().user_id
        })
        .start()
        .await
        .unwrap();
    for id in 0..4 {
        bus.notify(UserCreated::new(id)).await.unwrap();
    }
    while concurrent.running.load(Ordering::SeqCst) < 4
        || partitioned.running.load(Ordering::SeqCst) < 2
    {
        tokio::task::yield_now().await;
    }
    let report = bus.shutdown().await;
    assert_eq!(report.timed_out.len(), 2);
    // Aborted tasks are dropped by the runtime; give it a turn.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        concurrent.running.load(Ordering::SeqCst),
        0,
        "no handler outlives the deadline"
    );
    assert_eq!(partitioned.running.load(Ordering::SeqCst), 0);
}

/// A bus whose one concurrent subscription has 300 handlers running at
/// once, counted by `started`; its shutdown deadline is `deadline_ms`.
async fn burst_of_300(consumer: impl Consumer, started: &AtomicUsize, deadline_ms: u64) -> Bus {
    let bus = Bus::builder()
        .shutdown_timeout(std::time::Duration::from_millis(deadline_ms))
        .build()
        .unwrap();
    bus.subscribe("burst", consumer)
        .concurrent(1000)
        .start()
        .await
        .unwrap();
    for id in 0..300 {
        bus.notify(UserCreated::new(id)).await.unwrap();
    }
    while started.load(Ordering::SeqCst) < 300 {
        tokio::task::yield_now().await;
    }
    bus
}

/// A burst into free permits is spawned by fan-out tasks; aborting the
/// subscription must reach the deliveries they spawned, on a runtime with
/// real worker threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_deadline_stops_a_burst_of_deliveries() {
    let endless = Endless::default();
    let bus = burst_of_300(endless.clone(), &endless.running, 200).await;
    let report = bus.shutdown().await;
    assert_eq!(report.timed_out.len(), 1);
    assert_eq!(report.timed_out[0].in_flight, 300);
    // Aborted tasks are dropped by the worker threads; wait for them without
    // a fixed sleep.
    let gone = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while endless.running.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "{} handlers outlived the deadline",
        endless.running.load(Ordering::SeqCst)
    );
}

/// Handlers that wait on a gate which opens only after shutdown returned.
#[derive(Clone)]
struct Gated {
    gate: Arc<Semaphore>,
    started: Arc<AtomicUsize>,
    resumed: Arc<AtomicUsize>,
}

impl Gated {
    fn new() -> Self {
        Gated {
            gate: Arc::new(Semaphore::new(0)),
            started: Arc::default(),
            resumed: Arc::default(),
        }
    }
}

impl Consumer for Gated {
    async fn handle(&self, _event: &AnyEvent) -> Result<(), BoxError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.gate.acquire().await?.forget();
        self.resumed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Once `shutdown` has returned past its deadline, no handler of the
/// stopped subscription runs again, even one woken right then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_handler_resumes_after_a_shutdown_deadline() {
    for _ in 0..20 {
        let gated = Gated::new();
        let bus = burst_of_300(gated.clone(), &gated.started, 20).await;
        let report = bus.shutdown().await;
        assert_eq!(report.timed_out.len(), 1);
        gated.gate.add_permits(300);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            gated.resumed.load(Ordering::SeqCst),
            0,
            "a handler ran on after shutdown returned"
        );
    }
}
