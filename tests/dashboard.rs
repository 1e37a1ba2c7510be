//! The dashboard's routes, served by a real HTTP server on loopback and
//! asked with a real client: the pages, pause and resume, dead letters
//! read, retried and discarded (one by one and by filter, with a
//! confirmation), the map of side effects, the live stream, and the
//! guards: read-only, the service's own check, the form token, and
//! requests from other sites.

use eventbus::dashboard::Dashboard;
use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, Retry, Track, Trackable, event, register};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

#[event]
pub struct OrderPlaced {
    pub order: u64,
    pub note: String,
}

#[register]
impl Trackable for OrderPlaced {
    fn track(&self) -> Track {
        Track::new(self, self.order)
    }
}

#[event]
pub struct OrderShipped {
    pub order: u64,
}

/// Fails every event while `broken`, then records them.
#[derive(Clone, Default)]
struct Payments {
    broken: Arc<AtomicBool>,
    handled: Recorder,
}

impl Consumer for Payments {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        if self.broken.load(SeqCst) {
            return Err(format!("card declined for {}", event.name()).into());
        }
        self.handled.handle(event).await
    }
}

/// A bus with a failing `payments` subscription and a healthy `audit` one,
/// the dashboard mounted at `/ops` on a real server.
struct Fixture {
    bus: Bus,
    payments: Payments,
    url: String,
    client: reqwest::Client,
}

