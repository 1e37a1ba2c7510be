//! Errors of the registry.

use std::fmt;
use std::path::PathBuf;

/// Two or more event types registered under one name and version.
///
/// Returned by [`Registry::validate`](super::Registry::validate), and inside
/// [`CheckError::Duplicate`] by [`check`](super::check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateEvent {
    /// The shared name.
    pub name: String,
    /// The shared version.
    pub version: u32,
    /// `file:line` of every type that claims them.
    pub locations: Vec<String>,
}

impl fmt::Display for DuplicateEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event `{}` v{} is defined more than once, at {}; give each type its own `#[event(name = \"...\")]` or version",
            self.name,
            self.version,
            self.locations.join(" and "),
        )
    }
}

impl std::error::Error for DuplicateEvent {}

/// Returned by [`check`](super::check) when the committed registry file does
/// not match the binary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The file does not exist yet.
    #[error(
        "registry file `{}` does not exist; run the test with EVENTBUS_BLESS=1 to create it, then commit it",
        path.display()
    )]
    Missing {
        /// The path that was checked.
        path: PathBuf,
    },
    /// The file differs from the registry compiled into the binary.
    #[error(
        "registry file `{}` is stale; run the test with EVENTBUS_BLESS=1 to rewrite it, then commit it\n{diff}",
        path.display()
    )]
    Stale {
        /// The path that was checked.
        path: PathBuf,
        /// A unified diff from the file to the current registry.
        diff: String,
    },
    /// Two event types share a name and version.
    #[error(transparent)]
    Duplicate(#[from] DuplicateEvent),
    /// The file could not be read or written.
    #[error("cannot access registry file `{}`", path.display())]
    Io {
        /// The path that was checked.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}
