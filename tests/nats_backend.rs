//! The NATS JetStream backend against the server on the machine: what the
//! behaviour suite cannot say of a broker. The server drops a duplicate
//! publish, filters for the subscription, schedules retries, keeps a long
//! handler's claim, terminates what the bus dead-lettered; and a wrong
//! stream, a conflicting consumer or an unreachable server each give a
//! clear error.

mod common;

use common::nats::Stream;
use common::{OrderPlaced, chain, eventually, order_ids, within};
use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, NatsError, Retry, StartFrom};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

macro_rules! stream {
    () => {
        match Stream::fresh(module_path!()).await {
            Some(stream) => stream,
            None => return,
        }
    };
}

async fn jetstream() -> async_nats::jetstream::Context {
    let client = async_nats::connect(common::nats::url()).await.unwrap();
    async_nats::jetstream::new(client)
}

async fn consumer_info(stream: &Stream, name: &str) -> async_nats::jetstream::consumer::Info {
    jetstream()
        .await
        .get_stream(&stream.name)
        .await
        .unwrap()
        .consumer_info(name)
        .await
        .unwrap()
}

/// Fails each event's first `failures` attempts (only order `only`'s, when
/// set), and records when each attempt came.
#[derive(Clone, Default)]
struct FailsFirst {
    failures: u32,
    only: Option<u64>,
    attempts: Arc<Mutex<Vec<(u64, Instant)>>>,
    seen: Recorder,
}

impl FailsFirst {
    fn new(failures: u32) -> Self {
        FailsFirst {
            failures,
            ..FailsFirst::default()
        }
    }

    fn attempts_of(&self, order_id: u64) -> Vec<Instant> {
        let attempts = self.attempts.lock().unwrap();
        attempts
            .iter()
            .filter(|(id, _)| *id == order_id)
            .map(|(_, at)| *at)
            .collect()
    }
}

