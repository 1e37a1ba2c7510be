//! The settings a user subscribes, and the consumer they become once the
//! subscription starts.

use super::error::SettingsError;
use super::record::{ENVELOPE_BYTES, Record, SegmentId};
use super::sink::SegmentSink;
use crate::consumer::{BatchConfig, Batcher, BoxError, Consumer, Context, IntoConsumer};
use crate::event::AnyEvent;
use crate::protocol::Trackable;
use crate::subscription::Filter;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Segment's HTTP tracking API batch endpoint, the default.
pub const SEGMENT_BATCH_URL: &str = "https://api.segment.io/v1/batch";

/// Segment's limit on one call, in bytes, the default of
/// [`Segment::max_record_bytes`].
pub const SEGMENT_MAX_RECORD_BYTES: usize = 32_000;

/// Segment's limit on one batch request, in bytes, the default of
/// [`Segment::max_request_bytes`].
pub const SEGMENT_MAX_REQUEST_BYTES: usize = 500_000;

/// Sends the [`Track`](crate::Track) records of [`Trackable`] events to
/// Segment, or to any endpoint that takes Segment's batch format
/// (RudderStack, Jitsu, a proxy of your own), in batches.
///
/// Subscribe it like any consumer; the settings are checked when the
/// subscription starts. See the [module docs](super) for what is sent,
/// what is retried and what is dead-lettered.
///
/// # Examples
///
/// ```no_run
/// use eventbus::analytics::Segment;
/// use eventbus::{BatchConfig, Bus, Retry};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().build()?;
/// let segment = Segment::new(std::env::var("SEGMENT_WRITE_KEY")?)
///     .timeout(Duration::from_secs(5))
///     .batch(BatchConfig {
///         size: 200,
///         timeout: Duration::from_secs(2),
///         retry: Retry::exponential(Duration::from_millis(500)).max_attempts(6),
///     });
/// bus.subscribe("analytics", segment).start().await?;
/// # Ok(()) }
/// ```
///
/// A setting that cannot work stops the subscription from starting:
///
/// ```
/// use eventbus::analytics::Segment;
/// use eventbus::{Bus, SubscribeError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().build()?;
/// let err = bus
///     .subscribe("analytics", Segment::new("key").endpoint("api.segment.io/v1/batch"))
///     .start()
///     .await
///     .unwrap_err();
/// assert!(matches!(err, SubscribeError::Consumer(_)));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Segment {
    write_key: String,
    endpoint: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
    connect_timeout: Duration,
    max_retry_after: Duration,
    max_record_bytes: usize,
    max_request_bytes: usize,
    id: SegmentId,
    batch: BatchConfig,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The write key is a credential: it stays out of logs.
        f.debug_struct("Segment")
            .field("write_key", &"<redacted>")
            .field("endpoint", &self.endpoint)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_retry_after", &self.max_retry_after)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("id", &self.id)
            .field("batch", &self.batch)
            .finish()
    }
}

impl Segment {
    /// Sends to Segment's batch endpoint with `write_key`, the write key of
    /// your Segment source, as the user of HTTP basic auth.
    ///
    /// The defaults: [`SEGMENT_BATCH_URL`], a 10-second timeout per request
    /// (5 to connect), Segment's size limits, `distinct_id` as `userId`,
    /// and the default [`BatchConfig`].
    pub fn new(write_key: impl Into<String>) -> Self {
        Segment {
            write_key: write_key.into(),
            endpoint: SEGMENT_BATCH_URL.to_owned(),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
            max_record_bytes: SEGMENT_MAX_RECORD_BYTES,
            max_request_bytes: SEGMENT_MAX_REQUEST_BYTES,
            id: SegmentId::default(),
            batch: BatchConfig::default(),
        }
    }

