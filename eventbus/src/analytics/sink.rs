//! The batcher's sink: POSTs a batch of Segment calls to the endpoint, in as
//! many requests as its size limit needs, and tells the batcher which
//! failures are worth retrying.

use super::error::SendError;
use super::record::{self, Record};
use crate::BoxError;
use crate::consumer::Sink;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;
use uuid::Uuid;

/// The most of a response body kept in an error.
const BODY_SNIPPET: usize = 512;

pub(crate) struct SegmentSink {
    pub(crate) client: reqwest::Client,
    pub(crate) endpoint: reqwest::Url,
    pub(crate) write_key: String,
    pub(crate) timeout: Duration,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_retry_after: Duration,
    /// The `messageId`s of the current batch already delivered by an
    /// earlier attempt, when a batch sent in parts failed part way.
    pub(crate) delivered: Mutex<HashSet<Uuid>>,
}

/// A failed request, and whether a retry could change the outcome.
struct Failed {
    error: SendError,
    permanent: bool,
    /// The wait the endpoint asked for, within `max_retry_after`.
    wait: Option<Duration>,
}

impl Sink<Record> for SegmentSink {
    async fn write(&self, batch: &[Record]) -> Result<(), BoxError> {
        // The batcher retries a failed batch by calling again with the same
        // records, and it has no way to say which of them went through. The
        // ids delivered by earlier attempts say it: a retry sends only the
        // rest. Any other batch shares none of them (ids are unique), so
        // the first call of a new batch forgets those of an earlier one
        // that was given up on.
        let pending: Vec<&Record> = {
            let mut delivered = self.delivered.lock().unwrap_or_else(|e| e.into_inner());
            if delivered.is_empty() {
                batch.iter().collect()
            } else {
                let ids: HashSet<Uuid> = batch.iter().map(|r| r.message_id).collect();
                delivered.retain(|id| ids.contains(id));
                batch
                    .iter()
                    .filter(|r| !delivered.contains(&r.message_id))
                    .collect()
            }
        };
        for part in record::split(&pending, self.max_request_bytes) {
            match self.post(part).await {
                Ok(()) => {
                    let mut delivered = self.delivered.lock().unwrap_or_else(|e| e.into_inner());
                    delivered.extend(part.iter().map(|r| r.message_id));
                }
                Err(Failed {
                    error,
                    permanent,
                    wait,
                }) => {
                    let delivered = self
                        .delivered
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .len();
                    let error = if delivered > 0 {
                        SendError::PartlyDelivered {
                            delivered,
                            total: batch.len(),
                            source: Box::new(error),
                        }
                    } else {
                        error
                    };
                    return Err(match (permanent, wait) {
                        (true, _) => crate::Permanent::new(error).into(),
                        // The batcher's next attempt waits at least this;
                        // at its last attempt it gives up at once.
                        (false, Some(wait)) => crate::RetryAfter::new(wait, error).into(),
                        (false, None) => error.into(),
                    });
                }
            }
        }
        self.delivered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }
}

impl SegmentSink {
    /// One request with the calls of `part`.
    async fn post(&self, part: &[&Record]) -> Result<(), Failed> {
        let body = record::body(part, &record::sent_at(chrono::Utc::now()));
        let sent = self
            .client
            .post(self.endpoint.clone())
            .basic_auth(&self.write_key, None::<&str>)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) => return Err(self.transport(err)),
        };
        let status = response.status();
        if status.is_success() {
            // The answer's body is not read: Segment's is `{"success":
            // true}`, and a 2xx already says the batch was taken.
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = snippet(response).await;
        let url = self.endpoint.to_string();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let wait = retry_after
                .filter(|_| {
                    status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::SERVICE_UNAVAILABLE
                })
                .map(|wait| wait.min(self.max_retry_after))
                .filter(|wait| !wait.is_zero());
            return Err(Failed {
                wait,
                error: SendError::Unavailable {
                    url,
                    status: status.as_u16(),
                    body,
                    retry_after,
                },
                permanent: false,
            });
        }
        Err(Failed {
            error: SendError::Rejected {
                url,
                status: status.as_u16(),
                body,
            },
            permanent: true,
            wait: None,
        })
    }

    /// A request that got no answer: retried, whatever the cause.
    fn transport(&self, err: reqwest::Error) -> Failed {
        let url = self.endpoint.to_string();
        let error = if err.is_timeout() {
            SendError::Timeout {
                url,
                timeout: self.timeout,
                source: Box::new(err.without_url()),
            }
        } else if err.is_connect() {
            SendError::Unreachable {
                url,
                source: Box::new(err.without_url()),
            }
        } else {
            SendError::NoAnswer {
                url,
                source: Box::new(err.without_url()),
            }
        };
        Failed {
            error,
            permanent: false,
            wait: None,
        }
    }
}

/// The start of a response body, for the error: read no further than
/// [`BODY_SNIPPET`] bytes, whatever the endpoint sends.
async fn snippet(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    let mut cut = false;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = BODY_SNIPPET - bytes.len();
                if chunk.len() > room {
                    bytes.extend_from_slice(&chunk[..room]);
                    cut = true;
                    break;
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    match (text.is_empty(), cut) {
        (true, false) => "(empty body)".to_owned(),
        (_, true) => format!("{text}…"),
        (false, false) => text.to_owned(),
    }
}
