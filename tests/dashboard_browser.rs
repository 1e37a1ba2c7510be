//! The dashboard in a real browser (headless Chromium over WebDriver): an
//! operator finds a dead letter, selects it, clicks retry and sees it
//! delivered; pauses a subscription and watches its lag grow on the live
//! numbers. The screenshot in the README comes from here
//! (`EVENTBUS_BLESS=1` rewrites `tests/screenshots/dashboard.png`).

#[path = "common/browser.rs"]
mod browser;

use browser::Browser;
use eventbus::dashboard::Dashboard;
use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, Retry, Track, Trackable, event, register};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

#[event]
pub struct OrderPlaced {
    pub order: u64,
    pub total_cents: u64,
}

#[register]
impl Trackable for OrderPlaced {
    fn track(&self) -> Track {
        Track::new(self, self.order)
    }
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
            return Err("card declined: insufficient funds".into());
        }
        self.handled.handle(event).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retries_a_dead_letter_and_pauses_a_subscription() {
    let Some(browser) = Browser::start("dashboard_browser").await else {
        return;
    };
    let bus = Bus::builder().build().unwrap();
    let payments = Payments::default();
    payments.broken.store(true, SeqCst);
    bus.subscribe("payments", payments.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    let audit = Recorder::new();
    bus.subscribe("audit", audit.clone())
        .events(["order.*"])
        .unwrap()
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1042, 2_900)).await.unwrap();
    bus.drain().await.unwrap();

    let app = axum::Router::new().nest("/ops", Dashboard::new(bus.clone()).router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ops", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // The dead letter, found and retried once the card works again.
    browser.goto(&format!("{url}/dead-letters")).await.unwrap();
    browser
        .wait_for_text("tr[data-letter]", "card declined")
        .await;
    payments.broken.store(false, SeqCst);
    browser
        .wait_for("tr[data-letter] input[name=id]")
        .await
        .click()
        .await
        .unwrap();
    browser
        .wait_for("button[value=retry]")
        .await
        .click()
        .await
        .unwrap();
    browser
        .wait_for_text(".notice", "1 dead letter(s) retried")
        .await;
    bus.drain().await.unwrap();
    assert_eq!(payments.handled.len(), 1, "the retried event was handled");

    // On the subscriptions page: delivered, then paused with a lag that
    // grows as events arrive, on the live numbers.
    browser.goto(&url).await.unwrap();
    browser
        .wait_for_text("[data-sub=payments][data-field=delivered]", "1")
        .await;
    browser
        .wait_for("button[data-action=pause][data-for=audit]")
        .await
        .click()
        .await
        .unwrap();
    browser.wait_for_text(".notice", "audit: paused").await;
    browser
        .wait_for_text("[data-sub=audit][data-field=paused]", "paused")
        .await;
    for order in 0..3 {
        bus.notify(OrderPlaced::new(2000 + order, 1_000))
            .await
            .unwrap();
    }
    // No reload: the number changes through the stream.
    browser
        .wait_for_text("[data-sub=audit][data-field=lag]", "3")
        .await;
    assert_eq!(
        bus.stats()
            .iter()
            .find(|s| s.name == "audit")
            .map(|s| (s.paused, s.lag)),
        Some((true, 3))
    );

    let dir = tempfile::tempdir().unwrap();
    let png = browser
        .screenshot_to(&dir.path().join("dashboard.png"))
        .await;
    assert!(png.starts_with(b"\x89PNG"));
    if std::env::var_os("EVENTBUS_BLESS").is_some() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/screenshots/dashboard.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &png).unwrap();
    }
    browser.close().await;
    bus.shutdown().await;
}
