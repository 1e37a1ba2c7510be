//! A failing or panicking consumer affects only that event in that
//! subscription: it is retried with backoff, then dead-lettered with its
//! error chain, and can be replayed. Nothing is dropped silently.

use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, Retry, event};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

#[event]
pub struct PaymentTaken {
    pub order_id: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("webhook endpoint answered 503")]
struct Unavailable(#[source] std::io::Error);

/// Fails order 13 while `broken` is set; panics on order 666.
#[derive(Clone, Default)]
struct Webhooks {
    broken: Arc<AtomicBool>,
    attempts_on_13: Arc<AtomicU32>,
    delivered: Recorder,
}

impl Consumer for Webhooks {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let order = event.downcast_ref::<PaymentTaken>().unwrap().order_id;
        if order == 666 {
            panic!("order 666 is cursed");
        }
        if order == 13 {
            self.attempts_on_13.fetch_add(1, Ordering::SeqCst);
            if self.broken.load(Ordering::SeqCst) {
                return Err(Unavailable(std::io::Error::other("connection reset")).into());
            }
        }
        self.delivered.handle(event).await
    }
}

fn fast_retry(attempts: u32) -> Retry {
    Retry::exponential(Duration::from_millis(1))
        .max_attempts(attempts)
        .max_delay(Duration::from_millis(5))
}

fn orders(recorder: &Recorder) -> Vec<u64> {
    recorder
        .of::<PaymentTaken>()
        .iter()
        .map(|p| p.order_id)
        .collect()
}

#[tokio::test]
async fn a_transient_failure_is_retried_until_it_succeeds() {
    let bus = Bus::builder().build().unwrap();
    let hooks = Webhooks::default();
    hooks.broken.store(true, Ordering::SeqCst);
    bus.subscribe("webhooks", hooks.clone())
        .retry(fast_retry(10))
        .start()
        .await
        .unwrap();

    bus.notify(PaymentTaken::new(13)).await.unwrap();
    // Let two attempts fail, then heal the endpoint.
    while hooks.attempts_on_13.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
    }
    hooks.broken.store(false, Ordering::SeqCst);
    bus.drain().await.unwrap();

    assert_eq!(orders(&hooks.delivered), [13]);
    let stats = &bus.stats()[0];
    assert!(stats.failed >= 2);
    assert_eq!(stats.retried, stats.failed);
    assert_eq!(stats.dead_lettered, 0);
    assert!(bus.dead_letters().count().await.unwrap() == 0);
}

#[tokio::test]
async fn the_last_failed_attempt_dead_letters_with_the_error_chain() {
    let bus = Bus::builder().build().unwrap();
    let hooks = Webhooks::default();
    hooks.broken.store(true, Ordering::SeqCst);
    bus.subscribe("webhooks", hooks.clone())
        .retry(fast_retry(3))
        .start()
        .await
        .unwrap();

    for order in [12, 13, 14] {
        bus.notify(PaymentTaken::new(order)).await.unwrap();
    }
    bus.drain().await.unwrap();

    assert_eq!(orders(&hooks.delivered), [12, 14], "the stream goes on");
    assert_eq!(hooks.attempts_on_13.load(Ordering::SeqCst), 3);
    let letters = bus.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.subscription, "webhooks");
    assert_eq!(letter.attempts, 3);
    assert_eq!(
        letter.errors,
        ["webhook endpoint answered 503", "connection reset"]
    );
    assert_eq!(
        letter
            .event
            .downcast_ref::<PaymentTaken>()
            .unwrap()
            .order_id,
        13
    );
    assert!(letter.first_failed_at <= letter.last_failed_at);
    assert!(
        letter
            .to_string()
            .contains("after 3 attempt(s): webhook endpoint answered 503")
    );
    assert_eq!(bus.stats()[0].dead_lettered, 1);
}

