//! The browser the page tests use (`common/browser.rs`), on a page of the
//! test's own served from loopback: headless Chromium runs its script,
//! takes a click, waits for what the script writes, and saves a
//! screenshot; a wait that never ends well says what the page showed, a
//! bad selector fails at once, a missing binary is named with the fix, and
//! a chromedriver or browser that does not start says how it failed.

#[path = "common/browser.rs"]
mod browser;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use browser::{Browser, Seen, Why};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A button whose script writes a line under it, after a moment so that
/// the test has to wait for it.
const PAGE: &str = r#"<!doctype html>
<html>
<head><meta charset="utf-8"><title>browser smoke</title></head>
<body>
<h1>Smoke</h1>
<button id="go">Go</button>
<p id="out">not clicked</p>
<script>
  let clicks = 0;
  document.getElementById("go").addEventListener("click", () => {
    clicks += 1;
    setTimeout(() => {
      document.getElementById("out").textContent = "clicked " + clicks + " time(s)";
    }, 200);
  });
</script>
</body>
</html>"#;

/// Serves [`PAGE`] at `/` on 127.0.0.1, port chosen by the system, for as
/// long as the test runs.
async fn serve_page() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { Html(PAGE) }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Width and height from a PNG's header, after checking its signature.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: starts with {:?}",
        &bytes[..bytes.len().min(8)]
    );
    assert_eq!(&bytes[12..16], b"IHDR", "a PNG starts with its IHDR chunk");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (width, height)
}

