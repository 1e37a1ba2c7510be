//! The dispatcher: claims due deliveries, runs each attempt in a task of
//! its own, and records what came of it. Each endpoint has a limit of
//! attempts in flight, so a slow endpoint holds a few of the dispatcher's
//! slots and never the rest.

use super::guard::{Guard, literal};
use super::sign::signature_header;
use super::store::{Claimed, DeliveryState, Finished};
use super::{EndpointDisabled, Inner};
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// How much of a response's body an attempt keeps.
const SNIPPET: usize = 1024;

/// The longest wait a `Retry-After` header can ask for.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(24 * 60 * 60);

/// How long the dispatcher waits before trying the store again after it
/// failed.
const STORE_BACKOFF: Duration = Duration::from_secs(1);

/// The dispatcher's loop, until `stop` is told.
pub(crate) async fn run(inner: Arc<Inner>, stop: Arc<tokio::sync::Notify>) {
    if let Err(err) = inner.store.recover().await {
        tracing::error!(error = %crate::failure::error_chain(&err).join(": "), "webhook store: could not recover deliveries left sending");
    }
    let mut running: JoinSet<()> = JoinSet::new();
    // The endpoint of each running attempt, by task: a task that panics
    // still frees its endpoint's slot.
    let mut endpoints: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut busy: HashMap<String, usize> = HashMap::new();
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        // Claim what is due, as far as the limits allow.
        let room = inner.settings.concurrency.saturating_sub(running.len());
        let mut wait = None;
        if room > 0 {
            match inner
                .store
                .claim(room, inner.settings.per_endpoint, busy.clone())
                .await
            {
                Ok(claimed) => {
                    for delivery in claimed {
                        *busy.entry(delivery.endpoint.clone()).or_insert(0) += 1;
                        let endpoint = delivery.endpoint.clone();
                        let inner = Arc::clone(&inner);
                        let task = running.spawn(async move { attempt(&inner, delivery).await });
                        endpoints.insert(task.id(), endpoint);
                    }
                }
                Err(err) => {
                    tracing::error!(error = %crate::failure::error_chain(&err).join(": "), "webhook store: could not claim due deliveries");
                    wait = Some(STORE_BACKOFF);
                }
            }
        }
        if wait.is_none() && running.len() < inner.settings.concurrency {
            let full: Vec<String> = busy
                .iter()
                .filter(|(_, n)| **n >= inner.settings.per_endpoint)
                .map(|(e, _)| e.clone())
                .collect();
            wait = match inner.store.next_due(full).await {
                Ok(Some(at)) => Some((at - Utc::now()).to_std().unwrap_or(Duration::ZERO)),
                Ok(None) => None,
                Err(_) => Some(STORE_BACKOFF),
            };
        }
        let sleep = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600)));
        tokio::select! {
            () = &mut stopped => break,
            () = inner.wake.notified() => {}
            Some(done) = running.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(err) => {
                        // Attempts catch their own panics; this is one
                        // in recording it, which leaves the delivery
                        // `sending` until the next start.
                        tracing::error!(error = %err, "a webhook attempt panicked");
                        err.id()
                    }
                };
                if let Some(endpoint) = endpoints.remove(&id)
                    && let Some(n) = busy.get_mut(&endpoint)
                {
                    *n -= 1;
                    if *n == 0 {
                        busy.remove(&endpoint);
                    }
                }
            }
            () = sleep, if wait.is_some() => {}
        }
    }
    // Attempts cut short stay `sending`, and go again at the next start.
    running.abort_all();
}

