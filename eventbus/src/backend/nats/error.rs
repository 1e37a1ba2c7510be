//! Errors of the NATS JetStream backend.

use crate::backend::{ReadError, StoreError, WriteError};

type Source = Box<dyn std::error::Error + Send + Sync>;

/// Returned by [`NatsLog`](super::NatsLog) when the server cannot be used,
/// and the source of the read, write and store errors it returns. A URL in
/// an error never shows its password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// No connection could be made.
    #[error("cannot connect to NATS at {url}")]
    Connect {
        /// The URL, its password replaced by `***`.
        url: String,
        /// What the client reported.
        #[source]
        source: Source,
    },
    /// A JetStream request failed; `doing` says what the backend was doing.
    #[error("NATS JetStream failed while {doing}")]
    Request {
        /// What the backend was doing.
        doing: String,
        /// What the server or the client reported.
        #[source]
        source: Source,
    },
    /// The stream exists with a setting the bus cannot work with.
    #[error("stream `{stream}` exists with {setting} = {found}, but the bus needs {wanted}; {fix}")]
    StreamConflict {
        /// The stream.
        stream: String,
        /// The setting, as the server names it.
        setting: &'static str,
        /// What the server has.
        found: String,
        /// What the bus needs.
        wanted: String,
        /// How to resolve it.
        fix: &'static str,
    },
    /// The durable consumer of a subscription exists with a setting that
    /// conflicts with the subscription, and the server cannot change it.
    #[error(
        "consumer `{consumer}` of stream `{stream}` exists with {setting} = {found}, but the subscription needs {wanted}; remove the consumer (`nats consumer rm {stream} {consumer}`, which forgets its place) or subscribe under another name"
    )]
    ConsumerConflict {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// The setting, as the server names it.
        setting: &'static str,
        /// What the server has.
        found: String,
        /// What the subscription needs.
        wanted: String,
    },
    /// The server applied another filter than the one asked for: an older
    /// server ignores settings it does not know.
    #[error(
        "consumer `{consumer}` was asked to filter `{wanted}` but the server applied `{applied}`; upgrade the server or widen the subscription's filter"
    )]
    FilterNotApplied {
        /// The consumer.
        consumer: String,
        /// The filter asked for.
        wanted: String,
        /// The filter the server reported.
        applied: String,
    },
    /// A subject prefix or stream name the server would refuse.
    #[error("`{0}` is not a usable {1}: use letters, digits, `-` and `_`")]
    Name(String, &'static str),
    /// An event could not be serialized.
    #[error("cannot serialize the event")]
    Encode(#[source] serde_json::Error),
}

impl NatsError {
    pub(crate) fn request(
        doing: impl Into<String>,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> NatsError {
        move |source| NatsError::Request {
            doing: doing.into(),
            source,
        }
    }

    /// Whether retrying cannot fix it: a conflict needs a person.
    fn is_fatal(&self) -> bool {
        matches!(
            self,
            NatsError::StreamConflict { .. }
                | NatsError::ConsumerConflict { .. }
                | NatsError::FilterNotApplied { .. }
                | NatsError::Name(..)
        )
    }
}

impl From<NatsError> for WriteError {
    fn from(err: NatsError) -> Self {
        if err.is_fatal() {
            WriteError::Damaged(Box::new(err))
        } else {
            WriteError::Failed(Box::new(err))
        }
    }
}

impl From<NatsError> for ReadError {
    fn from(err: NatsError) -> Self {
        if err.is_fatal() {
            ReadError::Damaged(Box::new(err))
        } else {
            ReadError::Failed(Box::new(err))
        }
    }
}

impl From<NatsError> for StoreError {
    fn from(err: NatsError) -> Self {
        if err.is_fatal() {
            StoreError::Damaged(Box::new(err))
        } else {
            StoreError::Failed(Box::new(err))
        }
    }
}