impl Consumer for FailsFirst {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let id = event.downcast_ref::<OrderPlaced>().unwrap().order_id;
        let made = {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push((id, Instant::now()));
            attempts.iter().filter(|(i, _)| *i == id).count() as u32
        };
        if made <= self.failures && self.only.is_none_or(|only| only == id) {
            return Err(format!("attempt {made} failed").into());
        }
        self.seen.handle(event).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_published_twice_is_stored_once() {
    let stream = stream!();
    let bus = Bus::builder().backend(stream.log().await).build().unwrap();
    let seen = Recorder::new();
    bus.subscribe("ledger", seen.clone()).start().await.unwrap();
    let event = AnyEvent::new(OrderPlaced::new(7));
    // A producer that retries after a lost acknowledgement sends the same
    // event (same id) again.
    bus.notify(event.clone()).await.unwrap();
    bus.notify(event).await.unwrap();
    bus.notify(OrderPlaced::new(8)).await.unwrap();
    within(20, "drain", bus.drain()).await.unwrap();
    assert_eq!(order_ids(seen.events()), [7, 8]);
    let mut js_stream = jetstream().await.get_stream(&stream.name).await.unwrap();
    assert_eq!(js_stream.info().await.unwrap().state.messages, 2);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_filters_for_the_subscription() {
    let stream = stream!();
    let log = stream.log().await;
    let bus = Bus::builder().backend(log.clone()).build().unwrap();
    let seen = Recorder::new();
    bus.subscribe("orders-only", seen.clone())
        .events(["order.placed"])
        .unwrap()
        .start()
        .await
        .unwrap();
    let everything = Recorder::new();
    bus.subscribe("everything", everything.clone())
        .start()
        .await
        .unwrap();
    let info = consumer_info(&stream, "orders-only").await;
    assert_eq!(info.config.filter_subject, log.subject("order.placed"));
    assert_eq!(
        consumer_info(&stream, "everything")
            .await
            .config
            .filter_subject,
        format!("{}.>", stream.prefix)
    );
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    within(20, "drain", bus.drain()).await.unwrap();
    assert_eq!(order_ids(seen.events()), [1]);
    // Another event type is never delivered to the filtered consumer: the
    // server keeps it out, so the subscription does not even see it.
    let js = jetstream().await;
    js.publish(log.subject("invoice.sent"), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = consumer_info(&stream, "orders-only").await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    assert_eq!(info.delivered.consumer_sequence, 1);
    bus.shutdown().await;
}

/// A failed attempt goes back to the server with the policy's delay,
/// instead of holding the subscription: a later event is handled in the
/// meantime, in sequential mode too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_handed_back_and_the_server_redelivers_it() {
    let stream = stream!();
    let bus = Bus::builder().backend(stream.log().await).build().unwrap();
    let consumer = FailsFirst {
        only: Some(1),
        ..FailsFirst::new(2)
    };
    let sub = bus
        .subscribe("ledger", consumer.clone())
        .sequential()
        .retry(
            Retry::exponential(Duration::from_millis(400))
                .without_jitter()
                .max_attempts(5),
        )
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    eventually(20, "the first attempt", || {
        !consumer.attempts_of(1).is_empty()
    })
    .await;
    // Handled at once, while order 1 waits for the server.
    bus.notify(OrderPlaced::new(2)).await.unwrap();
    within(20, "drain", bus.drain()).await.unwrap();
    let seen = order_ids(consumer.seen.events());
    assert_eq!(
        seen,
        [2, 1],
        "order 2 was not held behind order 1's retries"
    );
    let attempts = consumer.attempts_of(1);
    assert_eq!(attempts.len(), 3);
    // 400 ms, then 800 ms, as the server was told.
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(380), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(780), "{gaps:?}");
    let stats = sub.stats();
    assert_eq!(
        (
            stats.delivered,
            stats.failed,
            stats.retried,
            stats.dead_lettered
        ),
        (2, 2, 2, 0),
        "{stats:?}"
    );
    let info = consumer_info(&stream, "ledger").await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    bus.shutdown().await;
}

/// At the last attempt the bus stores the dead letter (on the server, so
/// another process lists it) and terminates the message: the server would
/// otherwise keep it, neither delivered nor dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_attempt_is_dead_lettered_and_terminated() {
    let stream = stream!();
    let bus = Bus::builder().backend(stream.log().await).build().unwrap();
    let consumer = FailsFirst::new(u32::MAX);
    bus.subscribe("ledger", consumer.clone())
        .retry(Retry::exponential(Duration::from_millis(100)).max_attempts(3))
        .start()
        .await
        .unwrap();
    // The server says when a message was terminated (not acknowledged).
    let client = async_nats::connect(common::nats::url()).await.unwrap();
    let mut terminated = client
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{}.ledger",
            stream.name
        ))
        .await
        .unwrap();
    client.flush().await.unwrap();
    bus.notify(OrderPlaced::new(5)).await.unwrap();
    within(20, "drain", bus.drain()).await.unwrap();
    assert_eq!(consumer.attempts_of(5).len(), 3);
    let info = consumer_info(&stream, "ledger").await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    let advisory = within(5, "the termination advisory", terminated.next())
        .await
        .unwrap();
    let advisory: serde_json::Value = serde_json::from_slice(&advisory.payload).unwrap();
    assert_eq!(advisory["stream_seq"], 1, "{advisory}");
    assert_eq!(advisory["deliveries"], 3, "{advisory}");
    bus.shutdown().await;

    // Another process sees the letter, with every attempt counted.
    let other = Bus::builder().backend(stream.log().await).build().unwrap();
    let letters = other.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(letters[0].subscription, "ledger");
    assert_eq!(letters[0].errors, ["attempt 3 failed"]);
    assert_eq!(order_ids([letters[0].event.clone()]), [5]);
    other.shutdown().await;
}

/// A handler that runs for several ack waits keeps its message: the other
/// process on the subscription does not get it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_handler_keeps_its_claim() {
    let stream = stream!();
    let (a, b) = (
        Bus::builder().backend(stream.log().await).build().unwrap(),
        Bus::builder().backend(stream.log().await).build().unwrap(),
    );
    let calls = Arc::new(Mutex::new(0u32));
    for bus in [&a, &b] {
        let calls = Arc::clone(&calls);
        bus.subscribe(
            "slow",
            eventbus::consumer_fn(move |_event: AnyEvent| {
                *calls.lock().unwrap() += 1;
                async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok::<(), BoxError>(())
                }
            }),
        )
        .start()
        .await
        .unwrap();
    }
    // The ack wait is 2 s (the tests' log); the handler takes 5 s.
    a.notify(OrderPlaced::new(1)).await.unwrap();
    within(30, "drain", a.drain()).await.unwrap();
    within(30, "drain", b.drain()).await.unwrap();
    // The server never delivered it again (each delivery takes a consumer
    // sequence), and neither process was called twice.
    let info = consumer_info(&stream, "slow").await;
    assert_eq!(info.delivered.consumer_sequence, 1, "{info:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*calls.lock().unwrap(), 1, "delivered once, to one process");
    a.shutdown().await;
    b.shutdown().await;
}

