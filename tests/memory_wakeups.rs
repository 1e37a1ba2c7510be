//! Subscriptions on the in-memory log sleep whenever they have read
//! everything and are woken by the next append. Events that come one at a
//! time, from several producers on several threads, put every cursor to
//! sleep and wake it again for each event: a wake-up lost in that race
//! leaves an event unread, and `drain` would never return.

use eventbus::{AnyEvent, Bus, event};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[event]
struct Step {
    producer: u32,
    n: u32,
}

/// What one subscription saw: (producer, n) in arrival order.
type Seen = Arc<Mutex<Vec<(u32, u32)>>>;

const PRODUCERS: u32 = 4;
const EACH: u32 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_one_at_a_time_wake_every_sleeping_subscription() {
    let bus = Bus::builder().build().unwrap();
    let seen: Vec<Seen> = (0..4).map(|_| Arc::default()).collect();
    for (i, seen) in seen.iter().enumerate() {
        let seen = Arc::clone(seen);
        bus.subscribe(
            format!("sleeper-{i}"),
            eventbus::consumer_fn(move |event: AnyEvent| {
                let seen = Arc::clone(&seen);
                async move {
                    let step = event.downcast_ref::<Step>().expect("a step");
                    seen.lock().unwrap().push((step.producer, step.n));
                    Ok::<(), eventbus::BoxError>(())
                }
            }),
        )
        .start()
        .await
        .unwrap();
    }
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|producer| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for n in 0..EACH {
                    bus.notify(Step::new(producer, n)).await.unwrap();
                    // Half the producers give the subscriptions time to
                    // read everything and go back to sleep before their
                    // next event; the others race them.
                    if producer % 2 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), bus.drain())
        .await
        .expect("every subscription was woken for every event")
        .unwrap();
    for (i, seen) in seen.iter().enumerate() {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), (PRODUCERS * EACH) as usize, "sleeper-{i}");
        // Each producer's events arrive in the order it notified them.
        let mut next: HashMap<u32, u32> = HashMap::new();
        for &(producer, n) in seen.iter() {
            let expected = next.entry(producer).or_insert(0);
            assert_eq!(n, *expected, "sleeper-{i}, producer {producer}");
            *expected += 1;
        }
    }
    let stats = bus.stats();
    assert!(
        stats
            .iter()
            .all(|s| s.lag == 0 && s.delivered == u64::from(PRODUCERS * EACH))
    );
    bus.shutdown().await;
}

/// A shutdown wakes subscriptions that sleep on an empty log, and they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_wakes_sleeping_subscriptions() {
    let bus = Bus::builder().build().unwrap();
    for i in 0..4 {
        bus.subscribe(
            format!("idle-{i}"),
            eventbus::consumer_fn(|_: AnyEvent| async { Ok::<(), eventbus::BoxError>(()) }),
        )
        .start()
        .await
        .unwrap();
    }
    bus.notify(Step::new(0, 0)).await.unwrap();
    bus.drain().await.unwrap();
    // Every cursor has read everything and sleeps now.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let report = tokio::time::timeout(Duration::from_secs(10), bus.shutdown())
        .await
        .expect("the shutdown woke the sleeping subscriptions");
    assert!(report.is_clean(), "{report:?}");
}
