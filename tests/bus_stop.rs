//! Stopping one subscription: a stop has a deadline like shutdown, a stop
//! given up on leaves nothing orphaned, and the final counters outlive the
//! subscriptions.

use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, SubscribeError, event};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

#[event]
pub struct OrderPlaced {
    pub order_id: u64,
}

/// A handler stuck on a dependency that never answers; says when its
/// future was dropped.
#[derive(Clone, Default)]
struct Stuck {
    started: Recorder,
    dropped: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

impl Consumer for Stuck {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let _guard = SetOnDrop(Arc::clone(&self.dropped));
        self.started.handle(event).await?;
        std::future::pending().await
    }
}

fn bus(timeout: Duration) -> Bus {
    Bus::builder().shutdown_timeout(timeout).build().unwrap()
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

async fn started(stuck: &Stuck) {
    within("the handler start", async {
        while stuck.started.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_has_a_deadline_and_frees_the_name() {
    let bus = bus(Duration::from_millis(300));
    let stuck = Stuck::default();
    let sub = bus.subscribe("audit", stuck.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    started(&stuck).await;

    let report = within("the stop", sub.stop()).await;
    assert_eq!(report.timed_out.len(), 1, "{report:?}");
    assert_eq!(report.timed_out[0].name, "audit");
    assert_eq!(
        report.timed_out[0].lag, 1,
        "the stuck event was not finished"
    );
    assert!(stuck.dropped.load(SeqCst), "the stuck handler was stopped");
    assert!(bus.stats().is_empty());

    // The name is free, and a shutdown has nothing left to report.
    bus.subscribe("audit", Recorder::new())
        .start()
        .await
        .unwrap();
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_given_up_on_is_still_finished_and_reported_by_shutdown() {
    let bus = bus(Duration::from_secs(1));
    let stuck = Stuck::default();
    let sub = bus.subscribe("audit", stuck.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    started(&stuck).await;

    // The caller gives up before the stop's own deadline.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sub.stop())
            .await
            .is_err()
    );
    // Still there, still stopping: listed, its name still taken.
    let stats = bus.stats();
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].name.as_str(), stats[0].lag), ("audit", 1));
    let taken = bus.subscribe("audit", Recorder::new()).start().await;
    assert!(matches!(taken, Err(SubscribeError::DuplicateName(_))));

    let report = within("shutdown", bus.shutdown()).await;
    assert_eq!(report.timed_out.len(), 1, "{report:?}");
    assert_eq!(report.timed_out[0].name, "audit");
    assert!(stuck.dropped.load(SeqCst), "the stuck handler was stopped");
}

#[tokio::test]
async fn the_final_counters_outlive_shutdown() {
    let bus = bus(Duration::from_secs(5));
    let audit = Recorder::new();
    bus.subscribe("audit", audit.clone()).start().await.unwrap();
    for id in 0..3 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    let report = bus.shutdown().await;
    assert!(report.is_clean());
    assert!(bus.stats().is_empty());
    assert_eq!(report.stats.len(), 1);
    assert_eq!(report.stats[0].name, "audit");
    assert_eq!((report.stats[0].delivered, report.stats[0].lag), (3, 0));
}
