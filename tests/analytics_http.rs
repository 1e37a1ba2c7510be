//! `eventbus::analytics::Segment` against a real HTTP endpoint started by
//! each test on 127.0.0.1: what arrives and in what shape, how batches are
//! cut and split, what is retried, what is dead-lettered and with which
//! message, and the settings refused at start.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use eventbus::analytics::{Segment, SegmentId, SettingsError};
use eventbus::{
    BatchConfig, Bus, DeadLetter, Event, Retry, SubscribeError, Track, Trackable, event, register,
};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[event(name = "plan.upgraded")]
pub struct PlanUpgraded {
    pub user_id: u64,
    pub plan: String,
}

#[register]
impl Trackable for PlanUpgraded {
    fn track(&self) -> Track {
        Track::new(self, self.user_id).property("plan", self.plan.as_str())
    }
}

/// Not trackable: never sent.
#[event]
pub struct HealthChecked {}

/// Trackable, with an empty `distinct_id`, which Segment refuses.
#[event]
pub struct VisitorCame {}

#[register]
impl Trackable for VisitorCame {
    fn track(&self) -> Track {
        Track::new(self, "")
    }
}

const WRITE_KEY: &str = "test-key";
/// `test-key:` in base64: the write key as the basic auth user, no password.
const BASIC_AUTH: &str = "Basic dGVzdC1rZXk6";

/// How the endpoint answers one request.
#[derive(Clone)]
enum Reply {
    Status(u16, &'static str),
    /// A status and headers.
    With(u16, Vec<(&'static str, &'static str)>, String),
    /// 200, after this long.
    Slow(Duration),
}

/// One request as the endpoint saw it, and the status it answered.
#[derive(Clone, Debug)]
struct Seen {
    headers: HeaderMap,
    size: usize,
    body: Value,
    status: u16,
}

impl Seen {
    fn calls(&self) -> &[Value] {
        self.body["batch"].as_array().expect("a `batch` array")
    }

