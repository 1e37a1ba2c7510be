//! Signed webhooks to your customers' endpoints, per the
//! [Standard Webhooks](https://www.standardwebhooks.com/) spec. Behind the
//! `webhooks` feature.
//!
//! Events that implement [`Webhookable`] become one
//! delivery per endpoint subscribed to their topic. The subscription's
//! consumer only records the deliveries, in a SQLite file of their own, and
//! returns: the event is finished once its deliveries are stored. A
//! dispatcher then sends each one:
//!
//! - **Signed.** Each request carries `webhook-id` (the same on every
//!   attempt, for receivers to drop repeats), `webhook-timestamp` and
//!   `webhook-signature`, `v1,` and the base64 HMAC-SHA256 of
//!   `id.timestamp.body`, one per secret during a rotation. The body is
//!   `{"type": topic, "timestamp": occurred_at, "data": payload}`.
//! - **Each endpoint on its own.** A delivery has its own attempts and
//!   schedule, and each endpoint at most
//!   [`per_endpoint`](WebhooksBuilder::per_endpoint) attempts in flight: a
//!   failing or slow endpoint never delays or repeats what the others get.
//! - **Retried on a schedule**: at once, then after 5 s, 5 min, 30 min, 2 h,
//!   5 h, 10 h and 10 h, each ±10%, [configurable](WebhooksBuilder::schedule).
//!   A 2xx is success. A 3xx is a failure (redirects are not followed). A 429
//!   or 503 waits at least what its `Retry-After` asks. A 410 disables the
//!   endpoint. An endpoint failing for longer than
//!   [`disable_after`](WebhooksBuilder::disable_after) (5 days) is disabled,
//!   and [`EndpointDisabled`] is posted to the bus given to
//!   [`announce_to`](WebhooksBuilder::announce_to).
//! - **Recorded.** Every attempt (time, status, latency, the first KiB of
//!   the response) can be listed per endpoint and per event, and a failed
//!   delivery can be [resent](Webhooks::resend) by hand.
//! - **Guarded.** Customer URLs may not reach private, loopback,
//!   link-local, shared (CGNAT), documentation or reserved addresses,
//!   checked after DNS resolution, on the addresses the client then
//!   connects to, and on IP literals; IPv4-mapped IPv6 addresses count as
//!   the IPv4 address they carry. [`allow`](WebhooksBuilder::allow) lets a
//!   range through.
//!
//! Delivery is at least once: a process killed mid-attempt sends that
//! delivery again at its next start. With the store in a file, pending
//! deliveries and their schedules survive a restart; in memory (chosen
//! with [`in_memory`](WebhooksBuilder::in_memory)) they do not.
//!
//! # Examples
//!
//! ```no_run
//! use eventbus::webhooks::{Endpoint, StaticEndpoints, Webhooks};
//! use eventbus::{event, json, register, Bus, Webhook, Webhookable};
//!
//! #[event]
//! struct InvoicePaid {
//!     account_id: String,
//!     invoice_id: u64,
//! }
//!
//! #[register]
//! impl Webhookable for InvoicePaid {
//!     fn webhook(&self) -> Webhook {
//!         Webhook::new("invoice.paid", json!({ "invoice_id": self.invoice_id }))
//!             .for_account(&self.account_id)
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let endpoints = StaticEndpoints::new();
//! endpoints.insert(
//!     Endpoint::new(
//!         "ep_1",
//!         "https://hooks.customer.example/eventbus",
//!         "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
//!     )?
//!     .topics(["invoice.*"])
//!     .account("acct_1"),
//! );
//! let webhooks = Webhooks::builder(endpoints)
//!     .store_path("webhooks.db")
//!     .build()?;
//! let bus = Bus::builder().build()?;
//! bus.subscribe("webhooks", webhooks.consumer()).start().await?;
//!
//! bus.notify(InvoicePaid::new("acct_1".into(), 42)).await?;
//! # Ok(()) }
//! ```

mod dispatch;
mod endpoint;
mod error;
mod guard;
mod sign;
mod store;

pub use self::endpoint::{Endpoint, EndpointSource, StaticEndpoints};
pub use self::error::{EndpointError, WebhooksError};
pub use self::guard::{Resolver, SystemResolver};
pub use self::sign::{Secret, sign};
pub use self::store::{Attempt, Delivery, DeliveryState};

