//! Where a new subscription starts reading.

/// Where a new subscription starts reading, when the backend has no
/// committed position for it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartFrom {
    /// With the next event appended: the default, and the only choice for
    /// the in-memory log, which keeps nothing a subscription could go back to.
    #[default]
    Now,
    /// With the oldest event the backend still holds, for backends that
    /// keep history.
    Beginning,
}
