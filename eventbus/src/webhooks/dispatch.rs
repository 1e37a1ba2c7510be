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

/// What an attempt came to, for the dispatcher to record.
pub(crate) struct Done {
    finished: Finished,
    /// Why the endpoint is to be disabled (it answered 410).
    disable: Option<String>,
}

/// The dispatcher's loop, until `stop` is told.
///
/// Attempts run as tasks; what they come to is recorded by the loop, all
/// that finished since the last round in one transaction, so the store
/// commits once per round rather than once per request. An attempt holds
/// its endpoint's slot until it is recorded.
pub(crate) async fn run(inner: Arc<Inner>, stop: Arc<tokio::sync::Notify>) {
    if let Err(err) = inner.store.recover().await {
        tracing::error!(error = %crate::failure::error_chain(&err).join(": "), "webhook store: could not recover deliveries left sending");
    }
    let mut running: JoinSet<Done> = JoinSet::new();
    // The endpoint of each running attempt, by task: a task that panics
    // still frees its endpoint's slot.
    let mut endpoints: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut busy: HashMap<String, usize> = HashMap::new();
    let mut done: Vec<Done> = Vec::new();
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let mut wait = None;
        // Record what finished.
        if !done.is_empty() {
            let batch: Vec<Finished> = done.iter().map(|d| d.finished.clone()).collect();
            match inner.store.finish_all(batch).await {
                Ok(failing) => {
                    for (d, since) in done.drain(..).zip(failing) {
                        free(&mut busy, &d.finished.endpoint);
                        after_recording(&inner, d, since);
                    }
                }
                Err(err) => {
                    // A lock held elsewhere, a full disk: the attempts
                    // keep their slots and are recorded next round.
                    tracing::error!(error = %crate::failure::error_chain(&err).join(": "), "webhook store: could not record attempts; trying again");
                    wait = Some(STORE_BACKOFF);
                }
            }
        }
        // Claim what is due, as far as the limits allow.
        let room = inner
            .settings
            .concurrency
            .saturating_sub(running.len() + done.len());
        if room > 0 && wait.is_none() {
            match inner
                .store
                .claim(room, inner.settings.per_endpoint, busy.clone())
                .await
            {
                Ok((claimed, next)) => {
                    for delivery in claimed {
                        *busy.entry(delivery.endpoint.clone()).or_insert(0) += 1;
                        let endpoint = delivery.endpoint.clone();
                        let inner = Arc::clone(&inner);
                        let task = running.spawn(async move { attempt(&inner, delivery).await });
                        endpoints.insert(task.id(), endpoint);
                    }
                    wait = next.map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO));
                }
                Err(err) => {
                    tracing::error!(error = %crate::failure::error_chain(&err).join(": "), "webhook store: could not claim due deliveries");
                    wait = Some(STORE_BACKOFF);
                }
            }
        }
        let sleep = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600)));
        tokio::select! {
            () = &mut stopped => break,
            () = inner.wake.notified() => {}
            Some(first) = running.join_next_with_id() => {
                let mut next = Some(first);
                while let Some(joined) = next {
                    match joined {
                        Ok((id, d)) => {
                            endpoints.remove(&id);
                            done.push(d);
                        }
                        Err(err) => {
                            // Attempts catch their own panics; this is one
                            // outside, which leaves the delivery `sending`
                            // until the next start.
                            tracing::error!(error = %err, "a webhook attempt panicked");
                            if let Some(endpoint) = endpoints.remove(&err.id()) {
                                free(&mut busy, &endpoint);
                            }
                        }
                    }
                    next = running.try_join_next_with_id();
                }
            }
            () = sleep, if wait.is_some() => {}
        }
    }
    // Attempts cut short, and those finished but not recorded, stay
    // `sending`, and go again at the next start.
    running.abort_all();
}

/// An attempt at `endpoint` no longer holds its slot.
fn free(busy: &mut HashMap<String, usize>, endpoint: &str) {
    if let Some(n) = busy.get_mut(endpoint) {
        *n -= 1;
        if *n == 0 {
            busy.remove(endpoint);
        }
    }
}

/// Disables the endpoint of a recorded attempt if it answered 410 or has
/// been failing for too long, in a task of its own: its source and the bus
/// may take their time.
fn after_recording(inner: &Arc<Inner>, done: Done, failing_since: Option<DateTime<Utc>>) {
    let endpoint = done.finished.endpoint;
    let (reason, since) = match (done.disable, failing_since) {
        (Some(reason), _) => (reason, None),
        (None, Some(since)) => {
            let failing_for = (Utc::now() - since).to_std().unwrap_or_default();
            if failing_for < inner.settings.disable_after {
                return;
            }
            let reason = format!(
                "failing since {} ({}s), longer than the {}s allowed",
                since.to_rfc3339(),
                failing_for.as_secs(),
                inner.settings.disable_after.as_secs()
            );
            (reason, Some(since))
        }
        (None, None) => return,
    };
    let inner = Arc::clone(inner);
    tokio::spawn(async move { disable_endpoint(&inner, &endpoint, reason, since).await });
}

/// Runs one attempt at `delivery`: what it came to.
async fn attempt(inner: &Inner, delivery: Claimed) -> Done {
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
    Done { finished, disable }
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