    /// Posts to `url` instead of Segment's endpoint: a regional Segment
    /// endpoint, or another service that takes the same format.
    #[must_use]
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = url.into();
        self
    }

    /// Adds a header to every request, for an endpoint or a proxy that
    /// wants one. `Authorization` and `Content-Type` are the sender's own.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The longest a request may take, from connecting to the end of the
    /// answer; past it, the attempt fails and is retried. Default 10 s.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest connecting may take. Default 5 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest wait a `Retry-After` on a 429 or 503 answer is honoured
    /// for: the next attempt waits the longer of it and the batcher's own
    /// retry delay. Default 10 s; zero ignores `Retry-After`.
    #[must_use]
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The largest call sent, as JSON; a larger one is dead-lettered alone
    /// at once. Default [`SEGMENT_MAX_RECORD_BYTES`].
    #[must_use]
    pub fn max_record_bytes(mut self, max: usize) -> Self {
        self.max_record_bytes = max;
        self
    }

    /// The largest request body; a batch larger than this goes in several
    /// requests. Default [`SEGMENT_MAX_REQUEST_BYTES`].
    #[must_use]
    pub fn max_request_bytes(mut self, max: usize) -> Self {
        self.max_request_bytes = max;
        self
    }

    /// Which Segment field a `Track`'s `distinct_id` fills. Default
    /// [`SegmentId::UserId`].
    #[must_use]
    pub fn distinct_id_as(mut self, id: SegmentId) -> Self {
        self.id = id;
        self
    }

    /// When batches are sent and how a failed request is retried.
    #[must_use]
    pub fn batch(mut self, config: BatchConfig) -> Self {
        self.batch = config;
        self
    }

    /// The sink these settings describe, or the first that cannot work.
    fn sink(&self) -> Result<SegmentSink, SettingsError> {
        if self.write_key.is_empty() {
            return Err(SettingsError::EmptyWriteKey);
        }
        let endpoint =
            reqwest::Url::parse(&self.endpoint).map_err(|err| SettingsError::InvalidEndpoint {
                url: self.endpoint.clone(),
                source: Box::new(err),
            })?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(SettingsError::UnsupportedScheme {
                url: self.endpoint.clone(),
                scheme: endpoint.scheme().to_owned(),
            });
        }
        for (setting, timeout) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if timeout.is_zero() {
                return Err(SettingsError::ZeroTimeout { setting });
            }
        }
        if self.batch.size == 0 {
            return Err(SettingsError::ZeroBatchSize);
        }
        if self.max_record_bytes == 0 {
            return Err(SettingsError::ZeroRecordLimit);
        }
        let needed = self.max_record_bytes.saturating_add(ENVELOPE_BYTES);
        if self.max_request_bytes < needed {
            return Err(SettingsError::RequestLimitTooSmall {
                request: self.max_request_bytes,
                record: self.max_record_bytes,
                envelope: ENVELOPE_BYTES,
                needed,
            });
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|err| {
                SettingsError::InvalidHeaderName {
                    name: name.clone(),
                    source: Box::new(err),
                }
            })?;
            if header == AUTHORIZATION || header == CONTENT_TYPE {
                return Err(SettingsError::ReservedHeader { name: name.clone() });
            }
            let value =
                HeaderValue::from_str(value).map_err(|err| SettingsError::InvalidHeaderValue {
                    name: name.clone(),
                    source: Box::new(err),
                })?;
            headers.append(header, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("eventbus/", env!("CARGO_PKG_VERSION")))
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            // Following a redirect would turn the POST into a GET and lose
            // the batch; a redirect is reported as a rejection instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| SettingsError::Client(Box::new(err)))?;
        Ok(SegmentSink {
            client,
            endpoint,
            write_key: self.write_key.clone(),
            timeout: self.timeout,
            max_request_bytes: self.max_request_bytes,
            max_retry_after: self.max_retry_after,
            delivered: Default::default(),
        })
    }
}

impl IntoConsumer for Segment {
    type Consumer = SegmentConsumer;

    fn into_consumer(self, context: &Context) -> Result<SegmentConsumer, BoxError> {
        let sink = self.sink()?;
        Ok(SegmentConsumer {
            batcher: Batcher::start_counted(
                sink,
                self.batch,
                context.dead_letters().clone(),
                Arc::clone(&context.buffered),
            ),
            max_record_bytes: self.max_record_bytes,
            id: self.id,
        })
    }

    fn interest(&self) -> Filter {
        Filter::all().protocol::<dyn Trackable>()
    }

    fn describe(&self) -> Option<String> {
        Some("analytics::Segment".to_owned())
    }
}

/// A started [`Segment`]: turns each trackable event into a Segment call
/// and hands it to its batcher.
pub struct SegmentConsumer {
    batcher: Batcher<Record>,
    max_record_bytes: usize,
    id: SegmentId,
}

impl fmt::Debug for SegmentConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentConsumer")
            .field("max_record_bytes", &self.max_record_bytes)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Consumer for SegmentConsumer {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let Some(track) = crate::dispatch::<dyn Trackable>(event) else {
            return Ok(());
        };
        // A call Segment would refuse is refused here, alone: in a batch it
        // would take the other events down with it.
        let record =
            Record::new(&track, self.id, self.max_record_bytes).map_err(crate::Permanent::new)?;
        self.batcher.push(event.clone(), record).await?;
        Ok(())
    }

    fn interest(&self) -> Filter {
        Filter::all().protocol::<dyn Trackable>()
    }

    fn flush(&self) -> impl Future<Output = ()> + Send {
        let batcher = self.batcher.clone();
        async move { batcher.flush().await }
    }

    fn describe(&self) -> Option<String> {
        Some("analytics::Segment".to_owned())
    }
}