#[tokio::test]
async fn a_dead_letter_replays_into_its_subscription_once_fixed() {
    let bus = Bus::builder().build().unwrap();
    let hooks = Webhooks::default();
    hooks.broken.store(true, Ordering::SeqCst);
    let other = Recorder::new();
    bus.subscribe("webhooks", hooks.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    bus.subscribe("other", other.clone()).start().await.unwrap();

    bus.notify(PaymentTaken::new(13)).await.unwrap();
    bus.drain().await.unwrap();
    let letter = bus
        .dead_letters()
        .list_for("webhooks")
        .await
        .unwrap()
        .pop()
        .unwrap();

    hooks.broken.store(false, Ordering::SeqCst);
    bus.dead_letters().replay(letter.id).await.unwrap();
    bus.drain().await.unwrap();

    assert_eq!(orders(&hooks.delivered), [13]);
    assert!(bus.dead_letters().count().await.unwrap() == 0);
    assert_eq!(orders(&other), [13], "replay goes to its subscription only");

    assert_eq!(
        bus.dead_letters()
            .replay(letter.id)
            .await
            .unwrap_err()
            .to_string(),
        format!("no dead letter with id {}", letter.id)
    );
}

#[tokio::test]
async fn a_replay_that_fails_again_comes_back_as_a_new_letter() {
    let bus = Bus::builder().build().unwrap();
    let hooks = Webhooks::default();
    hooks.broken.store(true, Ordering::SeqCst);
    bus.subscribe("webhooks", hooks.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    bus.notify(PaymentTaken::new(13)).await.unwrap();
    bus.notify(PaymentTaken::new(13)).await.unwrap();
    bus.drain().await.unwrap();
    assert_eq!(bus.dead_letters().replay_all("webhooks").await.unwrap(), 2);
    bus.drain().await.unwrap();
    let letters = bus.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|l| l.id > 2), "new letters, new ids");
}

#[tokio::test]
async fn replaying_into_a_stopped_subscription_keeps_the_letter() {
    let bus = Bus::builder().build().unwrap();
    let hooks = Webhooks::default();
    hooks.broken.store(true, Ordering::SeqCst);
    let sub = bus
        .subscribe("webhooks", hooks.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    bus.notify(PaymentTaken::new(13)).await.unwrap();
    bus.drain().await.unwrap();
    sub.stop().await;
    let id = bus.dead_letters().list().await.unwrap()[0].id;
    let err = bus.dead_letters().replay(id).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "subscription `webhooks` is not running, so its dead letter cannot be replayed; restart it and replay again"
    );
    assert_eq!(bus.dead_letters().count().await.unwrap(), 1);
    assert!(bus.dead_letters().discard(id).await.unwrap());
    assert!(bus.dead_letters().count().await.unwrap() == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_stays_inside_its_subscription() {
    let bus = Bus::builder().capacity(8).build().unwrap();
    let hooks = Webhooks::default();
    let audit = Recorder::new();
    bus.subscribe("webhooks", hooks.clone())
        .retry(fast_retry(2))
        .start()
        .await
        .unwrap();
    bus.subscribe("audit", audit.clone()).start().await.unwrap();

    for order in [1, 666, 2, 666, 3] {
        bus.notify(PaymentTaken::new(order)).await.unwrap();
    }
    for order in 4..100 {
        bus.notify(PaymentTaken::new(order)).await.unwrap();
    }
    bus.drain().await.unwrap();

    let delivered = orders(&hooks.delivered);
    assert_eq!(delivered.len(), 3 + 96);
    assert!(!delivered.contains(&666));
    assert_eq!(
        orders(&audit).len(),
        101,
        "other subscriptions see everything"
    );
    let letters = bus.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].errors, ["panicked: order 666 is cursed"]);
    assert_eq!(letters[0].attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_in_concurrent_and_partitioned_modes_are_isolated_too() {
    let bus = Bus::builder().build().unwrap();
    let concurrent = Webhooks::default();
    let partitioned = Webhooks::default();
    bus.subscribe("concurrent", concurrent.clone())
        .concurrent(8)
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    bus.subscribe("partitioned", partitioned.clone())
        .partitioned(4, |e: &AnyEvent| {
            e.downcast_ref::<PaymentTaken>().unwrap().order_id % 3
        })
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    for order in [1, 666, 2, 3] {
        bus.notify(PaymentTaken::new(order)).await.unwrap();
    }
    bus.drain().await.unwrap();
    let mut got = orders(&concurrent.delivered);
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3]);
    let mut got = orders(&partitioned.delivered);
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3]);
    assert_eq!(bus.dead_letters().count().await.unwrap(), 2);
}

#[test]
fn backoff_grows_exponentially_up_to_the_cap() {
    let retry = Retry::exponential(Duration::from_millis(100))
        .max_delay(Duration::from_secs(1))
        .without_jitter();
    let delays: Vec<u128> = (1..=6).map(|a| retry.delay(a).as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);

    let jittered = Retry::exponential(Duration::from_millis(100));
    for attempt in 1..=4 {
        let cap = Duration::from_millis(100 * 2u64.pow(attempt - 1));
        assert!(jittered.delay(attempt) <= cap);
    }
    assert_eq!(Retry::never().attempts(), 1);
    assert_eq!(Retry::default().max_attempts(0).attempts(), 1);
}

