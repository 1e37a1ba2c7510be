//! The far ends of the side effects, started by the example itself on
//! 127.0.0.1 so it needs nothing installed: a customer's webhook endpoint
//! that checks every signature, an analytics collector that takes
//! Segment's batch format, and an SMTP server.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "../../tests/common/smtp.rs"]
mod smtp;

pub use self::smtp::SmtpServer;

/// The secret the example's customer endpoint shares with the service.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A customer's webhook endpoint: verifies each request with the Standard
/// Webhooks verifier, and answers slowly, as customer endpoints do.
#[derive(Clone)]
pub struct WebhookReceiver {
    pub port: u16,
    verified: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

struct Endpoint {
    verifier: standardwebhooks::Webhook,
    delay: Duration,
    verified: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

async fn webhook(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    tokio::time::sleep(endpoint.delay).await;
    if let Err(err) = endpoint.verifier.verify(&body, &headers) {
        endpoint.refused.fetch_add(1, SeqCst);
        println!("  [customer endpoint] refused a request: {err:?}");
        return StatusCode::UNAUTHORIZED;
    }
    endpoint.verified.fetch_add(1, SeqCst);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    println!(
        "  [customer endpoint] signature verified: {} {} {}",
        headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?"),
        json["type"].as_str().unwrap_or("?"),
        json["data"]
    );
    StatusCode::NO_CONTENT
}

impl WebhookReceiver {
    pub async fn start(delay: Duration) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (verified, refused) = (Arc::default(), Arc::default());
        let endpoint = Arc::new(Endpoint {
            verifier: standardwebhooks::Webhook::new(WEBHOOK_SECRET).expect("the secret reads"),
            delay,
            verified: Arc::clone(&verified),
            refused: Arc::clone(&refused),
        });
        let app = axum::Router::new().fallback(webhook).with_state(endpoint);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(WebhookReceiver {
            port,
            verified,
            refused,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    /// Requests whose signature verified, and those refused.
    pub fn counts(&self) -> (u64, u64) {
        (self.verified.load(SeqCst), self.refused.load(SeqCst))
    }
}

/// An analytics collector taking Segment's batch format.
#[derive(Clone)]
pub struct Collector {
    pub port: u16,
    calls: Arc<Mutex<Vec<String>>>,
}

async fn collect(State(calls): State<Arc<Mutex<Vec<String>>>>, body: Bytes) -> StatusCode {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let batch = json["batch"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = batch
        .iter()
        .map(|call| {
            format!(
                "{}({})",
                call["event"].as_str().unwrap_or("?"),
                call["userId"].as_str().unwrap_or("?")
            )
        })
        .collect();
    println!(
        "  [analytics collector] batch of {}: {}",
        names.len(),
        names.join(", ")
    );
    calls.lock().expect("calls lock").extend(names);
    StatusCode::OK
}

impl Collector {
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let calls: Arc<Mutex<Vec<String>>> = Arc::default();
        let app = axum::Router::new()
            .fallback(collect)
            .with_state(Arc::clone(&calls));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Collector { port, calls })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/batch", self.port)
    }

    /// The track calls received, as `event(userId)`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls lock").clone()
    }
}

/// Every receiver the example's side effects reach.
pub struct Receivers {
    pub webhooks: WebhookReceiver,
    pub analytics: Collector,
    pub smtp: SmtpServer,
}

impl Receivers {
    /// Starts them all; the customer endpoint answers after `webhook_delay`.
    pub async fn start(webhook_delay: Duration) -> std::io::Result<Self> {
        Ok(Receivers {
            webhooks: WebhookReceiver::start(webhook_delay).await?,
            analytics: Collector::start().await?,
            smtp: SmtpServer::start().await,
        })
    }
}
