//! A real browser for the tests of pages: headless Chromium driven over
//! WebDriver by chromedriver, both from Debian (`chromium`,
//! `chromium-driver`; `.ci/run` installs them when missing).
//!
//! [`Browser::start`] runs `/usr/bin/chromedriver` on a free loopback port
//! and opens a session on a fresh profile; the browser only ever loads what
//! the test points it at, since everything Chromium would fetch on its own
//! (updates, sync, field trials) is turned off. When either binary is
//! missing a test says so and passes without running, unless
//! `EVENTBUS_REQUIRE_SERVICES=1` is set (as CI sets it): then it fails,
//! saying how to install them.
//!
//! Whatever way a test ends, chromedriver and every browser process it
//! started are gone afterwards: they run in a process group of their own,
//! which dropping the [`Browser`] kills and reaps.
//!
//! ```ignore
//! #[path = "common/browser.rs"]
//! mod browser;
//!
//! let Some(browser) = browser::Browser::start("my_test").await else { return };
//! browser.goto(&format!("http://{addr}/")).await.unwrap();
//! browser.wait_for("#ready").await.click().await.unwrap();
//! browser.wait_for_text("#out", "done").await;
//! browser.close().await;
//! ```
#![allow(dead_code, reason = "each test binary uses a different part")]

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use std::fmt;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian's `chromium-driver` package puts chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long the waiting helpers wait before they give up.
pub const WAIT: Duration = Duration::from_secs(10);
/// How often they look again meanwhile.
const POLL: Duration = Duration::from_millis(50);
/// How long chromedriver gets to start answering, and the browser to open.
const START: Duration = Duration::from_secs(30);

/// What Chromium needs to run headless here, as root in a container with a
/// small `/dev/shm` and no way out but loopback: no sandbox (root), no GPU,
/// shared memory in `/tmp`, and nothing fetched in the background (without
/// these flags it tries hosts this machine cannot reach).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // A fixed size, so a screenshot shows the same area on every machine.
    "--window-size=1280,800",
];

/// A WebDriver session on headless Chromium, with the chromedriver that
/// serves it. Derefs to the [`fantoccini::Client`] for everything the
/// helpers here do not cover.
pub struct Browser {
    client: Client,
    // Dropped after `client`: a session still open when the test ends is
    // ended by killing its process group.
    driver: Chromedriver,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("driver", &self.driver)
            .finish()
    }
}

impl std::ops::Deref for Browser {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Browser {
    /// A browser for `test`, or `None` (said on stderr) when Chromium or
    /// chromedriver is not installed and services are not required.
    ///
    /// # Panics
    ///
    /// When a binary is missing and `EVENTBUS_REQUIRE_SERVICES=1`, and when
    /// an installed chromedriver or Chromium does not start: the message
    /// carries chromedriver's own log.
    pub async fn start(test: &str) -> Option<Browser> {
        Browser::start_with(test, Path::new(CHROMEDRIVER), Path::new(CHROMIUM)).await
    }

    /// [`Browser::start`] with other binaries: how the tests check what a
    /// missing one does.
    pub async fn start_with(test: &str, chromedriver: &Path, chromium: &Path) -> Option<Browser> {
        if let Some(why) = missing(&[chromedriver, chromium]) {
            if std::env::var_os("EVENTBUS_REQUIRE_SERVICES").is_some_and(|v| v == "1") {
                panic!("{why} (EVENTBUS_REQUIRE_SERVICES=1)");
            }
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
        let mut driver = Chromedriver::spawn(chromedriver);
        driver.wait_until_answering().await;

        let mut options = serde_json::Map::new();
        options.insert(
            "binary".into(),
            chromium.to_str().expect("a UTF-8 path").into(),
        );
        let profile = driver.dir.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        options.insert("args".into(), args.into());
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options.into());

        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let client = match tokio::time::timeout(START, builder.connect(&driver.url())).await {
            Ok(Ok(client)) => client,
            Ok(Err(err)) => panic!(
                "chromedriver could not open {}: {err}\n{}",
                chromium.display(),
                driver.log()
            ),
            Err(_) => panic!(
                "{} did not open within {START:?}\n{}",
                chromium.display(),
                driver.log()
            ),
        };
        Some(Browser { client, driver })
    }