    fn ids(&self) -> Vec<String> {
        self.calls()
            .iter()
            .map(|c| c["messageId"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

/// A Segment-like batch endpoint on loopback: records every request and
/// answers from its script, then 200.
struct Endpoint {
    url: String,
    script: Arc<Script>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(script): State<Arc<Script>>, headers: HeaderMap, body: Bytes) -> Response {
    let reply = script.replies.lock().unwrap().pop_front();
    let status = match &reply {
        Some(Reply::Status(status, _)) | Some(Reply::With(status, _, _)) => *status,
        Some(Reply::Slow(_)) | None => 200,
    };
    script.seen.lock().unwrap().push(Seen {
        headers,
        size: body.len(),
        body: serde_json::from_slice(&body).expect("the request body is JSON"),
        status,
    });
    let status = StatusCode::from_u16(status).unwrap();
    match reply {
        Some(Reply::Status(_, body)) => (status, body).into_response(),
        Some(Reply::With(_, headers, body)) => {
            let mut response = (status, body).into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        Some(Reply::Slow(wait)) => {
            tokio::time::sleep(wait).await;
            (status, r#"{"success":true}"#).into_response()
        }
        None => (status, r#"{"success":true}"#).into_response(),
    }
}

impl Endpoint {
    async fn start(replies: impl IntoIterator<Item = Reply>) -> Endpoint {
        let script = Arc::new(Script {
            replies: Mutex::new(replies.into_iter().collect()),
            seen: Mutex::default(),
        });
        let app = Router::new()
            .route("/v1/batch", axum::routing::post(receive))
            .with_state(Arc::clone(&script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Endpoint {
            url: format!("http://{addr}/v1/batch"),
            script,
            server,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.seen.lock().unwrap().clone()
    }

    /// The `messageId`s of the requests answered 2xx, in order.
    fn delivered_ids(&self) -> Vec<String> {
        self.seen()
            .iter()
            .filter(|s| (200..300).contains(&s.status))
            .flat_map(Seen::ids)
            .collect()
    }
}

/// An address nothing listens on: a port the OS handed out, then freed.
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1/batch")
}

fn batch(size: usize, attempts: u32) -> BatchConfig {
    BatchConfig {
        size,
        // Batches are cut by size or by `drain`, never by this.
        timeout: Duration::from_secs(60),
        retry: Retry::exponential(Duration::from_millis(5))
            .max_attempts(attempts)
            .without_jitter(),
    }
}

async fn subscribed(segment: Segment) -> Bus {
    let bus = Bus::builder().build().unwrap();
    bus.subscribe("analytics", segment).start().await.unwrap();
    bus
}

/// Drains `bus`, with a generous bound so a bug hangs no test.
async fn drain(bus: &Bus) {
    tokio::time::timeout(Duration::from_secs(60), bus.drain())
        .await
        .expect("drain finished within 60 s")
        .unwrap();
}

async fn letters(bus: &Bus) -> Vec<DeadLetter> {
    bus.dead_letters().list_for("analytics").await.unwrap()
}

fn ids(events: &[PlanUpgraded]) -> Vec<String> {
    events.iter().map(|e| e.meta().id.to_string()).collect()
}

#[tokio::test]
async fn records_arrive_in_segment_format_with_the_write_key() {
    let endpoint = Endpoint::start([]).await;
    let bus = subscribed(
        Segment::new(WRITE_KEY)
            .endpoint(&endpoint.url)
            .header("X-Team", "growth")
            .batch(batch(10, 1)),
    )
    .await;
    let events = [
        PlanUpgraded::new(7, "pro".into()),
        PlanUpgraded::new(8, "team".into()),
    ];
    for e in &events {
        bus.notify(e.clone()).await.unwrap();
    }
    bus.notify(HealthChecked::new()).await.unwrap();
    drain(&bus).await;

    let seen = endpoint.seen();
    assert_eq!(seen.len(), 1, "one request for one batch");
    let request = &seen[0];
    assert_eq!(request.headers["authorization"], BASIC_AUTH);
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["x-team"], "growth");
    assert!(request.body["sentAt"].as_str().is_some());
    let calls = request.calls();
    assert_eq!(calls.len(), 2, "the untrackable event is not sent");
    for (call, event) in calls.iter().zip(&events) {
        assert_eq!(call["type"], "track");
        assert_eq!(call["event"], "plan.upgraded");
        assert_eq!(call["userId"], event.user_id.to_string());
        assert!(call.get("anonymousId").is_none());
        assert_eq!(
            call["properties"],
            serde_json::json!({ "plan": event.plan })
        );
        assert_eq!(call["messageId"], event.meta().id.to_string());
        let timestamp: chrono::DateTime<chrono::Utc> =
            call["timestamp"].as_str().unwrap().parse().unwrap();
        assert_eq!(timestamp, event.meta().occurred_at);
        assert_eq!(call["context"]["library"]["name"], "eventbus");
    }
    assert!(letters(&bus).await.is_empty());
}

#[tokio::test]
async fn distinct_id_can_go_as_anonymous_id() {
    let endpoint = Endpoint::start([]).await;
    let bus = subscribed(
        Segment::new(WRITE_KEY)
            .endpoint(&endpoint.url)
            .distinct_id_as(SegmentId::AnonymousId),
    )
    .await;
    bus.notify(PlanUpgraded::new(7, "pro".into()))
        .await
        .unwrap();
    drain(&bus).await;
    let call = endpoint.seen()[0].calls()[0].clone();
    assert_eq!(call["anonymousId"], "7");
    assert!(call.get("userId").is_none());
}

#[tokio::test]
async fn batches_are_cut_at_the_batch_size() {
    let endpoint = Endpoint::start([]).await;
    let bus = subscribed(
        Segment::new(WRITE_KEY)
            .endpoint(&endpoint.url)
            .batch(batch(2, 1)),
    )
    .await;
    let events: Vec<PlanUpgraded> = (0..5).map(|i| PlanUpgraded::new(i, "pro".into())).collect();
    for e in &events {
        bus.notify(e.clone()).await.unwrap();
    }
    drain(&bus).await;
    let sizes: Vec<usize> = endpoint.seen().iter().map(|s| s.calls().len()).collect();
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(endpoint.delivered_ids(), ids(&events));
}

#[tokio::test]
async fn a_batch_over_500_kb_goes_in_several_requests_each_record_once() {
    let endpoint = Endpoint::start([]).await;
    let bus = subscribed(
        Segment::new(WRITE_KEY)
            .endpoint(&endpoint.url)
            .batch(batch(100, 1)),
    )
    .await;
    // 80 calls of about 10 KB: about 800 KB in one batch.
    let events: Vec<PlanUpgraded> = (0..80)
        .map(|i| PlanUpgraded::new(i, "p".repeat(10_000)))
        .collect();
    for e in &events {
        bus.notify(e.clone()).await.unwrap();
    }
    drain(&bus).await;

    let seen = endpoint.seen();
    assert!(seen.len() >= 2, "split into {} requests", seen.len());
    for request in &seen {
        assert!(
            request.size <= 500_000,
            "a request of {} bytes",
            request.size
        );
    }
    assert_eq!(
        endpoint.delivered_ids(),
        ids(&events),
        "each once, in order"
    );
    assert!(letters(&bus).await.is_empty());
}

#[tokio::test]
async fn a_record_over_32_kb_is_dead_lettered_alone_and_the_others_arrive() {
    let endpoint = Endpoint::start([]).await;
    let bus = subscribed(
        Segment::new(WRITE_KEY)
            .endpoint(&endpoint.url)
            .batch(batch(10, 3)),
    )
    .await;
    let small = PlanUpgraded::new(1, "pro".into());
    let huge = PlanUpgraded::new(2, "x".repeat(40_000));
    let other = PlanUpgraded::new(3, "team".into());
    for e in [&small, &huge, &other] {
        bus.notify(e.clone()).await.unwrap();
    }
    drain(&bus).await;

    assert_eq!(endpoint.delivered_ids(), ids(&[small, other]));
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.event.meta().id, huge.meta().id);
    assert_eq!(letter.attempts, 1, "refused at once, not retried");
    let error = letter.errors.join(": ");
    assert!(
        error.contains("over the per-call limit of 32000 bytes"),
        "{error}"
    );
    assert!(error.contains(&huge.meta().id.to_string()), "{error}");
    assert!(error.contains(" is 40"), "the size is named: {error}");
}

#[tokio::test]
async fn a_record_segment_would_refuse_is_dead_lettered_alone() {
    let endpoint = Endpoint::start([]).await;
    let bus = subscribed(Segment::new(WRITE_KEY).endpoint(&endpoint.url)).await;
    let fine = PlanUpgraded::new(1, "pro".into());
    bus.notify(fine.clone()).await.unwrap();
    bus.notify(VisitorCame::new()).await.unwrap();
    drain(&bus).await;

    assert_eq!(endpoint.delivered_ids(), ids(&[fine]));
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    let error = letters[0].errors.join(": ");
    assert!(error.contains("empty `distinct_id`"), "{error}");
}

#[tokio::test]
async fn a_500_is_retried_and_the_batch_delivered() {
    let endpoint = Endpoint::start([Reply::Status(500, "try later")]).await;
    let bus = subscribed(
        Segment::new(WRITE_KEY)
            .endpoint(&endpoint.url)
            .batch(batch(10, 3)),
    )
    .await;
    let events: Vec<PlanUpgraded> = (0..3).map(|i| PlanUpgraded::new(i, "pro".into())).collect();
    for e in &events {
        bus.notify(e.clone()).await.unwrap();
    }
    drain(&bus).await;

    let statuses: Vec<u16> = endpoint.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [500, 200]);
    assert_eq!(
        endpoint.seen()[1].ids(),
        ids(&events),
        "the same messageIds"
    );
    assert!(letters(&bus).await.is_empty());
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_and_delivered() {
    // The wait itself is not asserted: a timing never decides a test.
    let endpoint = Endpoint::start([Reply::With(
        429,
        vec![("retry-after", "1")],
        "slow down".into(),
    )])
    .await;
    let bus = subscribed(
        Segment::new(WRITE_KEY)
            .endpoint(&endpoint.url)
            .batch(batch(10, 3)),
    )
    .await;
    let event = PlanUpgraded::new(1, "pro".into());
    bus.notify(event.clone()).await.unwrap();
    drain(&bus).await;

    let statuses: Vec<u16> = endpoint.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [429, 200]);
    assert_eq!(endpoint.delivered_ids(), ids(&[event]));
}

#[tokio::test]
async fn a_400_dead_letters_the_batch_at_once_with_the_status() {
    let endpoint = Endpoint::start([Reply::Status(400, r#"{"error":"invalid batch"}"#)]).await;
    let bus = subscribed(
        Segment::new(WRITE_KEY)
            .endpoint(&endpoint.url)
            .batch(batch(10, 5)),
    )
    .await;
    let events: Vec<PlanUpgraded> = (0..2).map(|i| PlanUpgraded::new(i, "pro".into())).collect();
    for e in &events {
        bus.notify(e.clone()).await.unwrap();
    }
    drain(&bus).await;

    assert_eq!(endpoint.seen().len(), 1, "a 400 is not retried");
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 2, "every event of the batch");
    for letter in &letters {
        assert_eq!(letter.attempts, 1);
        let error = letter.errors.join(": ");
        assert!(
            error.contains("rejected the batch with HTTP 400"),
            "{error}"
        );
        assert!(error.contains("invalid batch"), "the body is kept: {error}");
        assert!(
            error.contains(&endpoint.url),
            "the endpoint is named: {error}"
        );
    }
}

#[tokio::test]
async fn a_long_error_body_is_cut_in_the_dead_letter() {
    let page = format!("<html>{}</html>", "not found ".repeat(2_000));
    let endpoint = Endpoint::start([Reply::With(404, vec![], page)]).await;
    let bus = subscribed(Segment::new(WRITE_KEY).endpoint(&endpoint.url)).await;
    bus.notify(PlanUpgraded::new(1, "pro".into()))
        .await
        .unwrap();
    drain(&bus).await;

    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    let error = &letters[0].errors[0];
    assert!(error.contains("HTTP 404"), "{error}");
    assert!(error.ends_with('…'), "{error}");
    assert!(error.len() < 1_000, "bounded: {} bytes", error.len());
}

#[tokio::test]
async fn a_redirect_is_not_followed_but_dead_lettered() {
    let endpoint = Endpoint::start([Reply::With(
        301,
        vec![("location", "http://127.0.0.1:9/v1/batch")],
        String::new(),
    )])
    .await;
    let bus = subscribed(Segment::new(WRITE_KEY).endpoint(&endpoint.url)).await;
    bus.notify(PlanUpgraded::new(1, "pro".into()))
        .await
        .unwrap();
    drain(&bus).await;

    assert_eq!(endpoint.seen().len(), 1);
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].errors[0].contains("HTTP 301"),
        "{:?}",
        letters[0].errors
    );
}

#[tokio::test]
async fn a_server_that_is_down_is_retried_then_dead_lettered() {
    let url = closed_url();
    let bus = subscribed(Segment::new(WRITE_KEY).endpoint(&url).batch(batch(10, 3))).await;
    let event = PlanUpgraded::new(1, "pro".into());
    bus.notify(event.clone()).await.unwrap();
    drain(&bus).await;

    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event.meta().id, event.meta().id);
    assert_eq!(letters[0].attempts, 3, "retried by the batch's policy");
    let error = letters[0].errors.join(": ");
    assert!(
        error.contains(&format!("could not reach the analytics endpoint {url}")),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_that_answers_garbage_is_retried_then_dead_lettered() {
    // Answers every connection with bytes that are not HTTP, then closes it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/batch", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(b"\x00\x01 this is not http\r\n\r\n").await;
        }
    });
    let bus = subscribed(Segment::new(WRITE_KEY).endpoint(&url).batch(batch(10, 2))).await;
    bus.notify(PlanUpgraded::new(1, "pro".into()))
        .await
        .unwrap();
    drain(&bus).await;
    server.abort();

    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 2, "retried by the batch's policy");
    let error = letters[0].errors.join(": ");
    assert!(
        error.contains(&format!(
            "the analytics endpoint {url} gave no complete HTTP answer"
        )),
        "{error}"
    );
}

#[tokio::test]
async fn a_2xx_is_taken_whatever_its_body() {
    let endpoint = Endpoint::start([Reply::Status(202, "not json at all")]).await;
    let bus = subscribed(Segment::new(WRITE_KEY).endpoint(&endpoint.url)).await;
    let event = PlanUpgraded::new(1, "pro".into());
    bus.notify(event.clone()).await.unwrap();
    drain(&bus).await;

    assert_eq!(endpoint.delivered_ids(), ids(&[event]));
    assert!(letters(&bus).await.is_empty());
}

#[tokio::test]
async fn a_slow_server_times_out_and_the_retry_delivers() {
    let endpoint = Endpoint::start([Reply::Slow(Duration::from_secs(5))]).await;
    let bus = subscribed(
        Segment::new(WRITE_KEY)
            .endpoint(&endpoint.url)
            .timeout(Duration::from_millis(300))
            .batch(batch(10, 3)),
    )
    .await;
    let event = PlanUpgraded::new(1, "pro".into());
    bus.notify(event.clone()).await.unwrap();
    drain(&bus).await;

    assert_eq!(endpoint.seen().len(), 2, "the slow attempt, then the retry");
    assert_eq!(endpoint.seen()[1].ids(), ids(&[event]));
    assert!(letters(&bus).await.is_empty());
}

#[tokio::test]
async fn a_server_that_stays_slow_is_dead_lettered_with_the_timeout() {
    let endpoint = Endpoint::start([
        Reply::Slow(Duration::from_secs(5)),
        Reply::Slow(Duration::from_secs(5)),
    ])
    .await;
    let bus = subscribed(
        Segment::new(WRITE_KEY)
            .endpoint(&endpoint.url)
            .timeout(Duration::from_millis(200))
            .batch(batch(10, 2)),
    )
    .await;
    bus.notify(PlanUpgraded::new(1, "pro".into()))
        .await
        .unwrap();
    drain(&bus).await;

    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 2);
    assert!(
        letters[0].errors[0].contains("did not answer within 200ms"),
        "{:?}",
        letters[0].errors
    );
}

/// The size of a request holding one `PlanUpgraded` call: more than any
/// such call, less than two.
async fn one_call_size() -> usize {
    let probe = Endpoint::start([]).await;
    let bus = subscribed(Segment::new(WRITE_KEY).endpoint(&probe.url)).await;
    bus.notify(PlanUpgraded::new(0, "pro".into()))
        .await
        .unwrap();
    drain(&bus).await;
    probe.seen()[0].size
}

#[tokio::test]
async fn a_retry_of_a_split_batch_resends_only_the_parts_not_delivered() {
    // Three calls per request; the second request fails once.
    let endpoint = Endpoint::start([Reply::Status(200, "{}"), Reply::Status(503, "busy")]).await;
    let one_call = one_call_size().await;
    let bus = subscribed(
        Segment::new(WRITE_KEY)
            .endpoint(&endpoint.url)
            .max_record_bytes(one_call)
            .max_request_bytes(3 * one_call)
            .batch(batch(9, 3)),
    )
    .await;
    let events: Vec<PlanUpgraded> = (0..9).map(|i| PlanUpgraded::new(i, "pro".into())).collect();
    for e in &events {
        bus.notify(e.clone()).await.unwrap();
    }
    drain(&bus).await;

    let seen = endpoint.seen();
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [200, 503, 200, 200]);
    assert_eq!(seen[1].ids(), seen[2].ids(), "the failed part is resent");
    assert_eq!(
        endpoint.delivered_ids(),
        ids(&events),
        "each delivered once"
    );
    let mut sent: HashMap<String, usize> = HashMap::new();
    for id in seen.iter().flat_map(Seen::ids) {
        *sent.entry(id).or_default() += 1;
    }
    for id in &ids(&events[..3]) {
        assert_eq!(sent[id], 1, "the delivered part is not sent again");
    }
    assert!(letters(&bus).await.is_empty());
}

#[tokio::test]
async fn a_split_batch_given_up_on_says_what_had_been_delivered() {
    let endpoint = Endpoint::start([Reply::Status(200, "{}"), Reply::Status(400, "bad")]).await;
    // One call per request.
    let one_call = one_call_size().await;
    let bus = subscribed(
        Segment::new(WRITE_KEY)
            .endpoint(&endpoint.url)
            .max_record_bytes(one_call)
            .max_request_bytes(one_call + 49)
            .batch(batch(2, 3)),
    )
    .await;
    for i in 0..2 {
        bus.notify(PlanUpgraded::new(i, "pro".into()))
            .await
            .unwrap();
    }
    drain(&bus).await;

    assert_eq!(endpoint.seen().len(), 2);
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 2, "the batcher dead-letters a batch whole");
    let error = letters[0].errors.join(": ");
    assert!(
        error.starts_with("1 of the batch's 2 records were delivered"),
        "{error}"
    );
    assert!(error.contains("HTTP 400"), "{error}");
}

/// The settings error a subscription refused to start with.
async fn refused(segment: Segment) -> String {
    let bus = Bus::builder().build().unwrap();
    match bus.subscribe("analytics", segment).start().await {
        Err(SubscribeError::Consumer(err)) => {
            assert!(err.downcast_ref::<SettingsError>().is_some(), "{err}");
            err.to_string()
        }
        Err(other) => panic!("another error: {other}"),
        Ok(_) => panic!("the subscription started"),
    }
}

#[tokio::test]
async fn bad_settings_stop_the_subscription_from_starting() {
    let cases: Vec<(Segment, &str)> = vec![
        (
            Segment::new(WRITE_KEY).endpoint("api.segment.io/v1/batch"),
            "`Segment::endpoint` \"api.segment.io/v1/batch\" is not a valid URL",
        ),
        (
            Segment::new(WRITE_KEY).endpoint("ftp://127.0.0.1/v1/batch"),
            "uses the scheme `ftp`",
        ),
        (Segment::new(""), "write key is empty"),
        (
            Segment::new(WRITE_KEY).batch(batch(0, 1)),
            "`BatchConfig::size` must be at least 1",
        ),
        (
            Segment::new(WRITE_KEY).max_record_bytes(0),
            "`Segment::max_record_bytes` is zero",
        ),
        (
            Segment::new(WRITE_KEY).max_request_bytes(0),
            "`Segment::max_request_bytes` (0) cannot hold one record",
        ),
        (
            Segment::new(WRITE_KEY).timeout(Duration::ZERO),
            "`Segment::timeout` is zero",
        ),
        (
            Segment::new(WRITE_KEY).connect_timeout(Duration::ZERO),
            "`Segment::connect_timeout` is zero",
        ),
        (
            Segment::new(WRITE_KEY).header("bad header", "x"),
            "not a valid HTTP header name",
        ),
        (
            Segment::new(WRITE_KEY).header("X-Team", "a\nb"),
            "not a valid HTTP header value",
        ),
        (
            Segment::new(WRITE_KEY).header("Authorization", "Bearer x"),
            "would replace the header the sender sets itself",
        ),
    ];
    for (segment, expected) in cases {
        let message = refused(segment).await;
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
}

#[test]
fn the_settings_are_a_handle_to_share() {
    fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<Segment>();
}

#[test]
fn the_write_key_stays_out_of_debug_output() {
    let debug = format!("{:?}", Segment::new("very-secret-key"));
    assert!(!debug.contains("very-secret-key"), "{debug}");
}
