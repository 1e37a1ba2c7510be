//! Webhooks to customer endpoints, against real HTTP receivers on loopback:
//! signatures checked by the Standard Webhooks project's own verifier, each
//! endpoint retried on its own, the answers that disable an endpoint or ask
//! for patience, the address guard, the attempts on record, and deliveries
//! that outlive their process.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use eventbus::testing::Recorder;
use eventbus::webhooks::{
    DeliveryState, Endpoint, EndpointSource, Resolver, StaticEndpoints, Webhooks, WebhooksError,
};
use eventbus::{BoxError, Bus, Retry, Webhook, Webhookable, event, json, register};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_QmFzZTY0IGlzIG5vdCBlbmNyeXB0aW9uIGF0IGFsbA==";

#[event]
pub struct InvoicePaid {
    pub account: String,
    pub invoice: u64,
}

#[register]
impl Webhookable for InvoicePaid {
    fn webhook(&self) -> Webhook {
        Webhook::new("invoice.paid", json!({ "invoice": self.invoice })).for_account(&self.account)
    }
}

#[event]
pub struct UserCreated {
    pub user: u64,
}

#[register]
impl Webhookable for UserCreated {
    fn webhook(&self) -> Webhook {
        Webhook::new("user.created", json!({ "user": self.user }))
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the receiver answers to the `n`th request (from 0) on a path.
type Script = Arc<dyn Fn(&str, usize) -> Reply + Send + Sync>;

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A real HTTP server on 127.0.0.1 that records every request and answers
/// as its script says.
#[derive(Clone)]
struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    script: Script,
}

impl Receiver {
    async fn start(script: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            port: listener.local_addr().unwrap().port(),
            received: Arc::default(),
            counts: Arc::default(),
            script: Arc::new(script),
        };
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn on(&self, path: &str) -> Vec<Received> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

async fn answer(State(receiver): State<Receiver>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap();
    let n = {
        let mut counts = receiver.counts.lock().unwrap();
        let n = counts.entry(path.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    let reply = (receiver.script)(&path, n);
    receiver.received.lock().unwrap().push(Received {
        path,
        headers,
        body,
    });
    tokio::time::sleep(reply.delay).await;
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// Answers 200 everywhere.
fn ok(_: &str, _: usize) -> Reply {
    Reply::status(200)
}

fn quick() -> Vec<Duration> {
    vec![
        Duration::ZERO,
        Duration::from_millis(30),
        Duration::from_millis(30),
    ]
}

/// Webhooks allowed to reach the loopback receivers.
fn webhooks(endpoints: &StaticEndpoints) -> eventbus::webhooks::WebhooksBuilder {
    Webhooks::builder(endpoints.clone())
        .in_memory()
        .allow("127.0.0.1/32".parse().unwrap())
        .schedule(quick())
        .timeout(Duration::from_secs(5))
}

async fn bus_with(webhooks: &Webhooks) -> Bus {
    let bus = Bus::builder().build().unwrap();
    bus.subscribe("webhooks", webhooks.consumer())
        .retry(Retry::exponential(Duration::from_millis(5)).max_attempts(2))
        .start()
        .await
        .unwrap();
    bus
}

/// Waits for `what` to hold, for at most 10 seconds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 10 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn verify(secret: &str, request: &Received) -> Result<(), standardwebhooks::WebhookError> {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &request.headers)
}

#[tokio::test]
async fn each_subscribed_endpoint_gets_one_signed_request() {
    let receiver = Receiver::start(ok).await;
    let endpoints = StaticEndpoints::new();
    let add = |id: &str, path: &str| Endpoint::new(id, &receiver.url(path), SECRET).unwrap();
    endpoints.insert(add("all", "/all"));
    endpoints.insert(
        add("invoices", "/invoices")
            .topics(["invoice.*"])
            .account("acct_1"),
    );
    endpoints.insert(add("users", "/users").topics(["user.created"]));
    endpoints.insert(add("other", "/other").account("acct_2"));
    endpoints.insert(add("off", "/off").disabled());
    endpoints.insert(
        add("rotating", "/rotating")
            .also_signed_with(NEW_SECRET)
            .unwrap(),
    );
    let webhooks = webhooks(&endpoints).build().unwrap();
    let bus = bus_with(&webhooks).await;

    let paid = InvoicePaid::new("acct_1".into(), 42);
    let id = paid.meta.id;
    let occurred_at = paid.meta.occurred_at;
    bus.notify(paid).await.unwrap();
    bus.drain().await.unwrap();
    webhooks.idle().await.unwrap();

    for path in ["/all", "/invoices", "/rotating"] {
        let got = receiver.on(path);
        assert_eq!(got.len(), 1, "{path}: {got:?}");
        let request = &got[0];
        verify(SECRET, request).unwrap_or_else(|err| panic!("{path}: {err:?}"));
        assert_eq!(
            request.headers["webhook-id"],
            format!("msg_{}", id.simple()).as_str()
        );
        assert_eq!(request.headers["content-type"], "application/json");
        let body = request.json();
        assert_eq!(body["type"], "invoice.paid");
        assert_eq!(body["data"], json!({ "invoice": 42 }));
        let stamped: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(body["timestamp"].clone()).unwrap();
        assert_eq!(stamped, occurred_at);
    }
    // A rotation: the receiver verifies with either secret.
    let rotating = &receiver.on("/rotating")[0];
    verify(NEW_SECRET, rotating).unwrap();
    let signature = rotating.headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    // A wrong secret does not verify: the check is real.
    assert!(verify("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", rotating).is_err());

    for path in ["/users", "/other", "/off"] {
        assert!(receiver.on(path).is_empty(), "{path} must get nothing");
    }
    let deliveries = webhooks.deliveries_of_event(id).await.unwrap();
    assert_eq!(deliveries.len(), 3);
    assert!(
        deliveries
            .iter()
            .all(|d| d.state == DeliveryState::Delivered)
    );
    assert!(bus.shutdown().await.is_clean());
}

#[test]
fn signatures_match_the_spec_and_its_reference_signer() {
    // The test vector of the Standard Webhooks spec.
    let signature = eventbus::webhooks::sign(
        SECRET,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        br#"{"test": 2432232314}"#,
    )
    .unwrap();
    assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    // The project's own signer agrees on other inputs too.
    let reference = standardwebhooks::Webhook::new(NEW_SECRET).unwrap();
    for (id, ts, body) in [
        ("msg_1", 1, "{}"),
        ("msg_2", 1_900_000_000, "{\"a\":\"ü\"}"),
    ] {
        assert_eq!(
            eventbus::webhooks::sign(NEW_SECRET, id, ts, body.as_bytes()).unwrap(),
            reference.sign(id, ts, body.as_bytes()).unwrap()
        );
    }
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_alone() {
    let receiver = Receiver::start(|path, n| match (path, n) {
        ("/flaky", 0 | 1) => Reply::status(500).body("database is down"),
        _ => Reply::status(200).body("thanks"),
    })
    .await;
    let endpoints = StaticEndpoints::new();
    for (id, path) in [("flaky", "/flaky"), ("healthy", "/healthy")] {
        endpoints.insert(Endpoint::new(id, &receiver.url(path), SECRET).unwrap());
    }
    let webhooks = webhooks(&endpoints).build().unwrap();
    let bus = bus_with(&webhooks).await;
    let event = UserCreated::new(1);
    let id = event.meta.id;
    bus.notify(event).await.unwrap();
    bus.drain().await.unwrap();
    until("the flaky endpoint's third attempt", || {
        receiver.on("/flaky").len() == 3
    })
    .await;
    webhooks.idle().await.unwrap();

    assert_eq!(receiver.on("/healthy").len(), 1, "never repeated");
    let ids: Vec<_> = receiver
        .on("/flaky")
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "one message id: {ids:?}");

    let attempts = webhooks.attempts_of_endpoint("flaky", 0, 10).await.unwrap();
    let statuses: Vec<_> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)]);
    assert_eq!(attempts[0].response.as_deref(), Some("database is down"));
    assert_eq!(
        attempts[0].error.as_deref(),
        Some("the endpoint answered 500")
    );
    assert!(attempts[2].error.is_none());
    assert_eq!(webhooks.attempts_of_event(id).await.unwrap().len(), 4);
    let deliveries = webhooks.deliveries_of_event(id).await.unwrap();
    assert!(
        deliveries
            .iter()
            .all(|d| d.state == DeliveryState::Delivered)
    );
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test]
async fn a_slow_endpoint_does_not_hold_up_the_others() {
    let receiver = Receiver::start(|path, _| match path {
        "/slow" => Reply::status(200).after(Duration::from_secs(3)),
        _ => Reply::status(200),
    })
    .await;
    let endpoints = StaticEndpoints::new();
    for (id, path) in [("slow", "/slow"), ("fast", "/fast")] {
        endpoints.insert(Endpoint::new(id, &receiver.url(path), SECRET).unwrap());
    }
    let webhooks = webhooks(&endpoints)
        .per_endpoint(1)
        .concurrency(4)
        .build()
        .unwrap();
    let bus = bus_with(&webhooks).await;
    for user in 0..20 {
        bus.notify(UserCreated::new(user)).await.unwrap();
    }
    until("every event at the fast endpoint", || {
        receiver.on("/fast").len() == 20
    })
    .await;
    assert!(
        receiver.on("/slow").len() <= 2,
        "the slow endpoint had one attempt in flight at a time"
    );
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_says_so_on_the_bus() {
    let receiver = Receiver::start(|path, _| match path {
        "/gone" => Reply::status(410),
        _ => Reply::status(200),
    })
    .await;
    let endpoints = StaticEndpoints::new();
    for (id, path) in [("gone", "/gone"), ("kept", "/kept")] {
        endpoints.insert(Endpoint::new(id, &receiver.url(path), SECRET).unwrap());
    }
    let bus = Bus::builder().build().unwrap();
    let disabled = Recorder::new();
    bus.subscribe("disabled", disabled.clone())
        .filter(
            eventbus::Filter::all()
                .event("webhook.endpoint_disabled")
                .unwrap(),
        )
        .start()
        .await
        .unwrap();
    let webhooks = webhooks(&endpoints)
        .announce_to(bus.clone())
        .build()
        .unwrap();
    bus.subscribe("webhooks", webhooks.consumer())
        .start()
        .await
        .unwrap();

    bus.notify(UserCreated::new(1)).await.unwrap();
    until("the endpoint disabled", || {
        !endpoints.get("gone").unwrap().enabled
    })
    .await;
    until("the announcement", || disabled.len() == 1).await;
    let announced = disabled.events()[0].to_json().unwrap();
    assert_eq!(announced["endpoint"], "gone");
    assert!(
        announced["reason"].as_str().unwrap().contains("410"),
        "{announced}"
    );
    assert_eq!(receiver.on("/gone").len(), 1, "a 410 is not retried");

    bus.notify(UserCreated::new(2)).await.unwrap();
    until("the second event at the kept endpoint", || {
        receiver.on("/kept").len() == 2
    })
    .await;
    webhooks.idle().await.unwrap();
    assert_eq!(
        receiver.on("/gone").len(),
        1,
        "a disabled endpoint gets nothing"
    );
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test]
async fn an_endpoint_failing_for_too_long_is_disabled() {
    let receiver = Receiver::start(|_, _| Reply::status(503)).await;
    let endpoints = StaticEndpoints::new();
    endpoints.insert(Endpoint::new("down", &receiver.url("/down"), SECRET).unwrap());
    let bus = Bus::builder().build().unwrap();
    let disabled = Recorder::new();
    bus.subscribe("disabled", disabled.clone())
        .filter(
            eventbus::Filter::all()
                .event("webhook.endpoint_disabled")
                .unwrap(),
        )
        .start()
        .await
        .unwrap();
    let webhooks = webhooks(&endpoints)
        .schedule([
            Duration::ZERO,
            Duration::from_millis(50),
            Duration::from_secs(60),
        ])
        .disable_after(Duration::from_millis(20))
        .announce_to(bus.clone())
        .build()
        .unwrap();
    bus.subscribe("webhooks", webhooks.consumer())
        .start()
        .await
        .unwrap();
    bus.notify(UserCreated::new(1)).await.unwrap();
    until("the announcement", || disabled.len() == 1).await;
    assert!(!endpoints.get("down").unwrap().enabled);
    let announced = disabled.events()[0].to_json().unwrap();
    assert!(
        announced["reason"]
            .as_str()
            .unwrap()
            .contains("failing since"),
        "{announced}"
    );
    assert!(announced["failing_since"].is_string(), "{announced}");
    assert_eq!(receiver.on("/down").len(), 2);
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test]
async fn retry_after_is_honoured_and_redirects_are_not_followed() {
    let receiver = Receiver::start(|path, n| match (path, n) {
        ("/busy", 0) => Reply::status(429).header("retry-after", "1"),
        ("/moved", _) => Reply::status(308).header("location", "/elsewhere"),
        _ => Reply::status(200),
    })
    .await;
    let endpoints = StaticEndpoints::new();
    for (id, path) in [("busy", "/busy"), ("moved", "/moved")] {
        endpoints.insert(Endpoint::new(id, &receiver.url(path), SECRET).unwrap());
    }
    let webhooks = webhooks(&endpoints)
        .schedule([Duration::ZERO, Duration::from_millis(10)])
        .build()
        .unwrap();
    let bus = bus_with(&webhooks).await;
    bus.notify(UserCreated::new(1)).await.unwrap();
    until("the second attempt at the busy endpoint", || {
        receiver.on("/busy").len() == 2
    })
    .await;
    webhooks.idle().await.unwrap();

    let busy = webhooks.attempts_of_endpoint("busy", 0, 10).await.unwrap();
    let waited = busy[1].at - busy[0].at;
    assert!(
        waited >= chrono::Duration::milliseconds(950),
        "Retry-After: 1 asked for a second; waited {waited}"
    );
    assert!(busy[0].error.as_deref().unwrap().contains("retry after 1s"));

    assert!(
        receiver.on("/elsewhere").is_empty(),
        "redirect not followed"
    );
    let moved = webhooks.attempts_of_endpoint("moved", 0, 10).await.unwrap();
    assert_eq!(moved.len(), 2, "both attempts of the schedule");
    assert!(
        moved[0]
            .error
            .as_deref()
            .unwrap()
            .contains("redirects are not followed")
    );
    let failed = webhooks
        .deliveries(Some("moved"), Some(DeliveryState::Failed), 0, 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert!(bus.shutdown().await.is_clean());
}

/// Resolves every name to one loopback address, as a name a customer
/// pointed at the service's own network would.
struct PointsAt(IpAddr);

#[async_trait::async_trait]
impl Resolver for PointsAt {
    async fn resolve(&self, _host: &str) -> std::io::Result<Vec<IpAddr>> {
        Ok(vec![self.0])
    }
}

#[tokio::test]
async fn the_guard_refuses_private_addresses_before_any_connect() {
    // A bare listener that counts connections: nothing may reach it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connects = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connects);
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counted.fetch_add(1, SeqCst);
        }
    });
    let endpoints = StaticEndpoints::new();
    for (id, url) in [
        ("by-name", format!("http://internal.test:{port}/")),
        ("literal", format!("http://127.0.0.1:{port}/")),
        ("mapped", format!("http://[::ffff:127.0.0.1]:{port}/")),
    ] {
        endpoints.insert(Endpoint::new(id, &url, SECRET).unwrap());
    }
    // No allowlist: the guard as it ships.
    let webhooks = Webhooks::builder(endpoints.clone())
        .in_memory()
        .resolver(PointsAt("127.0.0.1".parse().unwrap()))
        .schedule([Duration::ZERO])
        .build()
        .unwrap();
    let bus = bus_with(&webhooks).await;
    let event = UserCreated::new(1);
    let id = event.meta.id;
    bus.notify(event).await.unwrap();
    bus.drain().await.unwrap();
    webhooks.idle().await.unwrap();