async fn fixture(dashboard: impl FnOnce(Dashboard) -> Dashboard) -> Fixture {
    let bus = Bus::builder().build().unwrap();
    let payments = Payments::default();
    payments.broken.store(true, SeqCst);
    bus.subscribe("payments", payments.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    bus.subscribe("audit", Recorder::new())
        .events(["order.*"])
        .unwrap()
        .start()
        .await
        .unwrap();
    let app = axum::Router::new().nest("/ops", dashboard(Dashboard::new(bus.clone())).router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ops", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Fixture {
        bus,
        payments,
        url,
        client,
    }
}

/// The id up to which a confirmation page counted.
fn upto(confirm: &str) -> &str {
    let at = confirm.find("name=\"upto\" value=\"").unwrap() + 19;
    &confirm[at..at + confirm[at..].find('"').unwrap()]
}

impl Fixture {
    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Posts a form; the status and the `Location` header.
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, if location.is_empty() { text } else { location })
    }

    /// The form token the pages carry.
    async fn token(&self) -> String {
        let (_, page) = self.get("").await;
        let at = page.find("name=\"token\" value=\"").expect("a form token") + 20;
        page[at..at + 32].to_owned()
    }

    /// `n` orders that the failing payments subscription dead-letters.
    async fn failed_orders(&self, n: u64) {
        for order in 0..n {
            self.bus
                .notify(OrderPlaced::new(order, "bulk".into()))
                .await
                .unwrap();
        }
        self.bus.drain().await.unwrap();
    }

    async fn dead_letter_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .bus
            .dead_letters()
            .list()
            .await
            .unwrap()
            .iter()
            .map(|l| l.id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn the_subscriptions_page_shows_each_and_pauses_and_resumes_it() {
    let f = fixture(|d| d).await;
    // Mounted at `/ops`: the page is `/ops` (axum's nest), its links
    // relative to `/ops/`.
    let (status, page) = f.get("").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<base href=\"/ops/\">"),
        "links resolve under the mount"
    );
    for name in ["payments", "audit"] {
        assert!(page.contains(&format!("data-row=\"{name}\"")), "{name}");
    }
    assert!(page.contains("order.*"), "the filter is shown");
    let token = f.token().await;

    let (status, location) = f
        .post("/subscriptions/audit/pause", &[("token", &token)])
        .await;
    assert_eq!(status, 303);
    assert!(location.starts_with("/ops?notice="), "{location}");
    let audit = |bus: &Bus| bus.stats().into_iter().find(|s| s.name == "audit").unwrap();
    assert!(audit(&f.bus).paused);
    let (_, page) = f.get("").await;
    assert!(page.contains("Resume"));

    f.bus.notify(OrderShipped::new(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(audit(&f.bus).lag, 1, "paused: the event waits");

    let (status, _) = f
        .post("/subscriptions/audit/resume", &[("token", &token)])
        .await;
    assert_eq!(status, 303);
    f.bus.drain().await.unwrap_or(());
    assert!(!audit(&f.bus).paused);
    assert_eq!(audit(&f.bus).lag, 0);

    let (status, location) = f
        .post("/subscriptions/nobody/pause", &[("token", &token)])
        .await;
    assert_eq!(status, 303);
    assert!(
        location.contains("no%20such%20subscription") || location.contains("no+such+subscription"),
        "{location}"
    );
}

#[tokio::test]
async fn actions_need_the_pages_token_and_the_same_site() {
    let f = fixture(|d| d).await;
    let (status, text) = f.post("/subscriptions/audit/pause", &[]).await;
    assert_eq!(status, 403, "{text}");
    let (status, _) = f
        .post("/subscriptions/audit/pause", &[("token", "guessed")])
        .await;
    assert_eq!(status, 403);
    let token = f.token().await;
    let response = f
        .client
        .post(format!("{}/subscriptions/audit/pause", f.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert!(
        !f.bus.stats().iter().any(|s| s.paused),
        "nothing was paused"
    );
}

#[tokio::test]
async fn read_only_shows_everything_and_changes_nothing() {
    let f = fixture(Dashboard::read_only).await;
    f.bus.notify(OrderShipped::new(1)).await.unwrap();
    f.bus.drain().await.unwrap();
    let (_, page) = f.get("").await;
    assert!(!page.contains("<button"), "no buttons");
    let (_, letters) = f.get("/dead-letters").await;
    assert!(letters.contains("card declined"));
    assert!(!letters.contains("Retry selected"));
    let id = f.dead_letter_ids().await[0].to_string();
    let (status, _) = f
        .post("/dead-letters/act", &[("action", "discard"), ("id", &id)])
        .await;
    assert_eq!(status, 403);
    assert_eq!(f.dead_letter_ids().await.len(), 1);
}

#[tokio::test]
async fn the_services_own_check_guards_every_route() {
    let f = fixture(|d| d.authorize(|request| request.headers.contains_key("x-operator"))).await;
    for path in ["", "/dead-letters", "/map", "/stream"] {
        let (status, _) = f.get(path).await;
        assert_eq!(status, 403, "{path}");
    }
    let response = f
        .client
        .get(&f.url)
        .header("x-operator", "ada")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn dead_letters_are_listed_filtered_shown_retried_and_discarded() {
    let f = fixture(|d| d).await;
    for order in 1..=3 {
        f.bus
            .notify(OrderPlaced::new(
                order,
                format!("<script>alert({order})</script>"),
            ))
            .await
            .unwrap();
    }
    f.bus.notify(OrderShipped::new(9)).await.unwrap();
    f.bus.drain().await.unwrap();
    let ids = f.dead_letter_ids().await;
    assert_eq!(ids.len(), 4);

    let (_, all) = f.get("/dead-letters").await;
    assert_eq!(all.matches("data-letter=").count(), 4);
    let (_, placed) = f.get("/dead-letters?name=order.placed").await;
    assert_eq!(placed.matches("data-letter=").count(), 3);
    let (_, by_error) = f.get("/dead-letters?error=ORDER.SHIPPED").await;
    assert_eq!(
        by_error.matches("data-letter=").count(),
        1,
        "error text, any case"
    );
    let (_, prefix) = f
        .get("/dead-letters?name=order.*&subscription=payments")
        .await;
    assert_eq!(prefix.matches("data-letter=").count(), 4);

    let (status, detail) = f.get(&format!("/dead-letters/{}", ids[0])).await;
    assert_eq!(status, 200);
    assert!(detail.contains("card declined for order.placed"));
    assert!(detail.contains("Attempts"));
    assert!(
        detail.contains("&lt;script&gt;alert(1)&lt;/script&gt;")
            && !detail.contains("<script>alert"),
        "the payload is escaped"
    );
    let (status, _) = f.get("/dead-letters/999999").await;
    assert_eq!(status, 404);

    let token = f.token().await;
    // Retry one, once the consumer works.
    f.payments.broken.store(false, SeqCst);
    let first = ids[0].to_string();
    let (status, location) = f
        .post(
            "/dead-letters/act",
            &[("token", &token), ("action", "retry"), ("id", &first)],
        )
        .await;
    assert_eq!(status, 303);
    assert!(
        location.contains("1%20dead%20letter") || location.contains("1+dead+letter"),
        "{location}"
    );
    f.bus.drain().await.unwrap();
    assert_eq!(f.payments.handled.len(), 1);

    // Discard one.
    let second = ids[1].to_string();
    f.post(
        "/dead-letters/act",
        &[("token", &token), ("action", "discard"), ("id", &second)],
    )
    .await;
    assert_eq!(f.dead_letter_ids().await, [ids[2], ids[3]]);

    // Retry all that match a filter: asked first, with the count.
    let (status, confirm) = f
        .post(
            "/dead-letters/act",
            &[
                ("token", &token),
                ("action", "retry-all"),
                ("name", "order.placed"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert!(confirm.contains("Retry 1 dead letter(s)?"), "{confirm}");
    assert_eq!(f.dead_letter_ids().await.len(), 2, "nothing yet");
    let upto = upto(&confirm);
    // A letter that arrives while the operator reads the count is not
    // part of what they confirmed.
    f.payments.broken.store(true, SeqCst);
    f.bus
        .notify(OrderPlaced::new(4, "late".into()))
        .await
        .unwrap();
    f.bus.drain().await.unwrap();
    f.payments.broken.store(false, SeqCst);
    let late = *f.dead_letter_ids().await.last().unwrap();
    let (_, unconfirmed) = f
        .post(
            "/dead-letters/act",
            &[
                ("token", &token),
                ("action", "retry-all"),
                ("name", "order.placed"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert!(
        unconfirmed.contains("confirm%20again") || unconfirmed.contains("confirm+again"),
        "{unconfirmed}"
    );
    f.post(
        "/dead-letters/act",
        &[
            ("token", &token),
            ("action", "retry-all"),
            ("name", "order.placed"),
            ("confirm", "yes"),
            ("upto", upto),
        ],
    )
    .await;
    f.bus.drain().await.unwrap();
    assert_eq!(f.payments.handled.len(), 2);
    assert_eq!(
        f.dead_letter_ids().await,
        [ids[3], late],
        "the shipped one stays, and the late one was not counted"
    );
}

#[tokio::test]
async fn the_map_shows_each_events_protocols_and_subscriptions() {
    let f = fixture(|d| d).await;
    let (_, map) = f.get("/map").await;
    assert!(map.contains("data-event=\"order.placed\""));
    let row = &map[map.find("data-event=\"order.placed\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("Trackable"), "{row}");
    assert!(
        row.contains("<li>audit → Recorder</li>") && row.contains("<li>payments</li>"),
        "{row}"
    );
    let (_, searched) = f.get("/map?q=shipped").await;
    assert!(searched.contains("data-event=\"order.shipped\""));
    assert!(!searched.contains("data-event=\"order.placed\""));
}

#[tokio::test]
async fn the_stream_sends_live_stats() {
    let f = fixture(|d| d).await;
    f.bus.notify(OrderShipped::new(1)).await.unwrap();
    f.bus.drain().await.unwrap();
    let mut response = f
        .client
        .get(format!("{}/stream", f.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("a stats event within 5 s")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: stats\ndata: "), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(text["event: stats\ndata: ".len()..].trim()).unwrap();
    let payments = json
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "payments")
        .unwrap();
    assert_eq!(payments["dead_lettered"], 1);
}

#[tokio::test]
async fn a_mount_with_parameters_of_its_own_works_and_links_stay_on_this_host() {
    let bus = Bus::builder().build().unwrap();
    bus.subscribe("audit", Recorder::new())
        .start()
        .await
        .unwrap();
    let payments = Payments::default();
    payments.broken.store(true, SeqCst);
    bus.subscribe("payments", payments.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    bus.notify(OrderShipped::new(1)).await.unwrap();
    bus.drain().await.unwrap();
    let app = axum::Router::new().nest("/{tenant}/{env}", Dashboard::new(bus.clone()).router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let root = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let page = client.get(format!("{root}/t1/prod")).send().await.unwrap();
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(
        page.headers()["content-security-policy"],
        "frame-ancestors 'none'"
    );
    let page = page.text().await.unwrap();
    assert!(page.contains("<base href=\"/t1/prod/\">"), "{page}");
    let at = page.find("name=\"token\" value=\"").unwrap() + 20;
    let token = &page[at..at + 32];

    let paused = client
        .post(format!("{root}/t1/prod/subscriptions/audit/pause"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status().as_u16(), 303);
    assert!(
        paused.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/t1/prod?notice=")
    );
    assert!(bus.stats().iter().any(|s| s.name == "audit" && s.paused));

    let id = bus.dead_letters().list().await.unwrap()[0].id;
    let detail = client
        .get(format!("{root}/t1/prod/dead-letters/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(detail.status().as_u16(), 200);

    // An empty first segment must not turn the links into another host's.
    let odd = client
        .get(format!("{root}//evil.example"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!odd.contains("href=\"//"), "{odd}");
    bus.shutdown().await;
}

#[tokio::test]
async fn everything_matching_is_acted_on_a_thousand_at_a_time() {
    let f = fixture(|d| d).await;
    f.failed_orders(1_005).await;
    assert_eq!(f.bus.dead_letters().count().await.unwrap(), 1_005);
    let token = f.token().await;
    let (status, confirm) = f
        .post(
            "/dead-letters/act",
            &[("token", &token), ("action", "discard-all")],
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        confirm.contains("Discard 1000 dead letter(s)?"),
        "{confirm}"
    );
    assert!(confirm.contains("More match"), "{confirm}");
    let upto = upto(&confirm).to_owned();
    let (status, location) = f
        .post(
            "/dead-letters/act",
            &[
                ("token", &token),
                ("action", "discard-all"),
                ("confirm", "yes"),
                ("upto", &upto),
            ],
        )
        .await;
    assert_eq!(status, 303);
    assert!(
        location.contains("1000%20dead%20letter") || location.contains("1000+dead+letter"),
        "{location}"
    );
    assert!(location.contains("more"), "{location}");
    // The newest five stay, for the next click.
    let left = f.dead_letter_ids().await;
    assert_eq!(left.len(), 5);
    assert!(left.iter().all(|id| *id > upto.parse::<u64>().unwrap()));
}

#[tokio::test]
async fn exactly_a_thousand_matching_do_not_say_more_match() {
    let f = fixture(|d| d).await;
    f.failed_orders(1_000).await;
    let token = f.token().await;
    let (_, confirm) = f
        .post(
            "/dead-letters/act",
            &[("token", &token), ("action", "retry-all")],
        )
        .await;
    assert!(confirm.contains("Retry 1000 dead letter(s)?"), "{confirm}");
    assert!(!confirm.contains("More match"), "{confirm}");
}
