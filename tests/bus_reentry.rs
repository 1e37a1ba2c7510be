//! A handler that calls back into its own bus: `drain`, `stop` and
//! `shutdown` from inside a consumer neither hang nor abort the caller, and
//! a later `shutdown` still accounts for every subscription.

use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, DrainError, ShutdownReport, event};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[event]
pub struct OrderPlaced {
    pub order_id: u64,
}

/// Runs `call` on the bus from inside `handle`, and records what it
/// returned.
#[derive(Clone)]
struct CallsBack<F> {
    bus: Arc<Mutex<Option<Bus>>>,
    call: F,
    seen: Recorder,
}

impl<F, Fut> Consumer for CallsBack<F>
where
    F: Fn(Bus) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let bus = self.bus.lock().unwrap().clone().expect("bus set");
        (self.call)(bus).await;
        self.seen.handle(event).await
    }
}

fn bus() -> Bus {
    Bus::builder()
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Bounded, so a hang fails the test instead of stalling the suite.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_from_inside_a_handler_is_an_error_not_a_hang() {
    let bus = bus();
    let answer: Arc<Mutex<Option<Result<(), DrainError>>>> = Arc::default();
    let consumer = CallsBack {
        bus: Arc::new(Mutex::new(Some(bus.clone()))),
        call: {
            let answer = Arc::clone(&answer);
            move |bus: Bus| {
                let answer = Arc::clone(&answer);
                async move {
                    let drained = bus.drain().await;
                    *answer.lock().unwrap() = Some(drained);
                }
            }
        },
        seen: Recorder::new(),
    };
    bus.subscribe("audit", consumer.clone())
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    within("drain from outside", bus.drain()).await.unwrap();
    let answer = answer.lock().unwrap().take().expect("the handler ran");
    assert_eq!(answer, Err(DrainError::InsideHandler("audit".into())));
    assert_eq!(
        answer.unwrap_err().to_string(),
        "`drain` was called from inside a handler of subscription `audit`, which cannot finish until that handler returns; call it from outside the bus's consumers"
    );
    assert_eq!(consumer.seen.len(), 1);
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_stops_its_own_subscription_returns_and_it_stops() {
    let bus = bus();
    let consumer = CallsBack {
        bus: Arc::new(Mutex::new(Some(bus.clone()))),
        call: |bus: Bus| async move {
            assert!(bus.unsubscribe("audit").await.is_some());
        },
        seen: Recorder::new(),
    };
    bus.subscribe("audit", consumer.clone())
        .concurrent(4)
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    within("the stop", async {
        while bus.stats().iter().any(|s| s.name == "audit") || consumer.seen.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    // The name is free again once the stop has finished.
    within("the restart", async {
        loop {
            match bus.subscribe("audit", Recorder::new()).start().await {
                Ok(_) => break,
                Err(eventbus::SubscribeError::DuplicateName(_)) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(err) => panic!("{err}"),
            }
        }
    })
    .await;
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_inside_a_handler_finishes_in_the_background() {
    let bus = bus();
    let inner_report: Arc<Mutex<Option<ShutdownReport>>> = Arc::default();
    let consumer = CallsBack {
        bus: Arc::new(Mutex::new(Some(bus.clone()))),
        call: {
            let inner_report = Arc::clone(&inner_report);
            move |bus: Bus| {
                let inner_report = Arc::clone(&inner_report);
                async move {
                    let report = bus.shutdown().await;
                    *inner_report.lock().unwrap() = Some(report);
                }
            }
        },
        seen: Recorder::new(),
    };
    let other = Recorder::new();
    bus.subscribe("audit", consumer.clone())
        .start()
        .await
        .unwrap();
    bus.subscribe("search", other.clone())
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();

    within("the handler's shutdown", async {
        while inner_report.lock().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    let inner = inner_report.lock().unwrap().take().unwrap();
    // It could not wait for its own subscription, so it waited for none.
    assert!(
        inner.still_running.contains(&"audit".to_owned()),
        "{inner:?}"
    );
    assert!(inner.timed_out.is_empty(), "{inner:?}");
    assert!(!inner.is_clean());

    // The handler returned; a shutdown from outside waits for what is left
    // and finds it finished.
    let outer = within("the outer shutdown", bus.shutdown()).await;
    assert!(outer.is_clean(), "{outer:?}");
    assert_eq!(consumer.seen.len(), 1, "the handler ran to its end");
    assert_eq!(other.len(), 1, "the other subscription finished its event");
    assert!(bus.stats().is_empty());
    assert!(bus.notify(OrderPlaced::new(2)).await.is_err());
}
