//! The protocol consumer and its batcher: payloads reach the sink in
//! batches, on size, on timeout, on drain and on shutdown; a sink that keeps
//! failing gets its events dead-lettered, ready to replay.

use eventbus::{
    BatchConfig, BoxError, Bus, Permanent, ProtocolConsumer, Retry, Sink, Track, Trackable, event,
    register, sink_fn,
};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[event]
pub struct PageViewed {
    pub user_id: u64,
}

#[event]
pub struct HealthChecked {}

#[register]
impl Trackable for PageViewed {
    fn track(&self) -> Track {
        Track::new(self, self.user_id)
    }
}

/// An analytics endpoint: records batches; fails while `down`, panics while
/// `exploding`.
#[derive(Clone, Default)]
struct Analytics {
    batches: Arc<Mutex<Vec<Vec<String>>>>,
    down: Arc<AtomicBool>,
    refusing: Arc<AtomicBool>,
    exploding: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
}

impl Sink<Track> for Analytics {
    async fn write(&self, batch: &[Track]) -> Result<(), BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.exploding.load(Ordering::SeqCst) {
            panic!("serializer blew up");
        }
        if self.down.load(Ordering::SeqCst) {
            return Err("analytics API returned 502".into());
        }
        if self.refusing.load(Ordering::SeqCst) {
            return Err(Permanent::msg("analytics API returned 400: invalid write key").into());
        }
        let ids = batch.iter().map(|t| t.distinct_id.clone()).collect();
        self.batches.lock().unwrap().push(ids);
        Ok(())
    }
}

impl Analytics {
    fn sizes(&self) -> Vec<usize> {
        self.batches.lock().unwrap().iter().map(Vec::len).collect()
    }
}

fn config(size: usize) -> BatchConfig {
    BatchConfig {
        size,
        timeout: Duration::from_secs(60),
        retry: Retry::exponential(Duration::from_millis(1)).max_attempts(2),
    }
}

async fn tracking_bus(sink: &Analytics, config: BatchConfig) -> Bus {
    let bus = Bus::builder().build().unwrap();
    bus.subscribe(
        "tracking",
        ProtocolConsumer::<dyn Trackable, _>::new(sink.clone()).batch(config),
    )
    .start()
    .await
    .unwrap();
    bus
}