use self::guard::Guard;
use self::store::{AttemptFilter, AttemptsOf, DeliveryFilter, NewDeliveryOwned, Store};
use crate::bus::Bus;
use crate::consumer::{BoxError, Consumer, Context, IntoConsumer};
use crate::event::AnyEvent;
use crate::protocol::Webhookable;
use crate::subscription::Filter;
use chrono::{DateTime, Utc};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use uuid::Uuid;

/// Posted when an endpoint is disabled: it answered `410 Gone`, or kept
/// failing for longer than [`disable_after`](WebhooksBuilder::disable_after).
/// Subscribe to `webhook.endpoint_disabled` to tell the customer.
#[crate::event(name = "webhook.endpoint_disabled")]
pub struct EndpointDisabled {
    /// The endpoint's id.
    pub endpoint: String,
    /// Why, in words.
    pub reason: String,
    /// When its failures began, if it was disabled for failing.
    pub failing_since: Option<DateTime<Utc>>,
}

/// The longest delay a schedule may have.
const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The default schedule: the delay before each attempt.
const SCHEDULE: [u64; 8] = [
    0,
    5,
    5 * 60,
    30 * 60,
    2 * 3600,
    5 * 3600,
    10 * 3600,
    10 * 3600,
];

/// How the dispatcher sends.
#[derive(Debug, Clone)]
struct Settings {
    schedule: Vec<Duration>,
    concurrency: usize,
    per_endpoint: usize,
    disable_after: Duration,
}

/// What the consumer, the dispatcher and the handle share.
struct Inner {
    source: Box<dyn EndpointSource>,
    store: Store,
    client: reqwest::Client,
    guard: Guard,
    settings: Settings,
    /// Told when deliveries are added or resent.
    wake: tokio::sync::Notify,
    /// Where [`EndpointDisabled`] goes.
    announce: Mutex<Option<Bus>>,
    /// The running dispatcher, while a consumer holds it.
    dispatcher: Mutex<Weak<Running>>,
}

/// Builds [`Webhooks`]: from [`Webhooks::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct WebhooksBuilder {
    source: Box<dyn EndpointSource>,
    store: Option<Option<PathBuf>>,
    max_store_size: Option<u64>,
    schedule: Vec<Duration>,
    concurrency: usize,
    per_endpoint: usize,
    timeout: Duration,
    connect_timeout: Duration,
    disable_after: Duration,
    guarded: bool,
    allowed: Vec<ipnet::IpNet>,
    resolver: Arc<dyn Resolver>,
    announce: Option<Bus>,
}