    /// The process ids of chromedriver and of the browser it started, to
    /// check that neither outlives the test.
    pub fn pids(&self) -> [u32; 2] {
        let browser = self
            .client
            .capabilities()
            .and_then(|c| c.get("goog:processID"))
            .and_then(|pid| pid.as_u64())
            .expect("chromedriver names the browser's process (goog:processID)");
        [
            self.driver.child.id(),
            u32::try_from(browser).expect("a process id"),
        ]
    }

    /// Ends the session, which quits Chromium, then stops chromedriver.
    /// Dropping the browser instead kills both; this way Chromium gets to
    /// exit on its own first.
    pub async fn close(self) {
        let Browser { client, driver } = self;
        // Bounded: a browser that hangs is killed with the group below.
        let _ = tokio::time::timeout(WAIT, client.close()).await;
        drop(driver);
    }

    /// Saves a PNG screenshot of the page to `path` and returns its bytes.
    ///
    /// # Panics
    ///
    /// When the browser cannot take it or the file cannot be written.
    pub async fn screenshot_to(&self, path: &Path) -> Vec<u8> {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("take a screenshot: {e}"));
        std::fs::write(path, &png)
            .unwrap_or_else(|e| panic!("write the screenshot to {}: {e}", path.display()));
        png
    }

    /// The first element matching the CSS selector `css`, once there is
    /// one.
    ///
    /// # Panics
    ///
    /// After [`WAIT`] without one, or at once on a selector the browser
    /// rejects.
    pub async fn wait_for(&self, css: &str) -> Element {
        self.find_within(css, None, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The first element matching `css`, once its text contains `text`.
    ///
    /// # Panics
    ///
    /// As [`Browser::wait_for`].
    pub async fn wait_for_text(&self, css: &str, text: &str) -> Element {
        self.find_within(css, Some(text), WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Looks for the first element matching `css` (and, with `text`, whose
    /// visible text contains it) every 50 ms for up to `limit`.
    ///
    /// # Errors
    ///
    /// [`NotFound`] when `limit` passes first, with what the page showed
    /// last; at once when the browser rejects the selector or the session.
    pub async fn find_within(
        &self,
        css: &str,
        text: Option<&str>,
        limit: Duration,
    ) -> Result<Element, NotFound> {
        let started = Instant::now();
        let mut last = Seen::Nothing;
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => match (text, element.text().await) {
                    (None, _) => return Ok(element),
                    (Some(want), Ok(seen)) if seen.contains(want) => return Ok(element),
                    (Some(_), Ok(seen)) => last = Seen::Text(seen),
                    // Replaced between the find and the read: look again.
                    (Some(_), Err(e)) if e.is_stale_element_reference() => {}
                    (Some(_), Err(e)) => return Err(NotFound::failed(css, text, e)),
                },
                Err(e) if e.is_no_such_element() => last = Seen::Nothing,
                Err(e) => return Err(NotFound::failed(css, text, e)),
            }
            if started.elapsed() >= limit {
                let url = self.client.current_url().await.map(|u| u.to_string());
                return Err(NotFound {
                    css: css.to_owned(),
                    text: text.map(str::to_owned),
                    why: Why::Timeout {
                        limit,
                        last,
                        url: url.unwrap_or_default(),
                    },
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// What [`Browser::find_within`] returns when the element never showed.
#[derive(Debug)]
pub struct NotFound {
    /// The CSS selector looked for.
    pub css: String,
    /// The text it was to contain, if any.
    pub text: Option<String>,
    /// Why the wait ended.
    pub why: Why,
}

/// Why a wait ended without its element.
#[derive(Debug)]
pub enum Why {
    /// The time ran out.
    Timeout {
        /// How long it waited.
        limit: Duration,
        /// What the page held at the last look.
        last: Seen,
        /// The page it was on.
        url: String,
    },
    /// The browser answered an error that waiting will not cure, such as a
    /// selector that is not CSS.
    Failed(CmdError),
}

/// What the selector matched at the last look.
#[derive(Debug)]
pub enum Seen {
    /// No element.
    Nothing,
    /// An element with this text.
    Text(String),
}

impl NotFound {
    fn failed(css: &str, text: Option<&str>, err: CmdError) -> NotFound {
        NotFound {
            css: css.to_owned(),
            text: text.map(str::to_owned),
            why: Why::Failed(err),
        }
    }
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no element `{}`", self.css)?;
        if let Some(text) = &self.text {
            write!(f, " with text {text:?}")?;
        }
        match &self.why {
            Why::Timeout { limit, last, url } => {
                write!(f, " on {url} within {limit:?}; ")?;
                match last {
                    Seen::Nothing => write!(f, "nothing matched the selector"),
                    Seen::Text(seen) => write!(f, "its text was {seen:?}"),
                }
            }
            Why::Failed(err) => write!(f, ": the browser answered: {err}"),
        }
    }
}

impl std::error::Error for NotFound {}

/// Says which of `binaries` is missing, with the fix; `None` when all are
/// there.
fn missing(binaries: &[&Path]) -> Option<String> {
    let gone: Vec<String> = binaries
        .iter()
        .filter(|b| !b.is_file())
        .map(|b| b.display().to_string())
        .collect();
    if gone.is_empty() {
        return None;
    }
    Some(format!(
        "the browser tests need headless Chromium and chromedriver, and cannot find {}; \
         install Debian's packages with `apt-get install -y chromium chromium-driver` \
         (`.ci/run` does so when they are missing)",
        gone.join(" and ")
    ))
}

/// A chromedriver child process on a loopback port, in a process group of
/// its own with the browsers it starts. Dropping it kills the group and
/// reaps chromedriver.
struct Chromedriver {
    child: Child,
    port: u16,
    /// Its log and the browser's profile; removed on drop.
    dir: tempfile::TempDir,
}

impl fmt::Debug for Chromedriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chromedriver")
            .field("pid", &self.child.id())
            .field("port", &self.port)
            .finish()
    }
}

impl Chromedriver {
    fn spawn(binary: &Path) -> Chromedriver {
        let dir = tempfile::tempdir().expect("a temporary directory for the browser");
        // A port nobody holds right now. Another process could take it
        // before chromedriver binds it; then chromedriver exits, and
        // `wait_until_answering` says so with its log.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let log = File::create(dir.path().join("chromedriver.log")).expect("chromedriver's log");
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("chromedriver's log"))
            .stderr(log)
            // Its own group, so that one kill reaches the browser too, which
            // outlives a killed chromedriver otherwise.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        Chromedriver { child, port, dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Until chromedriver accepts connections on its port.
    ///
    /// # Panics
    ///
    /// When it exits first (a wrong binary, a port taken meanwhile), or
    /// does not answer within [`START`]; with its output.
    async fn wait_until_answering(&mut self) {
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chromedriver exited before it answered on {}: {status}\n{}",
                    self.url(),
                    self.log()
                );
            }
            if started.elapsed() >= START {
                panic!(
                    "chromedriver did not answer on {} within {START:?}\n{}",
                    self.url(),
                    self.log()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Its output so far, for a failure message.
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("chromedriver.log"));
        format!("chromedriver's output:\n{}", log.unwrap_or_default())
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_child(&self.child);
        // The whole group: chromedriver and each browser process. An error
        // means the group is gone already.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}