#[tokio::test]
async fn full_batches_are_written_and_drain_flushes_the_rest() {
    let sink = Analytics::default();
    let bus = tracking_bus(&sink, config(3)).await;
    for user in 0..7 {
        bus.notify(PageViewed::new(user)).await.unwrap();
        bus.notify(HealthChecked::new()).await.unwrap();
    }
    bus.drain().await.unwrap();
    assert_eq!(sink.sizes(), [3, 3, 1]);
    let stats = &bus.stats()[0];
    assert_eq!(stats.delivered, 7);
    assert_eq!(
        stats.filtered, 7,
        "events without an impl never reach the consumer"
    );
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_is_written_when_its_timeout_expires() {
    let sink = Analytics::default();
    let bus = tracking_bus(
        &sink,
        BatchConfig {
            timeout: Duration::from_secs(1),
            ..config(100)
        },
    )
    .await;
    bus.notify(PageViewed::new(1)).await.unwrap();
    bus.notify(PageViewed::new(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.sizes().is_empty(), "not yet");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(sink.sizes(), [2]);
}

#[tokio::test]
async fn shutdown_flushes_the_last_batch() {
    let sink = Analytics::default();
    let bus = tracking_bus(&sink, config(100)).await;
    for user in 0..5 {
        bus.notify(PageViewed::new(user)).await.unwrap();
    }
    assert!(bus.shutdown().await.is_clean());
    assert_eq!(sink.sizes(), [5]);
}

#[tokio::test]
async fn a_sink_that_keeps_failing_dead_letters_its_events_for_replay() {
    let sink = Analytics::default();
    sink.down.store(true, Ordering::SeqCst);
    let bus = tracking_bus(&sink, config(2)).await;
    for user in 0..3 {
        bus.notify(PageViewed::new(user)).await.unwrap();
    }
    bus.drain().await.unwrap();

    assert!(sink.sizes().is_empty());
    assert_eq!(
        sink.calls.load(Ordering::SeqCst),
        4,
        "two batches, two attempts each"
    );
    let letters = bus.dead_letters().list_for("tracking").await.unwrap();
    assert_eq!(letters.len(), 3);
    assert!(letters.iter().all(|l| l.attempts == 2));
    assert_eq!(letters[0].errors, ["analytics API returned 502"]);
    assert_eq!(bus.stats()[0].dead_lettered, 3);

    sink.down.store(false, Ordering::SeqCst);
    assert_eq!(bus.dead_letters().replay_all("tracking").await.unwrap(), 3);
    bus.drain().await.unwrap();
    let mut ids: Vec<String> = sink.batches.lock().unwrap().concat();
    ids.sort();
    assert_eq!(ids, ["0", "1", "2"]);
    assert!(bus.dead_letters().count().await.unwrap() == 0);
}

#[tokio::test]
async fn a_sink_that_fails_for_good_dead_letters_without_retrying() {
    let sink = Analytics::default();
    sink.refusing.store(true, Ordering::SeqCst);
    let bus = tracking_bus(&sink, config(2)).await;
    for user in 0..2 {
        bus.notify(PageViewed::new(user)).await.unwrap();
    }
    bus.drain().await.unwrap();

    assert_eq!(sink.calls.load(Ordering::SeqCst), 1, "no second attempt");
    let letters = bus.dead_letters().list_for("tracking").await.unwrap();
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|l| l.attempts == 1), "{letters:?}");
    assert_eq!(
        letters[0].errors,
        ["analytics API returned 400: invalid write key"]
    );
}

#[tokio::test]
async fn a_panicking_sink_is_caught_and_its_events_dead_lettered() {
    let sink = Analytics::default();
    sink.exploding.store(true, Ordering::SeqCst);
    let bus = tracking_bus(&sink, config(1)).await;
    bus.notify(PageViewed::new(1)).await.unwrap();
    bus.drain().await.unwrap();
    let letters = bus.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].errors, ["panicked: serializer blew up"]);

    // The batcher survived: later batches still go out.
    sink.exploding.store(false, Ordering::SeqCst);
    bus.notify(PageViewed::new(2)).await.unwrap();
    bus.drain().await.unwrap();
    assert_eq!(sink.sizes(), [1]);
}

#[tokio::test]
async fn a_closure_sink_works_like_a_sink_type() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let seen = Arc::clone(&seen);
        eventbus::sink_fn(move |batch: Vec<Track>| {
            seen.lock().unwrap().push(batch.len());
            async { Ok(()) }
        })
    };
    let bus = Bus::builder().build().unwrap();
    bus.subscribe(
        "tracking",
        ProtocolConsumer::<dyn Trackable, _>::new(sink).batch(config(2)),
    )
    .start()
    .await
    .unwrap();
    for user in 0..5 {
        bus.notify(PageViewed::new(user)).await.unwrap();
    }
    bus.drain().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), [2, 2, 1]);
}

/// Collects what a tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn dropping_a_bus_with_unwritten_batches_says_so() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let bus = Bus::builder().build().unwrap();
            let sink = sink_fn(|_batch: Vec<Track>| async { Ok(()) });
            let tracking = ProtocolConsumer::<dyn Trackable, _>::new(sink).batch(BatchConfig {
                size: 100,
                timeout: Duration::from_secs(3600),
                retry: Retry::never(),
            });
            let sub = bus.subscribe("tracking", tracking).start().await.unwrap();
            for id in 0..3 {
                bus.notify(PageViewed::new(id)).await.unwrap();
            }
            while sub.stats().delivered < 3 {
                tokio::task::yield_now().await;
            }
            // The service returns without `shutdown`.
        });
        drop(runtime);
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("batched payloads were dropped without being written")
            && log.contains("unwritten=3"),
        "{log}"
    );
}