/// Bounds the whole test: a browser that hangs fails it instead of CI.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("the browser test finished within 2 minutes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_a_button_and_sees_what_the_script_writes() {
    bounded(async {
        let addr = serve_page().await;
        let Some(browser) = Browser::start("clicks_a_button_and_sees_what_the_script_writes").await
        else {
            return;
        };
        browser.goto(&format!("http://{addr}/")).await.unwrap();
        assert_eq!(browser.title().await.unwrap(), "browser smoke");
        let out = browser.wait_for("#out").await;
        assert_eq!(out.text().await.unwrap(), "not clicked");

        browser.wait_for("#go").await.click().await.unwrap();
        let out = browser.wait_for_text("#out", "clicked 1 time(s)").await;
        assert_eq!(out.text().await.unwrap(), "clicked 1 time(s)");
        // A second click runs the same script again on the same page.
        browser.wait_for("#go").await.click().await.unwrap();
        browser.wait_for_text("#out", "clicked 2 time(s)").await;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smoke.png");
        let png = browser.screenshot_to(&path).await;
        assert_eq!(
            std::fs::read(&path).unwrap(),
            png,
            "the file holds the screenshot"
        );
        let (width, height) = png_size(&png);
        assert!(
            width > 0 && height > 0,
            "an empty screenshot: {width}x{height}"
        );
        let pids = browser.pids();
        browser.close().await;
        for pid in pids {
            assert!(ended(pid).await, "process {pid} still runs after close");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_dropped_without_close_leaves_no_process() {
    bounded(async {
        let addr = serve_page().await;
        let Some(browser) =
            Browser::start("a_browser_dropped_without_close_leaves_no_process").await
        else {
            return;
        };
        browser.goto(&format!("http://{addr}/")).await.unwrap();
        let pids = browser.pids();
        // As a test that panics halfway does.
        drop(browser);
        for pid in pids {
            assert!(ended(pid).await, "process {pid} still runs after drop");
        }
    })
    .await;
}

/// Whether process `pid` has ended within 10 s: gone, or dead and waiting
/// to be reaped by init (Chromium's processes are not the test's children).
async fn ended(pid: u32) -> bool {
    for _ in 0..200 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            // The state follows the command's closing parenthesis.
            Ok(stat)
                if stat
                    .rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z')) =>
            {
                return true;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_says_what_the_page_showed() {
    bounded(async {
        let addr = serve_page().await;
        let Some(browser) = Browser::start("a_wait_that_runs_out_says_what_the_page_showed").await
        else {
            return;
        };
        let url = format!("http://{addr}/");
        browser.goto(&url).await.unwrap();

        // Never clicked, so the text never comes.
        let err = browser
            .find_within("#out", Some("clicked 1"), Duration::from_millis(500))
            .await
            .unwrap_err();
        match &err.why {
            Why::Timeout {
                last: Seen::Text(seen),
                url: on,
                ..
            } => {
                assert_eq!(seen, "not clicked");
                assert_eq!(on, &url);
            }
            other => panic!("expected a timeout that saw the text, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "no element `#out` with text \"clicked 1\" on {url} within 500ms; \
                 its text was \"not clicked\""
            )
        );

        // No such element at all.
        let err = browser
            .find_within("#missing", None, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.why,
                Why::Timeout {
                    last: Seen::Nothing,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().ends_with("nothing matched the selector"),
            "{err}"
        );
        browser.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_that_is_not_css_fails_at_once() {
    bounded(async {
        let addr = serve_page().await;
        let Some(browser) = Browser::start("a_selector_that_is_not_css_fails_at_once").await else {
            return;
        };
        browser.goto(&format!("http://{addr}/")).await.unwrap();
        // A whole minute allowed: the answer must not wait for it.
        let err = browser
            .find_within("##go", None, Duration::from_secs(60))
            .await
            .unwrap_err();
        match &err.why {
            Why::Failed(cmd) => assert!(cmd.is_invalid_selector(), "{cmd:?}"),
            other => panic!("expected the browser to reject the selector, got {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("no element `##go`: the browser answered:"),
            "{err}"
        );
        browser.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_missing_binary_is_named_with_the_fix() {
    let gone = Path::new("/nonexistent/chromedriver");
    let required = std::env::var_os("EVENTBUS_REQUIRE_SERVICES").is_some_and(|v| v == "1");
    // In a task of its own, so that the panic CI asks for can be read.
    let started = tokio::spawn(async move {
        Browser::start_with(
            "a_missing_binary_is_named_with_the_fix",
            gone,
            Path::new(browser::CHROMIUM),
        )
        .await
        .is_some()
    })
    .await;
    if required {
        let panic = started.expect_err("a missing chromedriver fails when services are required");
        let message = panic.into_panic();
        let message = message
            .downcast_ref::<String>()
            .expect("a formatted panic message");
        assert!(
            message.contains("cannot find /nonexistent/chromedriver;"),
            "{message}"
        );
        assert!(
            message.contains("apt-get install -y chromium chromium-driver"),
            "{message}"
        );
        assert!(
            message.ends_with("(EVENTBUS_REQUIRE_SERVICES=1)"),
            "{message}"
        );
    } else {
        assert!(!started.unwrap(), "no browser without chromedriver");
    }
}

/// Runs `start` in a task of its own and returns its panic message.
async fn panic_of<F>(start: F) -> String
where
    F: std::future::Future<Output = Option<Browser>> + Send + 'static,
{
    let panic = tokio::spawn(async move { start.await.is_some() })
        .await
        .expect_err("the start fails");
    let payload = panic.into_panic();
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload.downcast_ref::<&str>().unwrap_or(&"?").to_string(),
    }
}

#[tokio::test]
async fn a_chromedriver_that_is_not_one_is_reported_with_its_exit() {
    if !Path::new(browser::CHROMIUM).is_file() {
        eprintln!("SKIPPED a_chromedriver_that_is_not_one_is_reported_with_its_exit: no Chromium");
        return;
    }
    // `false` exits at once with status 1, as a broken install would.
    let message = panic_of(Browser::start_with(
        "a_chromedriver_that_is_not_one_is_reported_with_its_exit",
        Path::new("/bin/false"),
        Path::new(browser::CHROMIUM),
    ))
    .await;
    assert!(
        message.starts_with("chromedriver exited before it answered on http://127.0.0.1:"),
        "{message}"
    );
    assert!(message.contains("exit status: 1"), "{message}");
}

#[tokio::test]
async fn a_browser_that_does_not_start_is_reported_with_chromedrivers_answer() {
    if !Path::new(browser::CHROMEDRIVER).is_file() {
        eprintln!(
            "SKIPPED a_browser_that_does_not_start_is_reported_with_chromedrivers_answer: no chromedriver"
        );
        return;
    }
    // `true` exits at once without opening DevTools, as a broken browser would.
    let message = panic_of(Browser::start_with(
        "a_browser_that_does_not_start_is_reported_with_chromedrivers_answer",
        Path::new(browser::CHROMEDRIVER),
        Path::new("/bin/true"),
    ))
    .await;
    assert!(
        message.starts_with("chromedriver could not open /bin/true: "),
        "{message}"
    );
}