#[tokio::test]
async fn a_panicking_partition_key_dead_letters_the_event_and_goes_on() {
    let bus = Bus::builder().build().unwrap();
    let hooks = Webhooks::default();
    bus.subscribe("by-order", hooks.clone())
        .partitioned(2, |e: &AnyEvent| {
            let order = e.downcast_ref::<PaymentTaken>().unwrap().order_id;
            assert!(order != 0, "order 0 has no partition");
            order
        })
        .start()
        .await
        .unwrap();
    for order in [1, 0, 2] {
        bus.notify(PaymentTaken::new(order)).await.unwrap();
    }
    bus.drain().await.unwrap();
    let mut got = orders(&hooks.delivered);
    got.sort_unstable();
    assert_eq!(got, [1, 2]);
    let letters = bus.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].errors,
        ["panicked: partition key: order 0 has no partition"]
    );
    // One failed attempt, counted where the stats count failures.
    assert_eq!(letters[0].attempts, 1);
    let stats = &bus.stats()[0];
    assert_eq!((stats.failed, stats.dead_lettered), (1, 1));
}

/// Records the most calls in flight at once, per partition key (the order
/// id's parity), and the order of calls; fails while `broken` is set; waits
/// for a permit per call once `gated`.
#[derive(Clone)]
struct Limited {
    broken: Arc<std::sync::atomic::AtomicBool>,
    permits: Arc<tokio::sync::Semaphore>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
    order: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Limited {
    fn new() -> Self {
        Limited {
            broken: Arc::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(0)),
            in_flight: Arc::default(),
            peak: Arc::default(),
            order: Arc::default(),
        }
    }
}

impl Consumer for Limited {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        use std::sync::atomic::Ordering::SeqCst;
        let order = event.downcast_ref::<PaymentTaken>().unwrap().order_id;
        if self.broken.load(SeqCst) {
            return Err("card declined".into());
        }
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        self.order.lock().unwrap().push(order);
        self.permits.acquire().await?.forget();
        self.in_flight.fetch_sub(1, SeqCst);
        Ok(())
    }
}

/// A letter for order 0, then order 1 stuck in its handler, then the replay
/// of order 0 and order 2: the replay waits its turn like a new event.
async fn replay_behind_a_running_event(
    configure: impl FnOnce(
        eventbus::SubscriptionBuilder<'_, Limited>,
    ) -> eventbus::SubscriptionBuilder<'_, Limited>,
) -> Limited {
    use std::sync::atomic::Ordering::SeqCst;
    let bus = Bus::builder().build().unwrap();
    let consumer = Limited::new();
    configure(
        bus.subscribe("billing", consumer.clone())
            .retry(Retry::never()),
    )
    .start()
    .await
    .unwrap();
    consumer.broken.store(true, SeqCst);
    bus.notify(PaymentTaken::new(0)).await.unwrap();
    bus.drain().await.unwrap();
    consumer.broken.store(false, SeqCst);
    let letter = bus.dead_letters().list().await.unwrap().remove(0);

    bus.notify(PaymentTaken::new(1)).await.unwrap();
    while consumer.order.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    bus.dead_letters().replay(letter.id).await.unwrap();
    bus.notify(PaymentTaken::new(2)).await.unwrap();
    // Give a replay that jumped the queue the time to show itself: it would
    // start while order 1 is still running. In a correct run nothing more
    // starts, and the wait just runs out.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while consumer.order.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    consumer.permits.add_permits(100);
    bus.drain().await.unwrap();
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
    bus.shutdown().await;
    consumer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_takes_a_concurrency_permit_like_a_new_event() {
    let seen = replay_behind_a_running_event(|s| s.concurrent(1)).await;
    assert_eq!(seen.peak.load(std::sync::atomic::Ordering::SeqCst), 1);
    let mut order = seen.order.lock().unwrap().clone();
    order.sort_unstable();
    assert_eq!(order, [0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_goes_through_the_lane_of_its_key() {
    // Every order has the same key: one lane, one at a time, in the order
    // they reached it.
    let seen =
        replay_behind_a_running_event(|s| s.partitioned(4, |_: &AnyEvent| "customer-7")).await;
    assert_eq!(seen.peak.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(*seen.order.lock().unwrap(), [1, 0, 2]);
}
