use super::Routes;
use super::error::CheckError;
use std::path::Path;

/// The environment variable that makes [`check`] rewrite the file instead of
/// comparing it: `EVENTBUS_BLESS=1 cargo test`.
pub const BLESS_VAR: &str = "EVENTBUS_BLESS";

/// Compares the committed registry file at `path` with the registry compiled
/// into this binary, or rewrites the file when `EVENTBUS_BLESS=1` is set.
///
/// A relative `path` is relative to the current directory, which under
/// `cargo test` is the package's root.
///
/// # Errors
///
/// [`CheckError::Stale`] with a unified diff when the file differs,
/// [`CheckError::Missing`] when it does not exist, [`CheckError::Duplicate`]
/// when two event types share a name and version, [`CheckError::Io`] when the
/// file cannot be read or written.
pub fn check(path: impl AsRef<Path>) -> Result<(), CheckError> {
    if blessing() {
        bless(path)
    } else {
        compare(path)
    }
}

/// [`check`] for the file [`Registry::render_with`](super::Registry::render_with)
/// writes: the registry plus the subscriptions of a bus (pass `&bus`) and
/// the events each one receives.
///
/// # Errors
///
/// As [`check`].
pub fn check_with(routes: impl Into<Routes>, path: impl AsRef<Path>) -> Result<(), CheckError> {
    let path = path.as_ref();
    let registry = super::registry();
    registry.validate()?;
    let current = registry.render_with(routes);
    if blessing() {
        write(path, &current)
    } else {
        compare_text(path, &current)
    }
}

/// Writes the registry compiled into this binary to `path`, creating parent
/// directories. What [`check`] does under `EVENTBUS_BLESS=1`.
///
/// # Errors
///
/// [`CheckError::Duplicate`] when two event types share a name and version
/// (nothing is written), [`CheckError::Io`] when the file cannot be written.
pub fn bless(path: impl AsRef<Path>) -> Result<(), CheckError> {
    let registry = super::registry();
    registry.validate()?;
    write(path.as_ref(), &registry.render())
}

/// Compares the file at `path` with the registry compiled into this binary,
/// whatever `EVENTBUS_BLESS` says. What [`check`] does otherwise.
///
/// # Errors
///
/// As [`check`], except that it never writes.
pub fn compare(path: impl AsRef<Path>) -> Result<(), CheckError> {
    let registry = super::registry();
    registry.validate()?;
    compare_text(path.as_ref(), &registry.render())
}

/// [`check`] for a test: panics with the readable error, diff included.
///
/// # Panics
///
/// Whenever [`check`] returns an error.
///
/// # Examples
///
/// ```no_run
/// #[test]
/// fn events_registry_is_current() {
///     eventbus::registry::assert_fresh("events.registry");
/// }
/// ```
#[track_caller]
pub fn assert_fresh(path: impl AsRef<Path>) {
    if let Err(err) = check(path) {
        panic!("{err}");
    }
}

/// [`check_with`] for a test: the committed file also shows which
/// subscriptions each event reaches, so `grep user.created` answers what
/// happens when it fires. Wire the bus in the test as the service does,
/// ideally by calling the same function.
///
/// # Panics
///
/// Whenever [`check_with`] returns an error.
///
/// # Examples
///
/// ```no_run
/// use eventbus::{Bus, ProtocolConsumer, Track, Trackable, sink_fn};
///
/// /// Starts every subscription: `main` calls it, and so does the test.
/// async fn wire(bus: &Bus) -> Result<(), eventbus::SubscribeError> {
///     let analytics = sink_fn(|batch: Vec<Track>| async move {
///         let _ = batch; // send them to the analytics service
///         Ok(())
///     });
///     bus.subscribe("analytics", ProtocolConsumer::<dyn Trackable, _>::new(analytics))
///         .start()
///         .await?;
///     Ok(())
/// }
///
/// #[tokio::test]
/// async fn events_registry_is_current() {
///     let bus = Bus::builder().build().unwrap();
///     wire(&bus).await.unwrap();
///     // Lines such as `route user.created v1 -> analytics via Trackable
///     // consumer=..`.
///     eventbus::registry::assert_fresh_with(&bus, "events.registry");
///     bus.shutdown().await;
/// }
/// ```
#[track_caller]
pub fn assert_fresh_with(routes: impl Into<Routes>, path: impl AsRef<Path>) {
    if let Err(err) = check_with(routes, path) {
        panic!("{err}");
    }
}

fn write(path: &Path, text: &str) -> Result<(), CheckError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| io(path, source))?;
    }
    std::fs::write(path, text).map_err(|source| io(path, source))
}

fn compare_text(path: &Path, current: &str) -> Result<(), CheckError> {
    let committed = match std::fs::read_to_string(path) {
        Ok(text) => text.replace("\r\n", "\n"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckError::Missing {
                path: path.to_owned(),
            });
        }
        Err(source) => return Err(io(path, source)),
    };
    if committed == current {
        return Ok(());
    }
    let diff = similar::TextDiff::from_lines(committed.as_str(), current)
        .unified_diff()
        .context_radius(2)
        .header(&format!("{} (committed)", path.display()), "current")
        .to_string();
    Err(CheckError::Stale {
        path: path.to_owned(),
        diff,
    })
}

fn blessing() -> bool {
    std::env::var_os(BLESS_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

fn io(path: &Path, source: std::io::Error) -> CheckError {
    CheckError::Io {
        path: path.to_owned(),
        source,
    }
}