/// Runs one attempt at `delivery` and records it.
async fn attempt(inner: &Inner, delivery: Claimed) {
    let at = Utc::now();
    let started = std::time::Instant::now();
    let outcome = AssertUnwindSafe(send(inner, &delivery))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            Outcome::failed(format!(
                "panicked: {}",
                crate::failure::panic_message(&*panic)
            ))
        });
    let latency = started.elapsed();
    let attempts = delivery.attempts + 1;
    let schedule = &inner.settings.schedule;
    let gone = matches!(outcome, Outcome::Gone { .. });
    let (state, next_at, status, response, error, disable) = match outcome {
        Outcome::Delivered { status, response } => (
            DeliveryState::Delivered,
            at,
            Some(status),
            response,
            None,
            None,
        ),
        // Disabled or deleted at its source: nothing more to do, and
        // nothing to say; whoever did it knows.
        Outcome::Gone { reason } => (DeliveryState::Failed, at, None, None, Some(reason), None),
        Outcome::Gave {
            status: Some(410),
            response,
            error,
            ..
        } => (
            DeliveryState::Failed,
            at,
            Some(410),
            response,
            Some(error),
            Some("the endpoint answered 410 Gone".to_owned()),
        ),
        Outcome::Gave {
            status,
            response,
            error,
            retry_after,
        } => {
            match schedule.get(attempts as usize) {
                Some(delay) => {
                    // The endpoint's own `Retry-After` wins when it asks
                    // for longer than the schedule would wait.
                    let mut delay = jitter(*delay);
                    if let Some(asked) = retry_after {
                        delay = delay.max(asked.min(RETRY_AFTER_CAP));
                    }
                    (
                        DeliveryState::Pending,
                        at.checked_add_signed(
                            chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX),
                        )
                        .unwrap_or(DateTime::<Utc>::MAX_UTC),
                        status,
                        response,
                        Some(error),
                        None,
                    )
                }
                None => (
                    DeliveryState::Failed,
                    at,
                    status,
                    response,
                    Some(error),
                    None,
                ),
            }
        }
    };
    let failing = error.is_some() && !gone;
    let finished = Finished {
        delivery: delivery.id,
        endpoint: delivery.endpoint.clone(),
        event_id: delivery.event_id.clone(),
        at,
        status,
        latency,
        response,
        error,
        manual: delivery.manual,
        state,
        attempts,
        next_at,
        failing,
    };
    match record(inner, finished).await {
        Ok(Some(since)) if disable.is_none() => {
            let failing_for = (Utc::now() - since).to_std().unwrap_or_default();
            if failing_for >= inner.settings.disable_after {
                let reason = format!(
                    "failing since {} ({}s), longer than the {}s allowed",
                    since.to_rfc3339(),
                    failing_for.as_secs(),
                    inner.settings.disable_after.as_secs()
                );
                disable_endpoint(inner, &delivery.endpoint, reason, Some(since)).await;
            }
        }
        Ok(_) => {}
        Err(()) => return,
    }
    if let Some(reason) = disable {
        disable_endpoint(inner, &delivery.endpoint, reason, None).await;
    }
}

/// Records an attempt, trying again while the store refuses (a lock held
/// elsewhere, a full disk): the attempt keeps its endpoint's slot until
/// then. `Err` only when the dispatcher stops first, which leaves the
/// delivery `sending`, to go again at the next start.
async fn record(inner: &Inner, finished: Finished) -> Result<Option<DateTime<Utc>>, ()> {
    loop {
        match inner.store.finish(finished.clone()).await {
            Ok(since) => return Ok(since),
            Err(err) => {
                tracing::error!(
                    delivery = finished.delivery,
                    error = %crate::failure::error_chain(&err).join(": "),
                    "webhook store: could not record an attempt; trying again",
                );
                tokio::time::sleep(STORE_BACKOFF).await;
            }
        }
    }
}

/// Disables an endpoint at its source, and says so on the bus once.
async fn disable_endpoint(
    inner: &Inner,
    endpoint: &str,
    reason: String,
    failing_since: Option<DateTime<Utc>>,
) {
    tracing::warn!(endpoint, reason = %reason, "disabling a webhook endpoint");
    if let Err(err) = inner.source.disable(endpoint, &reason).await {
        tracing::error!(endpoint, error = %crate::failure::error_chain(&*err).join(": "), "the endpoint source could not disable an endpoint");
    }
    match inner.store.mark_disabled(endpoint.to_owned()).await {
        Ok(true) => {}
        // Disabled already: announced then.
        Ok(false) => return,
        Err(err) => {
            tracing::error!(endpoint, error = %crate::failure::error_chain(&err).join(": "), "webhook store: could not mark an endpoint disabled");
        }
    }
    let bus = inner.announce.lock().expect("announce lock").clone();
    if let Some(bus) = bus {
        let event = EndpointDisabled::new(endpoint.to_owned(), reason, failing_since);
        if let Err(err) = bus.notify(event).await {
            tracing::warn!(endpoint, error = %err, "could not post EndpointDisabled");
        }
    }
}