    let attempts = webhooks.attempts_of_event(id).await.unwrap();
    assert_eq!(attempts.len(), 3);
    for attempt in &attempts {
        let error = attempt.error.as_deref().unwrap();
        assert!(
            error.contains("refused to connect") && error.contains("127.0.0.1"),
            "{}: {error}",
            attempt.endpoint
        );
        assert_eq!(attempt.status, None);
    }
    let by_name = attempts.iter().find(|a| a.endpoint == "by-name").unwrap();
    assert!(
        by_name.error.as_deref().unwrap().contains("internal.test"),
        "{by_name:?}"
    );
    assert_eq!(connects.load(SeqCst), 0, "no connection was made");
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test]
async fn a_failed_delivery_can_be_resent_by_hand() {
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let is_fixed = Arc::clone(&fixed);
    let long_error = "x".repeat(5000);
    let receiver = Receiver::start(move |_, _| {
        if is_fixed.load(SeqCst) {
            Reply::status(204)
        } else {
            Reply::status(500).body(long_error.clone())
        }
    })
    .await;
    let endpoints = StaticEndpoints::new();
    endpoints.insert(Endpoint::new("ep", &receiver.url("/hook"), SECRET).unwrap());
    let webhooks = webhooks(&endpoints)
        .schedule([Duration::ZERO])
        .build()
        .unwrap();
    let bus = bus_with(&webhooks).await;
    bus.notify(UserCreated::new(1)).await.unwrap();
    bus.drain().await.unwrap();
    webhooks.idle().await.unwrap();

    let failed = webhooks
        .deliveries(None, Some(DeliveryState::Failed), 0, 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    let attempts = webhooks.attempts_of_delivery(failed[0].id).await.unwrap();
    assert_eq!(
        attempts[0].response.as_ref().map(String::len),
        Some(1024),
        "a bounded snippet"
    );

    fixed.store(true, SeqCst);
    webhooks.resend(failed[0].id).await.unwrap();
    until("the resent request", || receiver.on("/hook").len() == 2).await;
    webhooks.idle().await.unwrap();
    let attempts = webhooks.attempts_of_delivery(failed[0].id).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert!(attempts[1].manual && !attempts[0].manual);
    assert_eq!(attempts[1].status, Some(204));
    let delivery = webhooks.deliveries(None, None, 0, 10).await.unwrap();
    assert_eq!(delivery[0].state, DeliveryState::Delivered);

    assert!(matches!(
        webhooks.resend(999).await,
        Err(WebhooksError::NoDelivery(999))
    ));
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test]
async fn deliveries_outlive_their_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("webhooks.db");
    // The first run: the endpoint never answers, and the process stops
    // mid-attempt, and with a retry still to come at another.
    let hanging = Receiver::start(|_, _| Reply::status(200).after(Duration::from_secs(60))).await;
    let failing = Receiver::start(|_, _| Reply::status(500)).await;
    let endpoints = StaticEndpoints::new();
    endpoints.insert(Endpoint::new("hanging", &hanging.url("/"), SECRET).unwrap());
    endpoints.insert(Endpoint::new("failing", &failing.url("/"), SECRET).unwrap());
    {
        let webhooks = webhooks(&endpoints)
            .store_path(&store)
            .schedule([Duration::ZERO, Duration::from_millis(300)])
            .build()
            .unwrap();
        let bus = bus_with(&webhooks).await;
        bus.notify(UserCreated::new(1)).await.unwrap();
        until("both first attempts", || {
            hanging.on("/").len() == 1 && failing.on("/").len() == 1
        })
        .await;
        assert!(bus.shutdown().await.is_clean());
    }
    // The second run, with both endpoints fixed and no new event.
    let fixed = Receiver::start(ok).await;
    endpoints.insert(Endpoint::new("hanging", &fixed.url("/hanging"), SECRET).unwrap());
    endpoints.insert(Endpoint::new("failing", &fixed.url("/failing"), SECRET).unwrap());
    let webhooks = webhooks(&endpoints)
        .store_path(&store)
        .schedule([Duration::ZERO, Duration::from_millis(300)])
        .build()
        .unwrap();
    let bus = bus_with(&webhooks).await;
    until("both deliveries", || {
        fixed.on("/hanging").len() == 1 && fixed.on("/failing").len() == 1
    })
    .await;
    webhooks.idle().await.unwrap();
    let delivered = webhooks
        .deliveries(None, Some(DeliveryState::Delivered), 0, 10)
        .await
        .unwrap();
    assert_eq!(delivered.len(), 2);
    let failing = delivered.iter().find(|d| d.endpoint == "failing").unwrap();
    assert_eq!(failing.attempts, 2, "its schedule went on where it was");
    assert!(bus.shutdown().await.is_clean());
}

