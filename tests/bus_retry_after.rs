//! A failure that says when to try again ([`RetryAfter`]): the next attempt
//! waits at least that long, whatever the policy's delay, and the last
//! attempt gives up without waiting. On a paused clock, so the waits are
//! exact rather than timed.

use eventbus::{
    AnyEvent, BatchConfig, BoxError, Bus, Consumer, ProtocolConsumer, Retry, RetryAfter, Sink,
    Subscription, Track, Trackable, event, register,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[event]
pub struct QuotaChecked {
    pub account: u64,
}

#[register]
impl Trackable for QuotaChecked {
    fn track(&self) -> Track {
        Track::new(self, self.account)
    }
}

/// Fails its first `failures` attempts with a [`RetryAfter`] of `wait`,
/// and records when each attempt was made.
#[derive(Clone)]
struct RateLimited {
    wait: Duration,
    failures: usize,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl RateLimited {
    fn new(wait: Duration, failures: usize) -> Self {
        RateLimited {
            wait,
            failures,
            attempts: Arc::default(),
        }
    }

    /// Records an attempt; whether it fails.
    fn attempt(&self) -> Result<(), BoxError> {
        let mut attempts = self.attempts.lock().unwrap();
        attempts.push(Instant::now());
        if attempts.len() <= self.failures {
            return Err(RetryAfter::new(self.wait, "429 Too Many Requests").into());
        }
        Ok(())
    }

    fn gaps(&self) -> Vec<Duration> {
        let attempts = self.attempts.lock().unwrap();
        attempts.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

impl Consumer for RateLimited {
    async fn handle(&self, _event: &AnyEvent) -> Result<(), BoxError> {
        self.attempt()
    }
}

impl Sink<Track> for RateLimited {
    async fn write(&self, _batch: &[Track]) -> Result<(), BoxError> {
        self.attempt()
    }
}

fn bus() -> Bus {
    Bus::builder().build().unwrap()
}

/// A retry policy whose delays do not vary.
fn steady(first: Duration, attempts: u32) -> Retry {
    Retry::exponential(first)
        .without_jitter()
        .max_attempts(attempts)
}

/// Starts the subscription `name` with `consumer` and `retry`.
async fn start<C: Consumer>(bus: &Bus, name: &str, consumer: C, retry: Retry) -> Subscription {
    bus.subscribe(name, consumer)
        .retry(retry)
        .start()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_next_attempt_waits_at_least_what_the_failure_asked_for() {
    let bus = bus();
    let crm = RateLimited::new(Duration::from_secs(30), 2);
    let sub = start(
        &bus,
        "crm",
        crm.clone(),
        steady(Duration::from_millis(1), 4),
    )
    .await;
    bus.notify(QuotaChecked::new(1)).await.unwrap();
    bus.drain().await.unwrap();
    let gaps = crm.gaps();
    assert_eq!(gaps.len(), 2, "two failures, then a success");
    assert!(
        gaps.iter().all(|gap| *gap >= Duration::from_secs(30)),
        "{gaps:?}"
    );
    let stats = sub.stats();
    assert_eq!(
        (stats.delivered, stats.failed, stats.dead_lettered),
        (1, 2, 0)
    );
    // The policy's delay still counts when it is the longer one.
    let slow = RateLimited::new(Duration::from_millis(1), 1);
    start(
        &bus,
        "slow",
        slow.clone(),
        steady(Duration::from_secs(20), 2),
    )
    .await;
    bus.notify(QuotaChecked::new(2)).await.unwrap();
    bus.drain().await.unwrap();
    assert!(
        slow.gaps()[0] >= Duration::from_secs(20),
        "{:?}",
        slow.gaps()
    );
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test(start_paused = true)]
async fn the_last_attempt_gives_up_without_waiting() {
    let bus = bus();
    let crm = RateLimited::new(Duration::from_secs(3600), usize::MAX);
    start(
        &bus,
        "crm",
        crm.clone(),
        Retry::exponential(Duration::from_millis(1)).max_attempts(2),
    )
    .await;
    bus.notify(QuotaChecked::new(1)).await.unwrap();
    bus.drain().await.unwrap();
    let finished = Instant::now();
    let attempts = crm.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2);
    assert!(attempts[1] - attempts[0] >= Duration::from_secs(3600));
    assert!(
        finished - attempts[1] < Duration::from_secs(1),
        "dead-lettered {:?} after the last attempt",
        finished - attempts[1]
    );
    let letters = bus.dead_letters().list_for("crm").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 2);
    assert_eq!(
        letters[0].errors,
        ["429 Too Many Requests"],
        "reads as the error it wraps"
    );
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test(start_paused = true)]
async fn a_sink_asks_its_batch_to_wait_too() {
    let bus = bus();
    let collector = RateLimited::new(Duration::from_secs(20), 1);
    let config = BatchConfig {
        size: 1,
        timeout: Duration::from_secs(1),
        retry: Retry::exponential(Duration::from_millis(1)).max_attempts(3),
    };
    bus.subscribe(
        "analytics",
        ProtocolConsumer::<dyn Trackable, _>::new(collector.clone()).batch(config),
    )
    .start()
    .await
    .unwrap();
    bus.notify(QuotaChecked::new(1)).await.unwrap();
    bus.drain().await.unwrap();
    let gaps = collector.gaps();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(gaps[0] >= Duration::from_secs(20), "{gaps:?}");
    assert!(bus.dead_letters().list().await.unwrap().is_empty());
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_inside_dead_letters_at_once() {
    let bus = bus();
    let attempts = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&attempts);
    bus.subscribe(
        "crm",
        eventbus::consumer_fn(move |_event: AnyEvent| {
            *counted.lock().unwrap() += 1;
            let err: BoxError = RetryAfter::new(
                Duration::from_secs(60),
                eventbus::Permanent::msg("403 Forbidden"),
            )
            .into();
            std::future::ready(Err(err))
        }),
    )
    .retry(Retry::exponential(Duration::from_millis(1)).max_attempts(5))
    .start()
    .await
    .unwrap();
    bus.notify(QuotaChecked::new(1)).await.unwrap();
    bus.drain().await.unwrap();
    assert_eq!(*attempts.lock().unwrap(), 1);
    let letters = bus.dead_letters().list_for("crm").await.unwrap();
    assert_eq!(letters[0].errors, ["403 Forbidden"]);
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_thirty_days_counts_as_thirty_days() {
    let bus = bus();
    let crm = RateLimited::new(Duration::MAX, 1);
    start(
        &bus,
        "crm",
        crm.clone(),
        Retry::exponential(Duration::from_millis(1)).max_attempts(2),
    )
    .await;
    bus.notify(QuotaChecked::new(1)).await.unwrap();
    bus.drain().await.unwrap();
    assert_eq!(crm.gaps(), [RetryAfter::MAX_WAIT]);
    assert!(bus.dead_letters().list().await.unwrap().is_empty());
    assert!(bus.shutdown().await.is_clean());
}