/// Spreads retries by ±10%, so endpoints that failed together do not all
/// come back in the same instant.
pub(crate) fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// What an attempt came to.
enum Outcome {
    Delivered {
        status: u16,
        response: Option<String>,
    },
    /// The endpoint is deleted or disabled: no more attempts.
    Gone { reason: String },
    /// Failed: a status, a timeout, a refused address.
    Gave {
        status: Option<u16>,
        response: Option<String>,
        error: String,
        /// What a 429 or 503 asked for in `Retry-After`.
        retry_after: Option<Duration>,
    },
}

impl Outcome {
    /// A failure with no response.
    fn failed(error: String) -> Self {
        Outcome::Gave {
            status: None,
            response: None,
            error,
            retry_after: None,
        }
    }
}

async fn send(inner: &Inner, delivery: &Claimed) -> Outcome {
    let endpoint = match inner.source.endpoint(&delivery.endpoint).await {
        Ok(Some(endpoint)) if endpoint.enabled => endpoint,
        Ok(Some(_)) => {
            return Outcome::Gone {
                reason: "the endpoint is disabled".to_owned(),
            };
        }
        Ok(None) => {
            return Outcome::Gone {
                reason: "the endpoint is deleted".to_owned(),
            };
        }
        Err(err) => {
            return Outcome::failed(format!(
                "the endpoint source failed: {}",
                crate::failure::error_chain(&*err).join(": ")
            ));
        }
    };
    if let Some(host) = endpoint.url.host()
        && let Some(address) = literal(&host)
        && let Err(refused) = inner.guard.check(address)
    {
        return Outcome::failed(format!(
            "refused to connect: {refused}; allow the range with `WebhooksBuilder::allow` if it is meant"
        ));
    }
    let timestamp = Utc::now().timestamp();
    let signature = signature_header(
        &endpoint.secrets,
        &delivery.message,
        timestamp,
        &delivery.body,
    );
    let request = inner
        .client
        .post(endpoint.url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", &delivery.message)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(delivery.body.to_vec());
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(err) => return Outcome::failed(describe(&err)),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut snippet = Vec::new();
    let mut body_error = None;
    while snippet.len() < SNIPPET {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                snippet.extend_from_slice(&chunk[..chunk.len().min(SNIPPET - snippet.len())])
            }
            Ok(None) => break,
            Err(err) => {
                body_error = Some(describe(&err));
                break;
            }
        }
    }
    let text = (!snippet.is_empty()).then(|| String::from_utf8_lossy(&snippet).into_owned());
    if (200..300).contains(&status) {
        return Outcome::Delivered {
            status,
            response: text,
        };
    }
    let mut error = match status {
        300..=399 => format!("the endpoint answered {status}; redirects are not followed"),
        _ => format!("the endpoint answered {status}"),
    };
    let retry_after = retry_after.filter(|_| matches!(status, 429 | 503));
    if let Some(after) = retry_after {
        error.push_str(&format!(", asking to retry after {}s", after.as_secs()));
    }
    if let Some(body_error) = body_error {
        error.push_str(&format!("; reading its body failed: {body_error}"));
    }
    Outcome::Gave {
        status: Some(status),
        response: text,
        error,
        retry_after,
    }
}

/// A client error with its causes, which reqwest keeps in its chain.
fn describe(err: &reqwest::Error) -> String {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    let chain = crate::failure::error_chain(err);
    format!("{what}: {}", chain.join(": "))
}

/// `Retry-After` in seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value.trim()).ok()?;
    Some(
        (at.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
}

/// Guards a client: the resolver is the guard.
pub(crate) fn client(
    guard: &Guard,
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(guard.clone()))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .user_agent(concat!("eventbus-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let past = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(past, Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(100));
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
    }
}