/// A source that cannot be read.
struct Unreachable;

#[async_trait::async_trait]
impl EndpointSource for Unreachable {
    async fn endpoints(&self, _: &str, _: Option<&str>) -> Result<Vec<Endpoint>, BoxError> {
        Err("connection to the endpoints table refused".into())
    }

    async fn endpoint(&self, _: &str) -> Result<Option<Endpoint>, BoxError> {
        Err("connection to the endpoints table refused".into())
    }

    async fn disable(&self, _: &str, _: &str) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test]
async fn an_unreadable_endpoint_source_fails_the_event_and_loses_it_not() {
    let webhooks = Webhooks::builder(Unreachable).in_memory().build().unwrap();
    let bus = bus_with(&webhooks).await;
    bus.notify(UserCreated::new(1)).await.unwrap();
    bus.drain().await.unwrap();
    let letters = bus.dead_letters().list_for("webhooks").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 2);
    assert_eq!(
        letters[0].errors,
        ["connection to the endpoints table refused"]
    );
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test]
async fn impossible_settings_are_refused_with_the_fix() {
    let endpoints = StaticEndpoints::new();
    let err = Webhooks::builder(endpoints.clone()).build().unwrap_err();
    assert!(
        err.to_string().contains("`store_path(file)`") && err.to_string().contains("`in_memory()`"),
        "{err}"
    );
    let err = Webhooks::builder(endpoints.clone())
        .in_memory()
        .schedule([])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("at least one delay"), "{err}");
    let err = Webhooks::builder(endpoints.clone())
        .in_memory()
        .schedule([Duration::ZERO, Duration::MAX])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("over the 30 days"), "{err}");
    let err = Webhooks::builder(endpoints.clone())
        .in_memory()
        .per_endpoint(0)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "webhook setting `per_endpoint` must be above zero"
    );
    let err = Webhooks::builder(endpoints.clone())
        .in_memory()
        .concurrency(4)
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("`per_endpoint` (4) is over half of `concurrency` (4)"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, "this is not a database, it is a shopping list").unwrap();
    let err = Webhooks::builder(endpoints.clone())
        .store_path(&garbage)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, WebhooksError::Store { .. }),
        "{err}: {:?}",
        std::error::Error::source(&err)
    );
    assert!(err.to_string().contains("garbage.db"), "{err}");

    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE orders (id INTEGER)")
        .unwrap();
    let err = Webhooks::builder(endpoints)
        .store_path(&other)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("file of their own"), "{err}");
}

