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

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn base_href(page: &str) -> &str {
    let at = page.find("<base href=\"").unwrap() + 12;
    let end = page[at..].find('"').unwrap();
    &page[at..at + end]
}

#[tokio::test]
async fn r1_mounts() {
    let f = fixture(|d| d).await;
    let (s, p) = f.get("").await;
    println!("GET /ops -> {s} base={}", base_href(&p));
    let (s, p) = f.get("/").await;
    println!(
        "GET /ops/ -> {s} base={:?}",
        if s == 200 { base_href(&p) } else { "-" }
    );
    let (s, p) = f.get("/dead-letters").await;
    println!("GET /ops/dead-letters -> {s} base={}", base_href(&p));
    let t = f.token().await;
    let (s, l) = f.post("/subscriptions/audit/pause", &[("token", &t)]).await;
    println!("POST pause -> {s} {l}");
    let (s, l) = f
        .post("/subscriptions/a%2F..%2F..%2Fb/pause", &[("token", &t)])
        .await;
    println!("POST pause odd name -> {s} {l}");
    let (s, l) = f
        .post("/subscriptions/audit/delete", &[("token", &t)])
        .await;
    println!("POST delete -> {s} {l}");
    // root mount
    let url = serve(Dashboard::new(f.bus.clone()).router()).await;
    let c = &f.client;
    let p = c
        .get(format!("{url}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    println!("root GET / base={}", base_href(&p));
    let p = c
        .get(format!("{url}/dead-letters"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    println!("root GET /dead-letters base={}", base_href(&p));
    let tok = {
        let at = p.find("name=\"token\" value=\"").unwrap() + 20;
        p[at..at + 32].to_owned()
    };
    let r = c
        .post(format!("{url}/subscriptions/audit/resume"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={tok}"))
        .send()
        .await
        .unwrap();
    println!(
        "root POST resume -> {} {:?}",
        r.status(),
        r.headers().get("location")
    );
    for path in [
        "//",
        "//evil.example",
        "//evil.example/",
        "//evil.example/dead-letters",
        "/dead-letters/",
    ] {
        let r = c.get(format!("{url}{path}")).send().await.unwrap();
        let st = r.status();
        let t = r.text().await.unwrap();
        println!(
            "root GET {path} -> {st} base={:?}",
            if t.contains("<base") {
                base_href(&t).to_owned()
            } else {
                "-".into()
            }
        );
    }
    // nested under a path parameter
    let app = axum::Router::new().nest("/{tenant}/ops", Dashboard::new(f.bus.clone()).router());
    let url = serve(app).await;
    for path in ["/t1/ops", "/%2F%2Fevil.example/ops", "/t1/ops/dead-letters"] {
        let r = c.get(format!("{url}{path}")).send().await.unwrap();
        let st = r.status();
        let t = r.text().await.unwrap();
        println!(
            "param GET {path} -> {st} base={:?}",
            if t.contains("<base") {
                base_href(&t).to_owned()
            } else {
                "-".into()
            }
        );
    }
}

#[tokio::test]
async fn r2_confirm_count_vs_acted() {
    let f = fixture(|d| d).await;
    for o in 1..=2 {
        f.bus.notify(OrderPlaced::new(o, "x".into())).await.unwrap();
    }
    f.bus.drain().await.unwrap();
    let t = f.token().await;
    let (s, page) = f
        .post(
            "/dead-letters/act",
            &[
                ("token", &t),
                ("action", "discard-all"),
                ("name", "order.placed"),
            ],
        )
        .await;
    let h = page.find("<h2>").unwrap();
    println!("confirm -> {s} {}", &page[h..h + 40]);
    for o in 3..=7 {
        f.bus.notify(OrderPlaced::new(o, "x".into())).await.unwrap();
    }
    f.bus.drain().await.unwrap();
    let (s, l) = f
        .post(
            "/dead-letters/act",
            &[
                ("token", &t),
                ("action", "discard-all"),
                ("confirm", "yes"),
                ("name", "order.placed"),
            ],
        )
        .await;
    println!("confirmed -> {s} {l}");
    println!("left: {:?}", f.dead_letter_ids().await);
}

#[tokio::test]
async fn r3_injection() {
    let f = fixture(|d| d).await;
    let (_, p) = f.get("?notice=Session%20expired.%20Sign%20in%20again%20at%20https%3A%2F%2Fevil.example%2Flogin").await;
    let n = p.find("class=\"notice\"").map(|i| &p[i..i + 110]);
    println!("notice: {n:?}");
    let (_, p) = f.get("/dead-letters?notice=%3Cscript%3Ealert(1)%3C%2Fscript%3E&name=%22%3E%3Cimg%20src%3Dx%3E&error=%27%3E%3Csvg%3E").await;
    println!(
        "raw <script>alert: {} raw <img: {} raw <svg>: {}",
        p.contains("<script>alert"),
        p.contains("<img"),
        p.contains("<svg>")
    );
    let t = f.token().await;
    let (s, l) = f
        .post(
            "/subscriptions/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E/pause",
            &[("token", &t)],
        )
        .await;
    println!("odd sub -> {s} {l}");
    let path = l.splitn(2, "/ops").nth(1).unwrap().to_owned();
    let (_, p) = f.get(&path).await;
    println!("raw <img on page: {}", p.contains("<img"));
    // subscription with a hostile name
    let r = f
        .bus
        .subscribe("x\"><img src=x onerror=alert(2)>", Recorder::new())
        .start()
        .await;
    println!("hostile subscription name accepted: {}", r.is_ok());
    if r.is_ok() {
        let (_, p) = f.get("").await;
        println!("raw <img on subscriptions page: {}", p.contains("<img"));
        let (_, p) = f.get("/dead-letters").await;
        println!("raw <img on dead letters page: {}", p.contains("<img"));
        let (_, p) = f.get("/map").await;
        println!("raw <img on map page: {}", p.contains("<img"));
    }
    // token in read-only pages
    let ro = fixture(|d| d.read_only()).await;
    let (_, p) = ro.get("/dead-letters").await;
    println!(
        "read-only dead-letters page carries token: {}",
        p.contains("name=\"token\"")
    );
}

#[tokio::test]
async fn r4_odd_input() {
    let f = fixture(|d| d).await;
    for path in [
        "/dead-letters/abc",
        "/dead-letters/99999999999999999999999",
        "/dead-letters/-1",
        "/dead-letters?after=abc",
        "/dead-letters?after=18446744073709551615",
    ] {
        let (s, b) = f.get(path).await;
        println!("GET {path} -> {s} {:.80}", b.replace('\n', " "));
    }
    let big = "a".repeat(60_000);
    let (s, _) = f.get(&format!("/dead-letters?error={big}")).await;
    println!("GET 60k query -> {s}");
    let t = f.token().await;
    let r = f
        .client
        .post(format!("{}/dead-letters/act", f.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            [
                b"token=".as_slice(),
                t.as_bytes(),
                b"&action=retry&id=%FF%FE&name=\xff\xfe",
            ]
            .concat(),
        )
        .send()
        .await
        .unwrap();
    println!(
        "invalid utf8 form -> {} {:?}",
        r.status(),
        r.headers().get("location")
    );
    // many failing ids in one request
    let mut body = format!("token={t}&action=retry");
    for i in 0..20_000u64 {
        body.push_str(&format!("&id={}", 1_000_000 + i));
    }
    let start = std::time::Instant::now();
    let r = f
        .client
        .post(format!("{}/dead-letters/act", f.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await;
    match r {
        Ok(r) => println!(
            "20k ids -> {} location len {:?} in {:?}",
            r.status(),
            r.headers().get("location").map(|l| l.len()),
            start.elapsed()
        ),
        Err(e) => println!("20k ids -> client error {e} in {:?}", start.elapsed()),
    }
    // duplicate ids
    f.bus.notify(OrderShipped::new(1)).await.unwrap();
    f.bus.drain().await.unwrap();
    let id = f.dead_letter_ids().await[0].to_string();
    let (s, l) = f
        .post(
            "/dead-letters/act",
            &[("token", &t), ("action", "retry"), ("id", &id), ("id", &id)],
        )
        .await;
    println!("dup ids -> {s} {l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_stream_leak() {
    let f = fixture(|d| d).await;
    let m = tokio::runtime::Handle::current().metrics();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = m.num_alive_tasks();
    for _ in 0..5 {
        let mut r = f
            .client
            .get(format!("{}/stream", f.url))
            .send()
            .await
            .unwrap();
        let c = r.chunk().await.unwrap();
        assert!(c.is_some());
        drop(r);
    }
    let during = m.num_alive_tasks();
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "alive tasks before {before} right after drop {during} after 3s {}",
        m.num_alive_tasks()
    );
}

#[tokio::test]
async fn r6_huge_store() {
    let f = fixture(|d| d).await;
    for o in 0..20_000u64 {
        f.bus.notify(OrderShipped::new(o)).await.unwrap();
    }
    f.bus.drain().await.unwrap();
    f.bus.notify(OrderPlaced::new(1, "x".into())).await.unwrap();
    f.bus.drain().await.unwrap();
    println!("letters: {}", f.dead_letter_ids().await.len());
    let start = std::time::Instant::now();
    let (s, p) = f.get("/dead-letters?name=order.placed").await;
    println!(
        "filtered page -> {s} rows {} next {} in {:?}",
        p.matches("data-letter=").count(),
        p.contains("id=\"next\""),
        start.elapsed()
    );
    let t = f.token().await;
    let start = std::time::Instant::now();
    let (s, page) = f
        .post(
            "/dead-letters/act",
            &[("token", &t), ("action", "discard-all")],
        )
        .await;
    let h = page.find("<h2>").unwrap();
    println!(
        "confirm all -> {s} {} in {:?}",
        &page[h..h + 40],
        start.elapsed()
    );
    let start = std::time::Instant::now();
    let (s, l) = f
        .post(
            "/dead-letters/act",
            &[("token", &t), ("action", "discard-all"), ("confirm", "yes")],
        )
        .await;
    println!("discard all -> {s} {:.100} in {:?}", l, start.elapsed());
}

#[tokio::test]
async fn r7_failure_notice_size() {
    let f = fixture(|d| d).await;
    let t = f.token().await;
    for n in [1_000u64, 3_000, 6_000, 20_000] {
        let mut body = format!("token={t}&action=retry");
        for i in 0..n {
            body.push_str(&format!("&id={}", 1_000_000 + i));
        }
        let r = f
            .client
            .post(format!("{}/dead-letters/act", f.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        match r {
            Ok(r) => println!(
                "{n} ids -> {} location len {:?}",
                r.status(),
                r.headers().get("location").map(|l| l.len())
            ),
            Err(e) => println!("{n} ids -> client error {e:?}"),
        }
    }
}

#[tokio::test]
async fn r8_misc() {
    let f = fixture(|d| d).await;
    let r = f
        .client
        .get(format!("{}/dead-letters", f.url))
        .send()
        .await
        .unwrap();
    println!("headers: {:?}", r.headers());
    for o in 0..50u64 {
        f.bus.notify(OrderShipped::new(o)).await.unwrap();
    }
    f.bus.drain().await.unwrap();
    let (_, p) = f.get("/dead-letters").await;
    let next = p
        .find("id=\"next\"")
        .map(|i| p[i..].split('"').nth(3).unwrap().to_owned());
    println!(
        "50 letters: rows {} next {:?}",
        p.matches("data-letter=").count(),
        next
    );
    if let Some(n) = next {
        let (s, p) = f.get(&format!("/{}", n.replace("&amp;", "&"))).await;
        println!(
            "next page -> {s} rows {} says-no-match {}",
            p.matches("data-letter=").count(),
            p.contains("No dead letter matches")
        );
    }
    for o in 0..6000u64 {
        f.bus.notify(OrderShipped::new(o)).await.unwrap();
    }
    f.bus.notify(OrderPlaced::new(1, "x".into())).await.unwrap();
    f.bus.drain().await.unwrap();
    let (_, p) = f.get("/dead-letters?name=order.placed").await;
    println!(
        "filtered first page: rows {} says 'No dead letter matches' {} next {}",
        p.matches("data-letter=").count(),
        p.contains("No dead letter matches"),
        p.contains("id=\"next\"")
    );
    f.bus.unsubscribe("payments").await;
    let (_, p) = f.get("/dead-letters").await;
    println!(
        "after unsubscribe, dropdown offers payments: {}",
        p.contains("<option value=\"payments\"")
    );
    let t = f.token().await;
    let r = f
        .client
        .post(format!("{}/dead-letters/act", f.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "token={t}&action=retry-all&confirm=yes&subscription=payments"
        ))
        .send()
        .await;
    match r {
        Ok(r) => println!(
            "retry-all of unrouted -> {} location len {:?} head {:?}",
            r.status(),
            r.headers().get("location").map(|l| l.len()),
            r.headers()
                .get("location")
                .map(|l| String::from_utf8_lossy(&l.as_bytes()[..200]).into_owned())
        ),
        Err(e) => println!("retry-all of unrouted -> client error {e:?}"),
    }
}

#[tokio::test]
async fn r9_paths() {
    let f = fixture(|d| d).await;
    let t = f.token().await;
    let (s, l) = f.post("/subscriptions/%FF/pause", &[("token", &t)]).await;
    println!("invalid utf8 name -> {s} {l:.80}");
    let app = axum::Router::new().nest("/{tenant}/ops", Dashboard::new(f.bus.clone()).router());
    let url = serve(app).await;
    for path in ["//ops", "///evil.example/ops", "/evil.example/ops"] {
        let r = f.client.get(format!("{url}{path}")).send().await.unwrap();
        let st = r.status();
        let tx = r.text().await.unwrap();
        println!("param GET {path} -> {st} base={:?}", if tx.contains("<base") { base_href(&tx).to_owned() } else { "-".into() });
    }
}

#[tokio::test]
async fn r10_empty_segment_base() {
    let f = fixture(|d| d).await;
    let app = axum::Router::new().nest("/{tenant}/{env}", Dashboard::new(f.bus.clone()).router());
    let url = serve(app).await;
    let r = f.client.get(format!("{url}//evil.example")).send().await.unwrap();
    let st = r.status();
    let tx = r.text().await.unwrap();
    println!("GET //evil.example -> {st} base={:?} form-with-token {}", base_href(&tx), tx.contains("name=\"token\""));
    let tok = { let at = tx.find("name=\"token\" value=\"").unwrap() + 20; tx[at..at+32].to_owned() };
    let r = f.client.post(format!("{url}//evil.example/subscriptions/audit/pause")).header("content-type","application/x-www-form-urlencoded").body(format!("token={tok}")).send().await.unwrap();
    println!("POST //evil.example/subscriptions/audit/pause -> {} {:?}", r.status(), r.headers().get("location"));
    let r = f.client.post(format!("{url}//evil.example/dead-letters/act")).header("content-type","application/x-www-form-urlencoded").body(format!("token={tok}&action=x")).send().await.unwrap();
    println!("POST //evil.example/dead-letters/act -> {} {:?}", r.status(), r.headers().get("location"));
}
