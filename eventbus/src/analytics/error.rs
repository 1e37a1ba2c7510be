//! What can go wrong with [`Segment`](super::Segment): a setting refused
//! when its subscription starts, and the reasons a record or a request
//! failed, which its dead letters and logs carry.

use crate::BoxError;
use std::time::Duration;
use uuid::Uuid;

/// A [`Segment`](super::Segment) setting that cannot work.
///
/// [`SubscriptionBuilder::start`](crate::SubscriptionBuilder::start)
/// returns it, as the source of
/// [`SubscribeError::Consumer`](crate::SubscribeError::Consumer), before
/// anything is sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The endpoint does not parse as a URL.
    #[error(
        "`Segment::endpoint` {url:?} is not a valid URL; give an absolute `https://` or `http://` URL such as \"https://api.segment.io/v1/batch\""
    )]
    InvalidEndpoint {
        /// The endpoint given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: BoxError,
    },
    /// The endpoint is a URL, but not one HTTP can post to.
    #[error(
        "`Segment::endpoint` {url:?} uses the scheme `{scheme}`; use an `https://` or `http://` URL"
    )]
    UnsupportedScheme {
        /// The endpoint given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The write key is empty, so every request would be refused.
    #[error(
        "the Segment write key is empty; pass the write key of your Segment source to `Segment::new`"
    )]
    EmptyWriteKey,
    /// An extra header's name is not a valid HTTP header name.
    #[error(
        "`Segment::header` name {name:?} is not a valid HTTP header name; use letters, digits and `-`"
    )]
    InvalidHeaderName {
        /// The name given.
        name: String,
        /// Why HTTP refuses it.
        #[source]
        source: BoxError,
    },
    /// An extra header's value is not a valid HTTP header value.
    #[error(
        "`Segment::header` {name:?} has a value that is not a valid HTTP header value; remove line breaks and control characters"
    )]
    InvalidHeaderValue {
        /// The header's name.
        name: String,
        /// Why HTTP refuses the value.
        #[source]
        source: BoxError,
    },
    /// An extra header would replace one the sender sets itself.
    #[error(
        "`Segment::header` {name:?} would replace the header the sender sets itself (the write key's basic auth, or the JSON content type); leave it out"
    )]
    ReservedHeader {
        /// The header's name.
        name: String,
    },
    /// A timeout of zero: every request would fail at once.
    #[error(
        "`Segment::{setting}` is zero, so every request would time out at once; give a positive duration such as 10 seconds"
    )]
    ZeroTimeout {
        /// The setting: `timeout` or `connect_timeout`.
        setting: &'static str,
    },
    /// `BatchConfig::size` is 0.
    #[error("`BatchConfig::size` must be at least 1: it is how many records a batch holds")]
    ZeroBatchSize,
    /// The per-record limit is 0, so every record would be refused.
    #[error(
        "`Segment::max_record_bytes` is zero, so every record would be refused; leave the default (32000) or give the endpoint's per-call limit"
    )]
    ZeroRecordLimit,
    /// The per-request limit cannot hold even one record of the largest
    /// size allowed.
    #[error(
        "`Segment::max_request_bytes` ({request}) cannot hold one record of `max_record_bytes` ({record}) in the {envelope}-byte batch envelope; raise it to at least {needed} or lower `max_record_bytes`"
    )]
    RequestLimitTooSmall {
        /// The per-request limit given.
        request: usize,
        /// The per-record limit given.
        record: usize,
        /// The bytes of the `{"batch":[..],"sentAt":..}` envelope.
        envelope: usize,
        /// The smallest per-request limit that works.
        needed: usize,
    },
    /// The HTTP client could not be made (its TLS setup failed).
    #[error("could not make the HTTP client for the analytics endpoint")]
    Client(#[source] BoxError),
}

/// Why a record, or the batch it was in, was not delivered: the error an
/// analytics dead letter carries (its [`errors`](crate::DeadLetter::errors)
/// start with this message), and the one the batcher logs between retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// One record is over the endpoint's per-call limit. It is refused
    /// before anything is sent, and only its event is dead-lettered.
    #[error(
        "the Segment call for {event} {id} is {size} bytes, over the per-call limit of {limit} bytes; send fewer or shorter properties in its `Trackable` impl"
    )]
    RecordTooLarge {
        /// The event's name.
        event: String,
        /// The event's id (the call's `messageId`).
        id: Uuid,
        /// The call's size as JSON.
        size: usize,
        /// `Segment::max_record_bytes`.
        limit: usize,
    },
    /// A record lacks a field Segment requires, so the endpoint would
    /// refuse the whole batch it is in. Only its event is dead-lettered.
    #[error(
        "the Segment call for {event} {id} has an empty `{field}`, which Segment refuses; set it in the event's `Trackable` impl"
    )]
    EmptyField {
        /// The event's name.
        event: String,
        /// The event's id.
        id: Uuid,
        /// The `Track` field that is empty: `event` or `distinct_id`.
        field: &'static str,
    },
    /// A record's properties could not be written as JSON.
    #[error("the Segment call for {event} {id} could not be written as JSON")]
    Json {
        /// The event's name.
        event: String,
        /// The event's id.
        id: Uuid,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The endpoint refused the request with a status that retrying will
    /// not change (a 4xx other than 429, or a redirect): the batch's events
    /// are dead-lettered at once.
    #[error("the analytics endpoint {url} rejected the batch with HTTP {status}: {body}")]
    Rejected {
        /// The endpoint.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (at most 512 bytes).
        body: String,
    },
    /// The endpoint answered with a status worth retrying: 429 or 5xx.
    #[error("the analytics endpoint {url} answered HTTP {status}: {body}")]
    Unavailable {
        /// The endpoint.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (at most 512 bytes).
        body: String,
        /// The wait the endpoint asked for in `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The endpoint did not answer in time.
    #[error(
        "the analytics endpoint {url} did not answer within {timeout:?}; raise `Segment::timeout` if it is slow"
    )]
    Timeout {
        /// The endpoint.
        url: String,
        /// `Segment::timeout`.
        timeout: Duration,
        /// The HTTP client's error.
        #[source]
        source: BoxError,
    },
    /// No connection could be made: the endpoint is down, refuses
    /// connections, or its name does not resolve.
    #[error("could not reach the analytics endpoint {url}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The HTTP client's error, with its causes.
        #[source]
        source: BoxError,
    },
    /// The connection was made, but no complete HTTP answer came back: the
    /// endpoint cut it, or answered something that is not HTTP.
    #[error("the analytics endpoint {url} gave no complete HTTP answer")]
    NoAnswer {
        /// The endpoint.
        url: String,
        /// The HTTP client's error, with its causes.
        #[source]
        source: BoxError,
    },
    /// A batch too large for one request was sent in parts, and some parts
    /// were delivered before this one failed.
    #[error(
        "{delivered} of the batch's {total} records were delivered before this request failed; a retry sends only the others, and a replay of the dead-lettered batch resends them with the same `messageId`, which Segment deduplicates"
    )]
    PartlyDelivered {
        /// Records of the batch already delivered.
        delivered: usize,
        /// Records in the batch.
        total: usize,
        /// Why the next part failed.
        #[source]
        source: Box<SendError>,
    },
}