impl fmt::Debug for WebhooksBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhooksBuilder")
            .field("store", &self.store)
            .field("max_store_size", &self.max_store_size)
            .field("schedule", &self.schedule)
            .field("concurrency", &self.concurrency)
            .field("per_endpoint", &self.per_endpoint)
            .field("timeout", &self.timeout)
            .field("guarded", &self.guarded)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl WebhooksBuilder {
    /// Keeps the deliveries in a SQLite file at `path`, created if missing,
    /// so they survive a restart. Give the webhooks a file of their own.
    /// This or [`in_memory`](Self::in_memory) is required.
    pub fn store_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.store = Some(Some(path.into()));
        self
    }

    /// Keeps the deliveries in memory: those not yet delivered when the
    /// process stops are lost, though their events were finished. For
    /// tests, and webhooks nobody minds losing.
    pub fn in_memory(mut self) -> Self {
        self.store = Some(None);
        self
    }

    /// Caps the store's file at about `bytes`. Once it is full, an event
    /// whose deliveries do not fit fails its attempt (and is retried, then
    /// dead-lettered, like any failure), and attempts already sent are
    /// recorded once room is made ([`prune`](Webhooks::prune)). Default:
    /// no cap but the disk's. At least [`MIN_MAX_STORE_SIZE`](Self::MIN_MAX_STORE_SIZE).
    pub fn max_store_size(mut self, bytes: u64) -> Self {
        self.max_store_size = Some(bytes);
        self
    }

    /// The smallest [`max_store_size`](Self::max_store_size) accepted,
    /// 64 KiB: the empty tables and room for some deliveries.
    pub const MIN_MAX_STORE_SIZE: u64 = 64 * 1024;

    /// The delay before each attempt, from the first: as many attempts as
    /// delays, each at most 30 days. Each is spread by ±10%. The default
    /// is 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    pub fn schedule(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.schedule = delays.into_iter().collect();
        self
    }

    /// Attempts in flight across all endpoints. Default 64.
    pub fn concurrency(mut self, attempts: usize) -> Self {
        self.concurrency = attempts;
        self
    }

    /// Attempts in flight to one endpoint. Default 4: a slow endpoint holds
    /// at most this many of the [`concurrency`](Self::concurrency) slots,
    /// of which it may have at most half. Note that `concurrency /
    /// per_endpoint` slow endpoints together still hold every slot.
    pub fn per_endpoint(mut self, attempts: usize) -> Self {
        self.per_endpoint = attempts;
        self
    }

    /// How long one attempt may take, response included. Default 15 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an endpoint may keep failing (no success in between)
    /// before it is disabled. Default 5 days.
    pub fn disable_after(mut self, period: Duration) -> Self {
        self.disable_after = period;
        self
    }

    /// Lets webhooks reach `range`, which the address guard refuses
    /// otherwise: `"10.1.2.0/24".parse()?` for an internal service you
    /// trust, `"127.0.0.1/32"` in tests.
    pub fn allow(mut self, range: ipnet::IpNet) -> Self {
        self.allowed.push(range);
        self
    }

    /// Turns the address guard off: any address may be reached. Only for a
    /// network where every endpoint is your own.
    pub fn unguarded(mut self) -> Self {
        self.guarded = false;
        self
    }

    /// Resolves host names with `resolver` instead of the system's.
    pub fn resolver(mut self, resolver: impl Resolver) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// Posts [`EndpointDisabled`] to `bus` when an endpoint is disabled.
    pub fn announce_to(mut self, bus: Bus) -> Self {
        self.announce = Some(bus);
        self
    }

    /// Opens the store and builds the client.
    ///
    /// # Errors
    ///
    /// [`WebhooksError::NoStore`] when neither
    /// [`store_path`](Self::store_path) nor [`in_memory`](Self::in_memory)
    /// was chosen, [`WebhooksError::Schedule`] for an empty schedule, one of
    /// more than 100 attempts or a delay over 30 days,
    /// [`WebhooksError::Zero`] for a limit or timeout of zero,
    /// [`WebhooksError::PerEndpoint`] for a per-endpoint limit over half
    /// the concurrency, [`WebhooksError::StoreSize`] for a store cap below
    /// 64 KiB, [`WebhooksError::Store`] or
    /// [`WebhooksError::Layout`] for a store that cannot be opened,
    /// [`WebhooksError::Client`] for a client that cannot be built.
    pub fn build(self) -> Result<Webhooks, WebhooksError> {
        let Some(store) = self.store else {
            return Err(WebhooksError::NoStore);
        };
        if let Some(bytes) = self.max_store_size
            && bytes < Self::MIN_MAX_STORE_SIZE
        {
            return Err(WebhooksError::StoreSize(bytes));
        }
        if let Some(long) = self.schedule.iter().find(|d| **d > MAX_DELAY) {
            return Err(WebhooksError::Schedule(format!(
                "a delay of {long:?} is over the 30 days allowed"
            )));
        }
        if self.schedule.is_empty() {
            return Err(WebhooksError::Schedule(
                "it is empty; give at least one delay (`Duration::ZERO` for at once)".to_owned(),
            ));
        }
        if self.schedule.len() > 100 {
            return Err(WebhooksError::Schedule(format!(
                "it has {} attempts; at most 100",
                self.schedule.len()
            )));
        }
        for (setting, zero) in [
            ("concurrency", self.concurrency == 0),
            ("per_endpoint", self.per_endpoint == 0),
            ("timeout", self.timeout.is_zero()),
            ("connect_timeout", self.connect_timeout.is_zero()),
        ] {
            if zero {
                return Err(WebhooksError::Zero { setting });
            }
        }
        if self.per_endpoint > (self.concurrency / 2).max(1) {
            return Err(WebhooksError::PerEndpoint {
                per_endpoint: self.per_endpoint,
                concurrency: self.concurrency,
            });
        }
        let guard = Guard::new(self.guarded, self.allowed, self.resolver);
        let client = dispatch::client(&guard, self.timeout, self.connect_timeout)
            .map_err(WebhooksError::Client)?;
        let store = Store::open(store.as_deref(), self.max_store_size)?;
        Ok(Webhooks {
            inner: Arc::new(Inner {
                source: self.source,
                store,
                client,
                guard,
                settings: Settings {
                    schedule: self.schedule,
                    concurrency: self.concurrency,
                    per_endpoint: self.per_endpoint,
                    disable_after: self.disable_after,
                },
                wake: tokio::sync::Notify::new(),
                announce: Mutex::new(self.announce),
                dispatcher: Mutex::new(Weak::new()),
            }),
        })
    }
}

