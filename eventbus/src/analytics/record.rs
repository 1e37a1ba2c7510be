//! A [`Track`] as one Segment `track` call, serialized once when its event
//! is handled: the size checks and the batching that follow all work on
//! the bytes that will be sent.

use super::error::SendError;
use crate::protocol::Track;
use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Which Segment identity field a [`Track`]'s `distinct_id` fills.
///
/// Segment needs a `userId` or an `anonymousId` on every call. A `Track`
/// carries one id, `distinct_id`, so a [`Segment`](super::Segment) sends it
/// as one of the two, the same for every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SegmentId {
    /// `userId`: the id of a known user in your database. The default:
    /// events posted after business logic are nearly always about one.
    #[default]
    UserId,
    /// `anonymousId`: a visitor's device or session id, for services that
    /// only track visitors who have not signed in.
    AnonymousId,
}

/// One serialized `track` call, and its `messageId` for the bookkeeping of
/// batches sent in parts.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) json: Box<[u8]>,
    pub(crate) message_id: Uuid,
}

/// The library that made the call, in the call's `context`.
#[derive(Serialize)]
struct Library {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct CallContext {
    library: Library,
}

/// Segment's `track` call, as its HTTP tracking API takes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TrackCall<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anonymous_id: Option<&'a str>,
    properties: &'a Map<String, Value>,
    timestamp: String,
    message_id: Uuid,
    context: CallContext,
}

impl Record {
    /// `track` as a Segment call, refused when Segment would refuse it or
    /// when it is over `limit` bytes: alone, before it joins a batch that
    /// it would otherwise sink with it.
    pub(crate) fn new(track: &Track, id: SegmentId, limit: usize) -> Result<Self, SendError> {
        for (field, value) in [("event", &track.event), ("distinct_id", &track.distinct_id)] {
            if value.is_empty() {
                return Err(SendError::EmptyField {
                    event: track.event.clone(),
                    id: track.insert_id,
                    field,
                });
            }
        }
        let distinct_id = Some(track.distinct_id.as_str());
        let call = TrackCall {
            kind: "track",
            event: &track.event,
            user_id: distinct_id.filter(|_| id == SegmentId::UserId),
            anonymous_id: distinct_id.filter(|_| id == SegmentId::AnonymousId),
            properties: &track.properties,
            timestamp: track.timestamp.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            message_id: track.insert_id,
            context: CallContext {
                library: Library {
                    name: "eventbus",
                    version: env!("CARGO_PKG_VERSION"),
                },
            },
        };
        let json = serde_json::to_vec(&call).map_err(|source| SendError::Json {
            event: track.event.clone(),
            id: track.insert_id,
            source,
        })?;
        if json.len() > limit {
            return Err(SendError::RecordTooLarge {
                event: track.event.clone(),
                id: track.insert_id,
                size: json.len(),
                limit,
            });
        }
        Ok(Record {
            json: json.into_boxed_slice(),
            message_id: track.insert_id,
        })
    }
}

/// The `sentAt` of a request: always 24 bytes (`2026-11-29T11:13:46.123Z`),
/// so the envelope's size is known before any request is made.
pub(crate) fn sent_at(now: chrono::DateTime<chrono::Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Millis, true)
}

const HEAD: &[u8] = br#"{"batch":["#;
const TAIL_BEFORE_SENT_AT: &[u8] = br#"],"sentAt":""#;
const TAIL_AFTER_SENT_AT: &[u8] = br#""}"#;

/// The bytes a request body holds besides its records and the commas
/// between them.
pub(crate) const ENVELOPE_BYTES: usize =
    HEAD.len() + TAIL_BEFORE_SENT_AT.len() + 24 + TAIL_AFTER_SENT_AT.len();

/// The request body `{"batch":[..],"sentAt":".."}` for `records`.
pub(crate) fn body(records: &[&Record], sent_at: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(request_size(records));
    body.extend_from_slice(HEAD);
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&record.json);
    }
    body.extend_from_slice(TAIL_BEFORE_SENT_AT);
    body.extend_from_slice(sent_at.as_bytes());
    body.extend_from_slice(TAIL_AFTER_SENT_AT);
    body
}

/// The size of the request body for `records`.
fn request_size(records: &[&Record]) -> usize {
    ENVELOPE_BYTES
        + records.iter().map(|r| r.json.len()).sum::<usize>()
        + records.len().saturating_sub(1)
}

/// Cuts `records` into runs whose request bodies are at most `limit` bytes,
/// in order. A record that alone is over it still gets a request of its
/// own: settings are checked so that this cannot happen.
pub(crate) fn split<'a>(records: &'a [&'a Record], limit: usize) -> Vec<&'a [&'a Record]> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut size = ENVELOPE_BYTES;
    for (i, record) in records.iter().enumerate() {
        let added = record.json.len() + usize::from(i > start);
        if i > start && size + added > limit {
            parts.push(&records[start..i]);
            start = i;
            size = ENVELOPE_BYTES + record.json.len();
        } else {
            size += added;
        }
    }
    if start < records.len() {
        parts.push(&records[start..]);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(len: usize) -> Record {
        Record {
            json: vec![b'x'; len].into_boxed_slice(),
            message_id: Uuid::now_v7(),
        }
    }

    #[test]
    fn the_envelope_size_is_what_a_body_adds() {
        let sent_at = sent_at(chrono::Utc::now());
        assert_eq!(body(&[], &sent_at).len(), ENVELOPE_BYTES);
        let (a, b) = (record(10), record(7));
        assert_eq!(body(&[&a, &b], &sent_at).len(), ENVELOPE_BYTES + 10 + 1 + 7);
    }

    #[test]
    fn parts_fill_up_to_the_limit_and_keep_the_order() {
        let records: Vec<Record> = (0..7).map(|_| record(100)).collect();
        let refs: Vec<&Record> = records.iter().collect();
        // Three records and two commas fit exactly; a fourth does not.
        let limit = ENVELOPE_BYTES + 3 * 100 + 2;
        let parts = split(&refs, limit);
        let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let sent_at = sent_at(chrono::Utc::now());
        for part in &parts {
            assert!(body(part, &sent_at).len() <= limit);
        }
        let ids: Vec<Uuid> = parts.concat().iter().map(|r| r.message_id).collect();
        let expected: Vec<Uuid> = records.iter().map(|r| r.message_id).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn nothing_to_send_is_no_request() {
        assert!(split(&[], 1000).is_empty());
    }
}