/// A message another publisher wrote without the bus's headers is decoded
/// by its subject, at the newest registered version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_another_publisher_is_decoded_by_its_subject() {
    let stream = stream!();
    let log = stream.log().await;
    let bus = Bus::builder().backend(log.clone()).build().unwrap();
    let seen = Recorder::new();
    bus.subscribe("ledger", seen.clone())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap();
    let payload = serde_json::to_vec(&OrderPlaced::new(42)).unwrap();
    jetstream()
        .await
        .publish(log.subject("order.placed"), payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    eventually(20, "the foreign message", || seen.len() == 1).await;
    assert_eq!(order_ids(seen.events()), [42]);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error_without_the_password() {
    // Nothing listens on port 1 of the loopback.
    let err = eventbus::NatsLog::builder()
        .url("nats://app:s3cret@127.0.0.1:1")
        .connect()
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, NatsError::Connect { .. }), "{text}");
    assert!(
        text.starts_with("cannot connect to NATS at nats://app:***@127.0.0.1:1"),
        "{text}"
    );
    assert!(!text.contains("s3cret") && !format!("{err:?}").contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_that_name_with_other_subjects_is_refused() {
    let stream = stream!();
    let js = jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.name.clone(),
        subjects: vec![format!("{}-other.>", stream.prefix)],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = stream.builder().connect().await.unwrap_err();
    let text = chain(&err);
    assert!(
        matches!(
            &err,
            NatsError::StreamConflict {
                setting: "subjects",
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains(&stream.name) && text.contains("another prefix"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_queue_stream_is_refused() {
    let stream = stream!();
    let js = jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.name.clone(),
        subjects: vec![format!("{}.>", stream.prefix)],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = stream.builder().connect().await.unwrap_err();
    assert!(
        matches!(
            &err,
            NatsError::StreamConflict {
                setting: "retention",
                ..
            }
        ),
        "{}",
        chain(&err)
    );
}

/// A consumer of the subscription's name that someone made by hand, with
/// another ack policy: the start fails and names the setting, and leaves
/// the consumer as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_consumer_is_a_clear_error_naming_the_setting() {
    let stream = stream!();
    let log = stream.log().await;
    let js = jetstream().await;
    js.get_stream(&stream.name)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("ledger".to_owned()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let bus = Bus::builder().backend(log).build().unwrap();
    let err = bus
        .subscribe("ledger", Recorder::new())
        .start()
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(text.contains("ack_policy = none"), "{text}");
    assert!(text.contains("nats consumer rm"), "the fix: {text}");
    let info = consumer_info(&stream, "ledger").await;
    assert_eq!(
        info.config.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::None
    );
    bus.shutdown().await;
}

/// A subscription name the server does not take as a consumer name gets
/// one of its own, distinct from a similar name's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_names_with_dots_get_consumers_of_their_own() {
    let stream = stream!();
    let bus = Bus::builder().backend(stream.log().await).build().unwrap();
    let (dotted, plain) = (Recorder::new(), Recorder::new());
    bus.subscribe("mail.welcome", dotted.clone())
        .start()
        .await
        .unwrap();
    bus.subscribe("mail_welcome", plain.clone())
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    within(20, "drain", bus.drain()).await.unwrap();
    assert_eq!((dotted.len(), plain.len()), (1, 1));
    bus.shutdown().await;
}

/// A batching consumer has only queued what it was handed: the messages
/// are acknowledged once its sink has written them, so a crash before that
/// leaves them with the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_acknowledged_only_once_its_sink_has_it() {
    use eventbus::{BatchConfig, ProtocolConsumer, Sink, Track, Trackable};

    /// Writes once the gate opens.
    #[derive(Clone)]
    struct Analytics {
        gate: Arc<tokio::sync::Semaphore>,
        written: Arc<Mutex<Vec<usize>>>,
    }

    impl Sink<Track> for Analytics {
        async fn write(&self, batch: &[Track]) -> Result<(), BoxError> {
            self.gate.acquire().await?.forget();
            self.written.lock().unwrap().push(batch.len());
            Ok(())
        }
    }

    let stream = stream!();
    let bus = Bus::builder().backend(stream.log().await).build().unwrap();
    let sink = Analytics {
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
        written: Arc::default(),
    };
    let sub = bus
        .subscribe(
            "analytics",
            ProtocolConsumer::<dyn Trackable, _>::new(sink.clone()).batch(BatchConfig {
                size: 100,
                timeout: Duration::from_secs(60),
                ..BatchConfig::default()
            }),
        )
        .start()
        .await
        .unwrap();
    for id in 0..5 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    // The first read's event is handled (buffered), and the subscription
    // flushes the batcher before it settles: the sink holds the write.
    eventually(20, "the first handled and buffered", || {
        let stats = sub.stats();
        stats.delivered >= 1 && stats.buffered >= 1
    })
    .await;
    // Time for an acknowledgement to reach the server, were one sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let info = consumer_info(&stream, "analytics").await;
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "nothing acknowledged before the sink wrote it: {info:?}"
    );
    assert!(sink.written.lock().unwrap().is_empty());

    sink.gate.add_permits(100);
    within(20, "drain", bus.drain()).await.unwrap();
    assert_eq!(sink.written.lock().unwrap().iter().sum::<usize>(), 5);
    let info = consumer_info(&stream, "analytics").await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_messages_that_decode_now_are_requeued_as_dead_letters() {
    let stream = stream!();
    let log = stream.log().await;
    let bus = Bus::builder().backend(log.clone()).build().unwrap();
    let seen = Recorder::new();
    bus.subscribe("search", seen.clone()).start().await.unwrap();
    let js = async_nats::jetstream::new(log.client().clone());

    // A message no version of this binary decodes: quarantined by the
    // subscription after its tries.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Eventbus-Name", "order.renamed_long_ago");
    headers.insert("Eventbus-Version", "1");
    js.publish_with_headers(log.subject("order.renamed_long_ago"), headers, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut quarantined = Vec::new();
    for _ in 0..300 {
        quarantined = log.quarantined("search").await.unwrap();
        if !quarantined.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(quarantined.len(), 1, "quarantined within 30 s");

    // An order this binary decodes, quarantined by an older process of a
    // rolling deploy that did not know it: its record, as that process
    // writes one.
    let order = serde_json::to_vec(&OrderPlaced::new(7)).unwrap();
    let sequence = js
        .publish(log.subject("order.placed"), order.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let record = |sequence: u64, at: &str| {
        serde_json::json!({
            "sequence": sequence,
            "subject": log.subject("order.placed"),
            "name": "order.placed",
            "reason": "`order.placed` does not decode: no event named `order.placed` is registered",
            "at": at,
        })
        .to_string()
    };
    let records = format!("eventbus-dead-letters.{}.quarantine.search", stream.name);
    // Recorded twice (a process that died before its termination reached
    // the server, and another that saw the message again later), and one
    // whose message the stream's limits have removed.
    for (sequence, at) in [
        (sequence, "2026-11-29T12:00:00Z"),
        (sequence, "2026-11-29T12:10:00Z"),
        (999_999, "2026-11-29T12:00:00Z"),
    ] {
        js.publish(records.clone(), record(sequence, at).into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    bus.drain().await.unwrap();
    assert_eq!(log.quarantined("search").await.unwrap().len(), 4);

    let requeued = log.requeue_quarantined("search").await.unwrap();
    assert_eq!(
        (requeued.requeued, requeued.still_quarantined, requeued.gone),
        (1, 1, 1),
        "{requeued:?}"
    );
    let left: Vec<u64> = log
        .quarantined("search")
        .await
        .unwrap()
        .iter()
        .map(|q| q.sequence)
        .collect();
    assert_eq!(left, [quarantined[0].sequence, 999_999]);
    let letters = bus.dead_letters().list_for("search").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(order_ids([letters[0].event.clone()]), [7]);
    assert!(
        letters[0].errors[0].starts_with("quarantined: "),
        "{:?}",
        letters[0].errors
    );
    // Requeued again, by two at once: nothing more moves, and neither fails.
    let other = stream.log().await;
    let (again, twice) = tokio::join!(
        log.requeue_quarantined("search"),
        other.requeue_quarantined("search")
    );
    let (again, twice) = (again.unwrap(), twice.unwrap());
    assert_eq!((again.requeued, again.still_quarantined), (0, 1));
    assert_eq!(twice.requeued, 0);
    assert_eq!(
        bus.dead_letters().list_for("search").await.unwrap().len(),
        1
    );

    // Replayed like any letter.
    let before = seen.len();
    bus.dead_letters().replay(letters[0].id).await.unwrap();
    bus.drain().await.unwrap();
    assert_eq!(seen.len(), before + 1);
    assert_eq!(order_ids([seen.events().last().unwrap().clone()]), [7]);
    assert!(bus.shutdown().await.is_clean());
}
