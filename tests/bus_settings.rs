//! Every setting that cannot work is a clear error at the call that made it,
//! naming the setting.

use eventbus::testing::Recorder;
use eventbus::{BuildError, Bus, MemoryLog, StartFrom, SubscribeError};

#[test]
fn zero_capacity_is_refused_at_build() {
    let err = Bus::builder().capacity(0).build().unwrap_err();
    assert_eq!(err, BuildError::ZeroCapacity);
    assert_eq!(
        err.to_string(),
        "`capacity` must be at least 1: it is how many unfinished events the bus holds"
    );
}

#[test]
fn capacity_with_a_log_of_ones_own_is_refused() {
    let err = Bus::builder()
        .capacity(8)
        .backend(MemoryLog::new(8))
        .build()
        .unwrap_err();
    assert_eq!(err, BuildError::CapacityWithCustomBackend);
}

async fn start_err(
    configure: impl FnOnce(
        eventbus::SubscriptionBuilder<'_, Recorder>,
    ) -> eventbus::SubscriptionBuilder<'_, Recorder>,
) -> String {
    let bus = Bus::builder().build().unwrap();
    configure(bus.subscribe("s", Recorder::new()))
        .start()
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn demand_settings_are_checked_at_start() {
    assert_eq!(
        start_err(|s| s.max_demand(0)).await,
        "`max_demand` must be at least 1: it is how many events the subscription pulls at once"
    );
    assert_eq!(
        start_err(|s| s.max_demand(10).min_demand(10)).await,
        "`min_demand` (10) must be below `max_demand` (10)"
    );
    assert_eq!(
        start_err(|s| s.min_demand(5000)).await,
        "`min_demand` (5000) must be below `max_demand` (1000)"
    );
}

#[tokio::test]
async fn mode_settings_are_checked_at_start() {
    assert_eq!(
        start_err(|s| s.concurrent(0)).await,
        "`concurrent` needs a limit of at least 1 event in flight"
    );
    assert_eq!(
        start_err(|s| s.partitioned(0, |_| 0)).await,
        "`partitioned` needs at least 1 lane"
    );
}

#[tokio::test]
async fn the_in_memory_log_cannot_start_from_the_beginning() {
    let message = start_err(|s| s.start_from(StartFrom::Beginning)).await;
    assert_eq!(
        message,
        "the bus's backend could not open a reader for the subscription"
    );
    let bus = Bus::builder().build().unwrap();
    let err = bus
        .subscribe("s", Recorder::new())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(
        source.starts_with("the in-memory log keeps no history"),
        "{source}"
    );
    // The failed start does not keep the name.
    bus.subscribe("s", Recorder::new()).start().await.unwrap();
}

#[tokio::test]
async fn names_are_unique_and_not_empty() {
    let bus = Bus::builder().build().unwrap();
    bus.subscribe("audit", Recorder::new())
        .start()
        .await
        .unwrap();
    let err = bus
        .subscribe("audit", Recorder::new())
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, SubscribeError::DuplicateName(ref n) if n == "audit"));
    assert_eq!(
        err.to_string(),
        "a subscription named `audit` is already running; names must be unique within a bus"
    );
    let err = bus
        .subscribe(" ", Recorder::new())
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, SubscribeError::EmptyName));
}

#[tokio::test]
async fn an_absurd_concurrency_limit_is_refused() {
    assert_eq!(
        start_err(|s| s.concurrent(usize::MAX)).await,
        "`concurrent` limit 18446744073709551615 is above the most supported, 16777216"
    );
}

#[tokio::test]
async fn a_huge_capacity_does_not_overflow() {
    let bus = Bus::builder().capacity(usize::MAX).build().unwrap();
    let all = Recorder::new();
    bus.subscribe("all", all.clone()).start().await.unwrap();
    #[eventbus::event]
    struct Pinged {}
    for _ in 0..10 {
        bus.try_notify(Pinged::new()).unwrap();
    }
    bus.drain().await.unwrap();
    assert_eq!(all.len(), 10);
}

#[tokio::test]
async fn a_batch_size_of_zero_is_refused_at_start() {
    let bus = Bus::builder().build().unwrap();
    let sink = eventbus::sink_fn(|_batch: Vec<eventbus::Track>| async { Ok(()) });
    let consumer = eventbus::ProtocolConsumer::<dyn eventbus::Trackable, _>::new(sink).batch(
        eventbus::BatchConfig {
            size: 0,
            ..Default::default()
        },
    );
    let err = bus
        .subscribe("analytics", consumer)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, SubscribeError::Consumer(_)), "{err:?}");
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "`BatchConfig::size` must be at least 1: it is how many payloads a batch holds"
    );
    // Nothing was started: the name is free.
    bus.subscribe("analytics", Recorder::new())
        .start()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_concurrency_limit_above_the_capacity_is_refused_with_both_settings() {
    let bus = Bus::builder().capacity(4096).build().unwrap();
    let err = bus
        .subscribe("s", Recorder::new())
        .concurrent(10_000)
        .start()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "`concurrent(10000)` is above the bus `capacity` of 4096: events in flight hold their place in the buffer, so at most 4096 could run at once; raise `capacity` to at least 10000 or lower the limit"
    );
    // At the capacity it works.
    bus.subscribe("s", Recorder::new())
        .concurrent(4096)
        .start()
        .await
        .unwrap();
}
