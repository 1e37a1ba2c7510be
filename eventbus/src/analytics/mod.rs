//! Analytics over HTTP: the [`Track`](crate::Track) records of
//! [`Trackable`](crate::Trackable) events, sent in batches to Segment's
//! HTTP tracking API or any endpoint that takes its batch format.
//!
//! Behind the `analytics` cargo feature, so that services that do not send
//! analytics compile no HTTP or TLS stack.
//!
//! # Examples
//!
//! Make a [`Segment`] with your source's write key and subscribe it; each
//! trackable event becomes one `track` call.
//!
//! ```no_run
//! use eventbus::analytics::Segment;
//! use eventbus::{event, register, Bus, Track, Trackable};
//!
//! #[event(name = "plan.upgraded")]
//! struct PlanUpgraded {
//!     user_id: u64,
//!     plan: String,
//! }
//!
//! #[register]
//! impl Trackable for PlanUpgraded {
//!     fn track(&self) -> Track {
//!         Track::new(self, self.user_id).property("plan", self.plan.as_str())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Bus::builder().build()?;
//! bus.subscribe("analytics", Segment::new(std::env::var("SEGMENT_WRITE_KEY")?))
//!     .start()
//!     .await?;
//!
//! bus.notify(PlanUpgraded::new(7, "pro".into())).await?;
//! bus.shutdown().await; // sends what is still batched
//! # Ok(()) }
//! ```
//!
//! # What is sent
//!
//! Every request is a `POST` of `{"batch": [..], "sentAt": ".."}` with the
//! write key as the user of HTTP basic auth. Each call in `batch` is
//!
//! ```json
//! {"type": "track", "event": "plan.upgraded", "userId": "7",
//!  "properties": {"plan": "pro"}, "timestamp": "2026-11-29T10:00:00.123456789Z",
//!  "messageId": "<the event's id>",
//!  "context": {"library": {"name": "eventbus", "version": "0.1.0"}}}
//! ```
//!
//! - `timestamp` is the `Track`'s, by default the event's `occurred_at`:
//!   the time it happened, not the time it was sent.
//! - `messageId` is the `Track`'s `insert_id`, by default the event's id,
//!   so a call sent twice (a retry after a lost answer, a replayed dead
//!   letter) is deduplicated by Segment.
//! - `userId` is the `Track`'s `distinct_id`. Events posted after business
//!   logic are nearly always about a known user; a service that only tracks
//!   signed-out visitors sends it as `anonymousId` instead, with
//!   [`Segment::distinct_id_as`]`(`[`SegmentId::AnonymousId`]`)`.
//!
//! # Limits
//!
//! Segment takes at most 32 KB per call and 500 KB per request; the
//! defaults are 32 000 and 500 000 bytes
//! ([`Segment::max_record_bytes`], [`Segment::max_request_bytes`]).
//! - A call over the per-call limit is refused when its event is handled,
//!   with a [`SendError::RecordTooLarge`] that names its size and the
//!   limit, and only that event is dead-lettered, at once.
//! - So is a call with an empty `event` or `distinct_id`
//!   ([`SendError::EmptyField`]), which Segment would refuse along with the
//!   whole batch it was in.
//! - A batch (of [`BatchConfig::size`](crate::BatchConfig::size) calls at
//!   most) whose body would be over the per-request limit is sent in
//!   several requests, each within it, in order.
//!
//! # What is retried, and what is dead-lettered
//!
//! A batch is retried by its [`BatchConfig::retry`](crate::BatchConfig::retry)
//! policy, then its events are dead-lettered with the last error:
//! - **retried:** a 5xx or 429 answer ([`SendError::Unavailable`]), no
//!   answer within [`Segment::timeout`] ([`SendError::Timeout`]), and a
//!   connection refused ([`SendError::Unreachable`]) or cut before a whole
//!   HTTP answer ([`SendError::NoAnswer`]). A
//!   `Retry-After` (in seconds) on a 429 or 503, up to
//!   [`Segment::max_retry_after`], is the least the next attempt waits
//!   (a [`RetryAfter`](crate::RetryAfter)); at the last attempt the batch
//!   is dead-lettered without waiting;
//! - **dead-lettered at once:** any other answer that is not 2xx, a 4xx or
//!   a redirect ([`SendError::Rejected`]), with its status and the start of
//!   its body. Retrying would get the same answer. Redirects are not
//!   followed, since that would turn the `POST` into a `GET`.
//!
//! When a batch went in several requests and one failed after others went
//! through, a retry sends only the calls not yet delivered. If the batch is
//! given up on, all its events are dead-lettered, the delivered ones too
//! (the batcher dead-letters a batch as a whole), and the error says how
//! many had gone through ([`SendError::PartlyDelivered`]): replaying them
//! resends those calls with their `messageId`, which Segment drops as
//! duplicates.
//!
//! A bad setting (an endpoint that is not an `http(s)` URL, a zero size,
//! limit or timeout, an empty write key, an invalid header) stops the
//! subscription from starting, with a [`SettingsError`] naming it.

mod error;
mod record;
mod segment;
mod sink;

pub use self::error::{SendError, SettingsError};
pub use self::record::SegmentId;
pub use self::segment::{
    SEGMENT_BATCH_URL, SEGMENT_MAX_RECORD_BYTES, SEGMENT_MAX_REQUEST_BYTES, Segment,
    SegmentConsumer,
};
