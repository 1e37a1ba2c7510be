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

/// Writes the registry compiled into this binary to `path`, creating parent
/// directories. What [`check`] does under `EVENTBUS_BLESS=1`.
///
/// # Errors
///
/// [`CheckError::Duplicate`] when two event types share a name and version
/// (nothing is written), [`CheckError::Io`] when the file cannot be written.
pub fn bless(path: impl AsRef<Path>) -> Result<(), CheckError> {
    let path = path.as_ref();
    let registry = super::registry();
    registry.validate()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| io(path, source))?;
    }
    std::fs::write(path, registry.render()).map_err(|source| io(path, source))
}

/// Compares the file at `path` with the registry compiled into this binary,
/// whatever `EVENTBUS_BLESS` says. What [`check`] does otherwise.
///
/// # Errors
///
/// As [`check`], except that it never writes.
pub fn compare(path: impl AsRef<Path>) -> Result<(), CheckError> {
    let path = path.as_ref();
    let registry = super::registry();
    registry.validate()?;
    let current = registry.render();
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
    let diff = similar::TextDiff::from_lines(&committed, &current)
        .unified_diff()
        .context_radius(2)
        .header(&format!("{} (committed)", path.display()), "current")
        .to_string();
    Err(CheckError::Stale {
        path: path.to_owned(),
        diff,
    })
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

fn blessing() -> bool {
    std::env::var_os(BLESS_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

fn io(path: &Path, source: std::io::Error) -> CheckError {
    CheckError::Io {
        path: path.to_owned(),
        source,
    }
}