/// Webhook delivery: the consumer to subscribe, and the deliveries and
/// attempts to inspect. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("store", &self.inner.store)
            .field("guard", &self.inner.guard)
            .finish_non_exhaustive()
    }
}

/// The most rows one listing returns.
const PAGE_CAP: usize = 1000;

impl Webhooks {
    /// Starts building, with endpoints from `source`.
    pub fn builder(source: impl EndpointSource) -> WebhooksBuilder {
        WebhooksBuilder {
            source: Box::new(source),
            store: None,
            max_store_size: None,
            schedule: SCHEDULE.iter().map(|s| Duration::from_secs(*s)).collect(),
            concurrency: 64,
            per_endpoint: 4,
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            guarded: true,
            allowed: Vec::new(),
            resolver: Arc::new(SystemResolver),
            announce: None,
        }
    }

    /// The consumer to subscribe: it records a delivery per endpoint for
    /// each [`Webhookable`] event, and its subscription keeps the
    /// dispatcher running.
    pub fn consumer(&self) -> WebhookConsumer {
        WebhookConsumer {
            inner: Arc::clone(&self.inner),
        }
    }

    /// The deliveries of one event, one per endpoint.
    ///
    /// # Errors
    ///
    /// [`WebhooksError::Store`] when the store cannot be read.
    pub async fn deliveries_of_event(&self, event: Uuid) -> Result<Vec<Delivery>, WebhooksError> {
        self.inner
            .store
            .deliveries(DeliveryFilter {
                event: Some(event),
                limit: PAGE_CAP,
                ..DeliveryFilter::default()
            })
            .await
    }