/// A source whose lookups panic a few times, then work.
struct PanicsFirst {
    inner: StaticEndpoints,
    panics: AtomicUsize,
}

#[async_trait::async_trait]
impl EndpointSource for PanicsFirst {
    async fn endpoints(
        &self,
        topic: &str,
        account: Option<&str>,
    ) -> Result<Vec<Endpoint>, BoxError> {
        self.inner.endpoints(topic, account).await
    }

    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, BoxError> {
        if self.panics.fetch_sub(1, SeqCst) > 0 {
            panic!("endpoint cache corrupted");
        }
        self.inner.endpoint(id).await
    }

    async fn disable(&self, id: &str, reason: &str) -> Result<(), BoxError> {
        self.inner.disable(id, reason).await
    }
}

#[tokio::test]
async fn a_panicking_attempt_is_a_failed_attempt_and_the_schedule_goes_on() {
    let receiver = Receiver::start(ok).await;
    let inner = StaticEndpoints::new();
    inner.insert(Endpoint::new("ep", &receiver.url("/hook"), SECRET).unwrap());
    let source = PanicsFirst {
        inner,
        panics: AtomicUsize::new(2),
    };
    let webhooks = Webhooks::builder(source)
        .in_memory()
        .allow("127.0.0.1/32".parse().unwrap())
        .schedule([
            Duration::from_millis(150),
            Duration::from_millis(10),
            Duration::from_millis(10),
        ])
        .build()
        .unwrap();
    let bus = bus_with(&webhooks).await;
    let event = UserCreated::new(1);
    let (id, occurred_at) = (event.meta.id, event.meta.occurred_at);
    bus.notify(event).await.unwrap();
    until("the request", || receiver.on("/hook").len() == 1).await;
    webhooks.idle().await.unwrap();

    let attempts = webhooks.attempts_of_event(id).await.unwrap();
    let errors: Vec<_> = attempts.iter().map(|a| a.error.clone()).collect();
    assert_eq!(
        errors,
        [
            Some("panicked: endpoint cache corrupted".to_owned()),
            Some("panicked: endpoint cache corrupted".to_owned()),
            None
        ]
    );
    // The first delay of the schedule comes before the first attempt.
    assert!(
        attempts[0].at - occurred_at >= chrono::Duration::milliseconds(130),
        "first attempt {} after the event",
        attempts[0].at - occurred_at
    );
    assert!(matches!(
        webhooks.deliveries_of_event(id).await.unwrap()[0].state,
        DeliveryState::Delivered
    ));
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test]
async fn pruning_deletes_finished_deliveries_and_their_attempts() {
    let receiver = Receiver::start(|path, _| match path {
        "/down" => Reply::status(500),
        _ => Reply::status(200),
    })
    .await;
    let endpoints = StaticEndpoints::new();
    endpoints.insert(Endpoint::new("up", &receiver.url("/up"), SECRET).unwrap());
    endpoints.insert(Endpoint::new("down", &receiver.url("/down"), SECRET).unwrap());
    let webhooks = webhooks(&endpoints)
        .schedule([Duration::ZERO, Duration::from_secs(3600)])
        .build()
        .unwrap();
    let bus = bus_with(&webhooks).await;
    bus.notify(UserCreated::new(1)).await.unwrap();
    until("both first attempts", || {
        receiver.on("/up").len() == 1 && receiver.on("/down").len() == 1
    })
    .await;
    webhooks.idle().await.unwrap();

    assert_eq!(
        webhooks.prune(Duration::from_secs(60)).await.unwrap(),
        0,
        "too recent"
    );
    assert_eq!(
        webhooks.prune(Duration::ZERO).await.unwrap(),
        1,
        "the delivered one"
    );
    let left = webhooks.deliveries(None, None, 0, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].endpoint.as_str(), left[0].state),
        ("down", DeliveryState::Pending)
    );
    assert!(
        webhooks
            .attempts_of_endpoint("up", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        webhooks
            .attempts_of_endpoint("down", 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test]
async fn a_full_store_fails_the_event_and_loses_it_not() {
    let receiver = Receiver::start(ok).await;
    let endpoints = StaticEndpoints::new();
    endpoints.insert(Endpoint::new("up", &receiver.url("/up"), SECRET).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let webhooks = webhooks(&endpoints)
        .store_path(dir.path().join("webhooks.db"))
        .max_store_size(128 * 1024)
        .schedule([Duration::ZERO])
        .build()
        .unwrap();
    let bus = bus_with(&webhooks).await;
    // Delivered deliveries stay on record until pruned, so the store fills.
    let mut accepted = Vec::new();
    for user in 0..20_000 {
        let event = UserCreated::new(user);
        accepted.push(event.meta.id);
        bus.notify(event).await.unwrap();
        if user % 10 == 9 {
            bus.drain().await.unwrap();
            if !bus
                .dead_letters()
                .list_for("webhooks")
                .await
                .unwrap()
                .is_empty()
            {
                break;
            }
        }
    }
    bus.drain().await.unwrap();
    let letters = bus.dead_letters().list_for("webhooks").await.unwrap();
    assert!(!letters.is_empty(), "the store never filled up");
    assert!(accepted.len() > 100, "{} accepted", accepted.len());
    assert_eq!(letters[0].attempts, 2);
    assert!(
        letters[0]
            .errors
            .iter()
            .any(|e| e.contains("database or disk is full")),
        "{:?}",
        letters[0].errors
    );

    // Every accepted event has its delivery on record or is a dead letter.
    let lettered: Vec<_> = letters.iter().map(|l| l.event.meta().id).collect();
    for id in &accepted {
        let on_record = !webhooks.deliveries_of_event(*id).await.unwrap().is_empty();
        assert!(
            on_record != lettered.contains(id),
            "event {id}: on record {on_record}, dead-lettered {}",
            lettered.contains(id)
        );
    }

    // Room made (attempts that could not be recorded are recorded now),
    // the letters replayed: each event reaches the endpoint once.
    assert!(webhooks.prune(Duration::ZERO).await.unwrap() > 0);
    webhooks.idle().await.unwrap();
    for letter in &letters {
        bus.dead_letters().replay(letter.id).await.unwrap();
    }
    bus.drain().await.unwrap();
    webhooks.idle().await.unwrap();
    assert!(
        bus.dead_letters()
            .list_for("webhooks")
            .await
            .unwrap()
            .is_empty()
    );
    let received: Vec<u64> = receiver
        .on("/up")
        .iter()
        .map(|r| r.json()["data"]["user"].as_u64().unwrap())
        .collect();
    assert_eq!(received.len(), accepted.len(), "each event once");
    let mut unique = received.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), accepted.len());
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test]
async fn a_store_cap_below_its_tables_is_refused_with_the_fix() {
    let err = Webhooks::builder(StaticEndpoints::new())
        .in_memory()
        .max_store_size(4096)
        .build()
        .unwrap_err();
    assert!(matches!(err, WebhooksError::StoreSize(4096)));
    assert_eq!(
        err.to_string(),
        "webhook setting `max_store_size` of 4096 bytes is below the 65536 the store's tables need; raise it, or leave it unset for no cap"
    );
}
