//! Errors of the event module.

/// Returned by [`Registry::decode`](crate::registry::Registry::decode)
/// when stored JSON cannot become an event again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No event with this name and version is compiled into the binary.
    #[error("no event named `{name}` at version {version} is registered in this binary")]
    Unknown {
        /// The stored event name.
        name: String,
        /// The stored schema version.
        version: u32,
    },
    /// The binary has the event at a newer version, with no `upcast` to read
    /// the stored one.
    #[error(
        "event `{name}` is stored at version {stored}, but this binary has version {current} and no `upcast` for older versions; add `#[event(version = {current}, upcast = ...)]`"
    )]
    NoUpcast {
        /// The stored event name.
        name: String,
        /// The stored version.
        stored: u32,
        /// The version this binary has.
        current: u32,
    },
    /// The event's `upcast` function refused the stored JSON.
    #[error("upcasting event `{name}` from version {stored} to {current} failed")]
    Upcast {
        /// The stored event name.
        name: String,
        /// The stored version.
        stored: u32,
        /// The version this binary has.
        current: u32,
        /// What the upcast function said.
        #[source]
        source: crate::BoxError,
    },
    /// The JSON does not match the event's fields.
    #[error("event `{name}` v{version} does not match its fields")]
    Invalid {
        /// The stored event name.
        name: String,
        /// The stored schema version.
        version: u32,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
}