    /// Deliveries to `endpoint` (every endpoint for `None`) in `state`
    /// (any for `None`), oldest first: up to `limit` (at most 1,000) with
    /// ids above `after` (0 for the first page).
    ///
    /// # Errors
    ///
    /// [`WebhooksError::Store`] when the store cannot be read.
    pub async fn deliveries(
        &self,
        endpoint: Option<&str>,
        state: Option<DeliveryState>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, WebhooksError> {
        self.inner
            .store
            .deliveries(DeliveryFilter {
                endpoint: endpoint.map(str::to_owned),
                event: None,
                state,
                after,
                limit: limit.min(PAGE_CAP),
            })
            .await
    }

    /// The attempts at one endpoint, oldest first: up to `limit` (at most
    /// 1,000) with ids above `after`.
    ///
    /// # Errors
    ///
    /// [`WebhooksError::Store`] when the store cannot be read.
    pub async fn attempts_of_endpoint(
        &self,
        endpoint: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Attempt>, WebhooksError> {
        self.inner
            .store
            .attempts(AttemptFilter {
                of: AttemptsOf::Endpoint(endpoint.to_owned()),
                after,
                limit: limit.min(PAGE_CAP),
            })
            .await
    }

    /// The attempts made for one event, at every endpoint, oldest first.
    ///
    /// # Errors
    ///
    /// [`WebhooksError::Store`] when the store cannot be read.
    pub async fn attempts_of_event(&self, event: Uuid) -> Result<Vec<Attempt>, WebhooksError> {
        self.inner
            .store
            .attempts(AttemptFilter {
                of: AttemptsOf::Event(event),
                after: 0,
                limit: PAGE_CAP,
            })
            .await
    }

    /// The attempts at one delivery, oldest first.
    ///
    /// # Errors
    ///
    /// [`WebhooksError::Store`] when the store cannot be read.
    pub async fn attempts_of_delivery(&self, delivery: i64) -> Result<Vec<Attempt>, WebhooksError> {
        self.inner
            .store
            .attempts(AttemptFilter {
                of: AttemptsOf::Delivery(delivery),
                after: 0,
                limit: PAGE_CAP,
            })
            .await
    }

    /// Sends a delivery again, now, with a fresh schedule: a failed one
    /// once its endpoint is fixed, or a delivered one the customer lost.
    ///
    /// # Errors
    ///
    /// [`WebhooksError::NoDelivery`] for an unknown id,
    /// [`WebhooksError::Sending`] while an attempt at it runs,
    /// [`WebhooksError::Store`] when the store cannot be written.
    pub async fn resend(&self, delivery: i64) -> Result<(), WebhooksError> {
        self.inner.store.resend(delivery).await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Deletes the deliveries that finished (delivered or failed) before
    /// `age` ago, with their attempts: the store keeps every delivery and
    /// attempt until then. Returns how many deliveries it deleted.
    ///
    /// # Errors
    ///
    /// [`WebhooksError::Store`] when the store cannot be written.
    pub async fn prune(&self, age: Duration) -> Result<u64, WebhooksError> {
        let cutoff = Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        self.inner.store.prune(cutoff).await
    }

    /// Waits until no delivery is being sent or due: what is left waits
    /// for a later attempt. For tests and examples; a service does not need
    /// to wait for its webhooks.
    ///
    /// # Errors
    ///
    /// [`WebhooksError::Store`] when the store cannot be read.
    pub async fn idle(&self) -> Result<(), WebhooksError> {
        while self.inner.store.busy().await? {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// The dispatcher's task, stopped when the last consumer holding it is
/// dropped.
struct Running {
    stop: Arc<tokio::sync::Notify>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

/// The consumer of [`Webhooks`]: from [`Webhooks::consumer`].
pub struct WebhookConsumer {
    inner: Arc<Inner>,
}

impl fmt::Debug for WebhookConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConsumer").finish_non_exhaustive()
    }
}

/// Returned when a webhook consumer starts outside a tokio runtime.
#[derive(Debug, thiserror::Error)]
#[error("the webhook dispatcher needs a tokio runtime; start the subscription inside one")]
struct NoRuntime;

impl IntoConsumer for WebhookConsumer {
    type Consumer = Started;

    fn into_consumer(self, _context: &Context) -> Result<Started, BoxError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        let mut slot = self.inner.dispatcher.lock().expect("dispatcher lock");
        let running = match slot.upgrade() {
            Some(running) => running,
            None => {
                let stop = Arc::new(tokio::sync::Notify::new());
                handle.spawn(dispatch::run(Arc::clone(&self.inner), Arc::clone(&stop)));
                let running = Arc::new(Running { stop });
                *slot = Arc::downgrade(&running);
                running
            }
        };
        drop(slot);
        Ok(Started {
            inner: self.inner,
            _running: running,
        })
    }

    fn interest(&self) -> Filter {
        Filter::all().protocol::<dyn Webhookable>()
    }

    fn describe(&self) -> Option<String> {
        Some("webhooks::Webhooks".to_owned())
    }
}

/// A started [`WebhookConsumer`].
pub struct Started {
    inner: Arc<Inner>,
    _running: Arc<Running>,
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("webhooks::Started").finish_non_exhaustive()
    }
}

impl Consumer for Started {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let Some(hook) = crate::protocol::webhook(event) else {
            return Ok(());
        };
        let endpoints = self
            .inner
            .source
            .endpoints(&hook.topic, hook.account.as_deref())
            .await?;
        let first = self.inner.settings.schedule[0];
        let meta = event.meta();
        let body: Arc<[u8]> = serde_json::to_vec(&serde_json::json!({
            "type": hook.topic,
            "timestamp": meta.occurred_at,
            "data": hook.payload,
        }))?
        .into();
        let message = format!("msg_{}", meta.id.simple());
        let deliveries: Vec<NewDeliveryOwned> = endpoints
            .into_iter()
            .filter(|endpoint| endpoint.receives(&hook.topic, hook.account.as_deref()))
            .map(|endpoint| NewDeliveryOwned {
                endpoint: endpoint.id,
                message: message.clone(),
                event_id: meta.id,
                topic: hook.topic.clone(),
                body: Arc::clone(&body),
            })
            .collect();
        if deliveries.is_empty() {
            return Ok(());
        }
        self.inner
            .store
            .enqueue(deliveries, dispatch::jitter(first))
            .await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    fn describe(&self) -> Option<String> {
        Some("webhooks::Webhooks".to_owned())
    }
}
