//! NATS JetStream: one subscription spread over many machines.
//!
//! Events go to one stream, on subjects `<prefix>.<event name>`, with the
//! event id as the message id, so the server drops a duplicate publish
//! within its window. [`notify`](crate::Bus::notify) returns once the
//! server acknowledged the publish.
//!
//! Each subscription is a durable pull consumer named after it. Every
//! process that starts a subscription of that name reads the same
//! consumer, and the server hands each message to one of them. Each
//! delivery is settled on its own: success acknowledges, a failure with
//! attempts left is handed back with the retry policy's delay (the server
//! redelivers it and counts the attempt), and at the last attempt the bus
//! stores the dead letter itself and terminates the message (the server
//! does not dead-letter: past its own limit a message just sits). While a
//! handler runs, its message's claim is extended, so a long handler is not
//! redelivered to another process under its feet. A process that dies
//! leaves its unacknowledged messages to the others after the consumer's
//! ack wait.
//!
//! What JetStream does not give: the order of one subscription's events
//! across redeliveries and processes, so partitioned and sequential modes
//! keep order only as far as the server delivers it; and events written
//! inside a database transaction (use the PostgreSQL outbox for that).

mod error;
mod letters;
mod reader;

pub use self::error::NatsError;
pub use self::letters::{NatsDeadLetters, Quarantined};

use self::reader::NatsReader;
use super::{
    Backend, Capabilities, DeadLetterStore, Interest, Position, ReadError, Reader, WriteError,
};
use crate::event::AnyEvent;
use crate::subscription::StartFrom;
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

/// The header that carries an event's name.
const NAME_HEADER: &str = "Eventbus-Name";
/// The header that carries an event's version.
const VERSION_HEADER: &str = "Eventbus-Version";

/// A [`Backend`] on a NATS JetStream stream that any number of processes
/// share. Built with [`NatsLog::builder`].
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use eventbus::{Bus, NatsLog};
///
/// let log = NatsLog::builder()
///     .url("nats://127.0.0.1:4222")
///     .prefix("shop")
///     .connect()
///     .await?;
/// let bus = Bus::builder().backend(log).build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NatsLog {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    url: String,
    prefix: String,
    stream_name: String,
    ack_wait: Duration,
    max_ack_pending: i64,
    publish_patience: Duration,
    closed: AtomicBool,
    /// The highest stream sequence this process published: a reader of a
    /// closed log stops before anything later.
    published: AtomicU64,
    letters: Arc<NatsDeadLetters>,
    /// The readers open in this process, by consumer, told what the server
    /// says of their subscription when `drain` asks it.
    readers: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<reader::Held>>>,
}

/// What [`NatsLog::requeue_quarantined`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Requeued {
    /// Messages that decode now, written as the subscription's dead
    /// letters.
    pub requeued: u64,
    /// Messages that still do not decode; they stay quarantined.
    pub still_quarantined: u64,
    /// Messages the stream no longer has; their records stay.
    pub gone: u64,
}

/// Settings of a [`NatsLog`]; [`connect`](NatsLogBuilder::connect)
/// creates or updates the stream.
#[derive(Debug, Clone)]
pub struct NatsLogBuilder {
    url: String,
    prefix: String,
    stream: Option<String>,
    ack_wait: Duration,
    max_age: Option<Duration>,
    duplicate_window: Duration,
    replicas: usize,
    max_ack_pending: i64,
    publish_patience: Duration,
}

impl Default for NatsLogBuilder {
    fn default() -> Self {
        NatsLogBuilder {
            url: "nats://127.0.0.1:4222".to_owned(),
            prefix: "eventbus".to_owned(),
            stream: None,
            ack_wait: Duration::from_secs(30),
            max_age: None,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            max_ack_pending: 4096,
            publish_patience: Duration::from_secs(10),
        }
    }
}

impl NatsLog {
    /// The settings, starting from the defaults: `nats://127.0.0.1:4222`,
    /// prefix `eventbus`, ack wait 30 s, events kept until removed by
    /// hand, one replica.
    pub fn builder() -> NatsLogBuilder {
        NatsLogBuilder::default()
    }

    /// The client, for a service that also uses NATS directly.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The name of the stream events go to.
    pub fn stream_name(&self) -> &str {
        &self.inner.stream_name
    }

    /// The subject an event of this name goes to.
    pub fn subject(&self, event_name: &str) -> String {
        format!("{}.{event_name}", self.inner.prefix)
    }

    /// The messages that did not decode for `subscription` (written by a
    /// newer version, or by another publisher), oldest first. Each was
    /// terminated, so it is never delivered, and stays in the stream.
    ///
    /// # Errors
    ///
    /// [`NatsError::Request`] when the server cannot be read.
    pub async fn quarantined(&self, subscription: &str) -> Result<Vec<Quarantined>, NatsError> {
        self.inner.letters.quarantined(subscription).await
    }

    /// Gives the messages quarantined for `subscription` another chance:
    /// those that decode with this binary (one that knows a newer event,
    /// after a rolling deploy) become dead letters of the subscription in
    /// this log's own store ([`dead_letters`](Self::dead_letters), the one
    /// a bus on this log uses unless its builder is given another), to
    /// [replay](crate::DeadLetters::replay_all) like any other, and their
    /// records go; the rest stay quarantined. A message the stream no
    /// longer has (its limits removed it, or the stream was made again
    /// and its sequence holds another message) is counted as gone, and
    /// its record stays, to say what was lost. A message recorded twice
    /// becomes one letter.
    ///
    /// Two processes requeueing at once may both write a letter; the
    /// server keeps one (the same message id, within the duplicate
    /// window).
    ///
    /// # Errors
    ///
    /// [`NatsError::Request`] when the server cannot be read or written;
    /// what moved before stays moved.
    pub async fn requeue_quarantined(&self, subscription: &str) -> Result<Requeued, NatsError> {
        let letters = &self.inner.letters;
        let mut done = Requeued::default();
        // By message: the records of one, oldest first.
        let mut by_message: std::collections::BTreeMap<u64, Vec<(u64, Quarantined)>> =
            std::collections::BTreeMap::new();
        for (record, quarantined) in letters.quarantine_records(subscription).await? {
            by_message
                .entry(quarantined.sequence)
                .or_default()
                .push((record, quarantined));
        }
        for (sequence, records) in by_message {
            let quarantined = &records[0].1;
            let message = match self.inner.stream.get_raw_message(sequence).await {
                Ok(message) if message.subject.as_str() == quarantined.subject => message,
                Ok(_) => {
                    done.gone += 1;
                    continue;
                }
                Err(err)
                    if err.kind()
                        == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                {
                    done.gone += 1;
                    continue;
                }
                Err(err) => {
                    return Err(NatsError::request("reading a quarantined message")(
                        Box::new(err),
                    ));
                }
            };
            let event = match reader::decode_parts(
                self,
                &message.subject,
                Some(&message.headers),
                &message.payload,
            ) {
                Ok(event) => event,
                Err(_) => {
                    done.still_quarantined += 1;
                    continue;
                }
            };
            let letter = crate::dead_letter::DeadLetter {
                id: 0,
                subscription: subscription.to_owned(),
                event,
                errors: vec![format!("quarantined: {}", quarantined.reason)],
                attempts: 0,
                first_failed_at: quarantined.at,
                // The first record's time, not now: the letter's message
                // id is then the same in every process that requeues it.
                last_failed_at: quarantined.at,
                replaying: false,
            };
            crate::backend::DeadLetterStore::insert(&**letters, &letter)
                .await
                .map_err(|err| {
                    NatsError::request("storing a requeued dead letter")(Box::new(err))
                })?;
            for (record, _) in &records {
                letters.forget_quarantined(*record).await?;
            }
            done.requeued += 1;
        }
        Ok(done)
    }

    /// The dead-letter store kept next to the stream, the one a bus on this
    /// log uses unless its builder is given another.
    pub fn dead_letters(&self) -> Arc<NatsDeadLetters> {
        Arc::clone(&self.inner.letters)
    }
}

impl NatsLogBuilder {
    /// The server to connect to; several, comma-separated, for a cluster.
    /// Default `nats://127.0.0.1:4222`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// The first token(s) of every subject, dot-separated: events go to
    /// `<prefix>.<event name>`. Default `eventbus`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The stream's name. Default: the prefix in upper case, with `_` for
    /// every `.` (`shop.orders` gives `SHOP_ORDERS`).
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = Some(name.into());
        self
    }

    /// How long the server waits for a delivery's outcome before it gives
    /// the message to another process: how long a killed process holds
    /// its messages back. A running handler's claim is extended, so a
    /// long handler needs no longer wait. Default 30 s.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// How long the stream keeps an event. Default: until removed by
    /// hand. A subscription that is further behind than this loses what
    /// the server removed.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// How long the server remembers event ids to drop a duplicate
    /// publish. Default 2 minutes, the server's own.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Copies of the stream in a cluster. Default 1.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// How many messages of one subscription may be out, unsettled, across
    /// every process, before the server waits. Default 4096.
    pub fn max_ack_pending(mut self, max: usize) -> Self {
        self.max_ack_pending = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        self
    }

    /// How long `notify` keeps trying to publish while the server does not
    /// answer (a restart, a lost connection) before it returns an error.
    /// Publishing again is safe: the event id makes the server drop a
    /// copy it stored already. Default 10 s.
    pub fn publish_patience(mut self, patience: Duration) -> Self {
        self.publish_patience = patience;
        self
    }

    /// Connects, and creates the stream or brings its settings up to date.
    ///
    /// # Errors
    ///
    /// [`NatsError::Connect`] when the server cannot be reached;
    /// [`NatsError::StreamConflict`] when a stream of that name exists with
    /// subjects or a retention the bus cannot work with;
    /// [`NatsError::Name`] for an unusable prefix or stream name.
    pub async fn connect(self) -> Result<NatsLog, NatsError> {
        if !valid_subject(&self.prefix) {
            return Err(NatsError::Name(self.prefix, "subject prefix"));
        }
        let stream_name = self
            .stream
            .clone()
            .unwrap_or_else(|| self.prefix.replace('.', "_").to_uppercase());
        if !valid_name(&stream_name) {
            return Err(NatsError::Name(stream_name, "stream name"));
        }
        let url = crate::backend::url::redact(&self.url);
        let client = async_nats::ConnectOptions::new()
            .name("eventbus")
            .connection_timeout(Duration::from_secs(5))
            .connect(self.url.as_str())
            .await
            .map_err(|source| NatsError::Connect {
                url: url.clone(),
                source: Box::new(source),
            })?;
        let js = jetstream::new(client.clone());
        let stream = ensure_stream(&js, &self, &stream_name).await?;
        let letters = NatsDeadLetters::open(&js, &stream_name, &self).await?;
        Ok(NatsLog {
            inner: Arc::new(Inner {
                client,
                js,
                stream,
                url,
                prefix: self.prefix,
                stream_name,
                ack_wait: self.ack_wait,
                max_ack_pending: self.max_ack_pending,
                publish_patience: self.publish_patience,
                closed: AtomicBool::new(false),
                published: AtomicU64::new(0),
                letters: Arc::new(letters),
                readers: Default::default(),
            }),
        })
    }
}

/// Creates the stream, or checks and updates the one there.
async fn ensure_stream(
    js: &jetstream::Context,
    settings: &NatsLogBuilder,
    name: &str,
) -> Result<stream::Stream, NatsError> {
    let subject = format!("{}.>", settings.prefix);
    let wanted = stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.clone()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: settings.max_age.unwrap_or_default(),
        duplicate_window: settings.duplicate_window,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    let mut stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|err| NatsError::request(format!("creating stream `{name}`"))(Box::new(err)))?;
    let info = stream
        .info()
        .await
        .map_err(|err| NatsError::request(format!("reading stream `{name}`"))(Box::new(err)))?;
    let config = info.config.clone();
    let covers = config
        .subjects
        .iter()
        .any(|s| s == &subject || s == ">" || covers(s, &subject));
    if !covers {
        return Err(NatsError::StreamConflict {
            stream: name.to_owned(),
            setting: "subjects",
            found: format!("{:?}", config.subjects),
            wanted: format!("[\"{subject}\"]"),
            fix: "give the log another prefix or stream name",
        });
    }
    if config.retention == stream::RetentionPolicy::WorkQueue {
        return Err(NatsError::StreamConflict {
            stream: name.to_owned(),
            setting: "retention",
            found: "workqueue".to_owned(),
            wanted: "limits or interest, so every subscription receives every event".to_owned(),
            fix: "give the log another stream name",
        });
    }
    if config.max_age != wanted.max_age
        || config.duplicate_window != wanted.duplicate_window
        || config.num_replicas != wanted.num_replicas
    {
        let updated = stream::Config {
            max_age: wanted.max_age,
            duplicate_window: wanted.duplicate_window,
            num_replicas: wanted.num_replicas,
            ..config
        };
        js.update_stream(updated).await.map_err(|err| {
            NatsError::request(format!("updating stream `{name}`"))(Box::new(err))
        })?;
    }
    Ok(stream)
}

/// A filter that passes what both `existing` and `wanted` pass: the wider
/// of the two when one covers the other, otherwise every subject of the
/// log.
fn widest(existing: &str, wanted: &str, prefix: &str) -> String {
    if existing.is_empty() {
        return wanted.to_owned();
    }
    let passes = |wide: &str, narrow: &str| {
        wide == narrow
            || wide == ">"
            || wide
                .strip_suffix('>')
                .is_some_and(|head| narrow.starts_with(head))
    };
    if passes(existing, wanted) {
        existing.to_owned()
    } else if passes(wanted, existing) {
        wanted.to_owned()
    } else {
        format!("{prefix}.>")
    }
}

/// Whether stream subject `pattern` takes every subject under `subject`
/// (`a.>` or `a.*`-free patterns that end in `>` and prefix it).
fn covers(pattern: &str, subject: &str) -> bool {
    pattern
        .strip_suffix('>')
        .is_some_and(|head| !head.contains('*') && subject.starts_with(head))
}

/// Dot-separated tokens of letters, digits, `-` and `_`.
fn valid_subject(subject: &str) -> bool {
    !subject.is_empty() && subject.split('.').all(valid_name)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The consumer name of a subscription: its name where the server takes
/// it, otherwise the name with every other character as `_` and a hash of
/// the name, so two names never share a consumer.
fn consumer_name(subscription: &str) -> String {
    if valid_name(subscription) {
        return subscription.to_owned();
    }
    let plain: String = subscription
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    let hash = subscription
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{plain}_{:08x}", hash as u32)
}

impl NatsLog {
    /// The consumer's filter for a subscription's interest: one subject
    /// when the interest is one name or one prefix (a 2.9 server takes a
    /// single filter), otherwise every subject of the log, and the
    /// subscription filters the rest.
    fn filter_subject(&self, interest: &Interest) -> String {
        let prefix = &self.inner.prefix;
        match interest {
            Interest::Names(names) if names.len() == 1 && valid_event_subject(&names[0]) => {
                match names[0].strip_suffix(".*") {
                    Some(head) => format!("{prefix}.{head}.>"),
                    None => format!("{prefix}.{}", names[0]),
                }
            }
            _ => format!("{prefix}.>"),
        }
    }

    /// Creates the subscription's durable consumer, or checks and updates
    /// the one there.
    async fn ensure_consumer(
        &self,
        subscription: &str,
        from: StartFrom,
        interest: &Interest,
    ) -> Result<consumer::PullConsumer, NatsError> {
        let inner = &self.inner;
        let name = consumer_name(subscription);
        let mut filter = self.filter_subject(interest);
        let mut wanted = consumer::pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("eventbus subscription `{subscription}`")),
            deliver_policy: match from {
                StartFrom::Now => consumer::DeliverPolicy::New,
                StartFrom::Beginning => consumer::DeliverPolicy::All,
            },
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: inner.ack_wait,
            // The bus counts attempts and dead-letters; a server limit
            // would leave a message sitting, neither delivered nor dead.
            max_deliver: -1,
            filter_subject: filter.clone(),
            max_ack_pending: inner.max_ack_pending,
            ..Default::default()
        };
        let conflict = |setting, found: String, wanted: String| NatsError::ConsumerConflict {
            stream: inner.stream_name.clone(),
            consumer: name.clone(),
            setting,
            found,
            wanted,
        };
        match inner.stream.consumer_info(&name).await {
            Err(err) if err.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
                inner
                    .stream
                    .create_consumer(wanted.clone())
                    .await
                    .map_err(|err| {
                        NatsError::request(format!("creating consumer `{name}`"))(Box::new(err))
                    })?;
            }
            Err(err) => {
                return Err(NatsError::request(format!("reading consumer `{name}`"))(
                    Box::new(err),
                ));
            }
            Ok(info) => {
                let config = &info.config;
                if let Some(subject) = &config.deliver_subject {
                    return Err(conflict(
                        "deliver_subject",
                        subject.clone(),
                        "none (a pull consumer)".to_owned(),
                    ));
                }
                if config.ack_policy != consumer::AckPolicy::Explicit {
                    return Err(conflict(
                        "ack_policy",
                        format!("{:?}", config.ack_policy).to_lowercase(),
                        "explicit".to_owned(),
                    ));
                }
                // Processes of two versions may share the consumer: its
                // filter only widens (a narrower one would make the
                // consumer skip events the other version wants, for good),
                // and its waits and limits only grow.
                filter = widest(&config.filter_subject, &filter, &inner.prefix);
                wanted.filter_subject = filter.clone();
                wanted.ack_wait = wanted.ack_wait.max(config.ack_wait);
                wanted.max_ack_pending = wanted.max_ack_pending.max(config.max_ack_pending);
                let differs = config.filter_subject != filter
                    || config.ack_wait != wanted.ack_wait
                    || config.max_deliver != wanted.max_deliver
                    || config.max_ack_pending != wanted.max_ack_pending;
                if differs {
                    // The deliver policy of a consumer that exists stays:
                    // it only says where a new one starts.
                    let update = consumer::pull::Config {
                        deliver_policy: config.deliver_policy,
                        ..wanted.clone()
                    };
                    if let Err(err) = inner.stream.create_consumer(update).await {
                        tracing::debug!(consumer = %name, error = %err, "the server refused to update the consumer");
                        let (setting, found, wants) = if config.filter_subject != filter {
                            (
                                "filter_subject",
                                config.filter_subject.clone(),
                                filter.clone(),
                            )
                        } else if config.ack_wait != wanted.ack_wait {
                            (
                                "ack_wait",
                                format!("{:?}", config.ack_wait),
                                format!("{:?}", wanted.ack_wait),
                            )
                        } else if config.max_deliver != wanted.max_deliver {
                            (
                                "max_deliver",
                                config.max_deliver.to_string(),
                                wanted.max_deliver.to_string(),
                            )
                        } else {
                            (
                                "max_ack_pending",
                                config.max_ack_pending.to_string(),
                                wanted.max_ack_pending.to_string(),
                            )
                        };
                        return Err(conflict(setting, found, wants));
                    }
                }
            }
        }
        let mut consumer: consumer::PullConsumer = inner
            .stream
            .get_consumer(&name)
            .await
            .map_err(|err| NatsError::request(format!("opening consumer `{name}`"))(err))?;
        let applied = consumer
            .info()
            .await
            .map_err(|err| NatsError::request(format!("reading consumer `{name}`"))(Box::new(err)))?
            .config
            .filter_subject
            .clone();
        if applied != filter {
            return Err(NatsError::FilterNotApplied {
                consumer: name,
                wanted: filter,
                applied,
            });
        }
        Ok(consumer)
    }

    /// Tells `held` what `drain` learns of its consumer.
    fn watch(&self, consumer: &str, held: &Arc<reader::Held>) {
        let mut readers = self.inner.readers.lock().expect("readers lock");
        readers.retain(|_, r| r.strong_count() > 0);
        readers.insert(consumer.to_owned(), Arc::downgrade(held));
    }

    /// Publishes until the server acknowledges it or the patience runs
    /// out; the event id lets the server drop a copy it stored already.
    async fn publish(&self, event: &AnyEvent) -> Result<u64, NatsError> {
        let inner = &self.inner;
        let name = event.name();
        if !valid_event_subject(name) {
            return Err(NatsError::Name(
                name.to_owned(),
                "subject token for an event name",
            ));
        }
        let payload = event.to_json_bytes().map_err(NatsError::Encode)?;
        let subject = format!("{}.{name}", inner.prefix);
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(event.meta().id.to_string())
            .header(NAME_HEADER, name)
            .header(VERSION_HEADER, event.version().to_string().as_str());
        let deadline = tokio::time::Instant::now() + inner.publish_patience;
        let mut wait = Duration::from_millis(50);
        loop {
            let attempt = async {
                let ack = inner
                    .js
                    .send_publish(subject.clone(), message.clone())
                    .await
                    .map_err(|err| (err.kind(), Box::new(err) as Box<_>))?;
                ack.await
                    .map_err(|err| (err.kind(), Box::new(err) as Box<_>))
            };
            // No attempt outlasts the patience (the client's own timeout
            // is 5 s).
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_millis(10));
            let attempt = async {
                match tokio::time::timeout(left, attempt).await {
                    Ok(result) => result,
                    Err(elapsed) => Err((
                        jetstream::context::PublishErrorKind::TimedOut,
                        Box::new(elapsed) as Box<_>,
                    )),
                }
            };
            match attempt.await {
                Ok(ack) => return Ok(ack.sequence),
                Err((kind, source)) => {
                    let lasting = matches!(
                        kind,
                        jetstream::context::PublishErrorKind::MaxPayloadExceeded
                    );
                    if lasting || tokio::time::Instant::now() + wait > deadline {
                        let doing = if lasting {
                            format!("publishing `{name}` to `{subject}`")
                        } else {
                            // A publish the client sent, or holds while it
                            // reconnects, may still be stored.
                            format!(
                                "publishing `{name}` to `{subject}` (tried for {:?}; the server may still store it, and notifying the same event again is safe: within the duplicate window the server drops a copy with its id)",
                                inner.publish_patience
                            )
                        };
                        return Err(NatsError::Request { doing, source });
                    }
                    tracing::debug!(event = %name, error = %source, "publish not acknowledged; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Whether an event name (or a `prefix.*` interest entry) makes a subject.
fn valid_event_subject(name: &str) -> bool {
    let name = name.strip_suffix(".*").unwrap_or(name);
    !name.is_empty()
        && name
            .split('.')
            .all(|t| !t.is_empty() && !t.contains(['*', '>', ' ', '\t', '\r', '\n']))
}

impl fmt::Debug for NatsLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsLog")
            .field("url", &self.inner.url)
            .field("stream", &self.inner.stream_name)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Backend for NatsLog {
    /// Durable, shared by processes, and the server schedules retries;
    /// not ordered across redeliveries.
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .durable(true)
            .schedules_retries(true)
            .shared_subscriptions(true)
    }

    async fn append(&self, event: AnyEvent) -> Result<Position, WriteError> {
        if self.inner.closed.load(SeqCst) {
            return Err(WriteError::Closed(event));
        }
        let sequence = self.publish(&event).await?;
        self.inner.published.fetch_max(sequence, SeqCst);
        Ok(sequence)
    }

    async fn reader(
        &self,
        subscription: &str,
        from: StartFrom,
    ) -> Result<Box<dyn Reader>, ReadError> {
        self.reader_for(subscription, from, &Interest::All).await
    }

    async fn reader_for(
        &self,
        subscription: &str,
        from: StartFrom,
        interest: &Interest,
    ) -> Result<Box<dyn Reader>, ReadError> {
        let consumer = self.ensure_consumer(subscription, from, interest).await?;
        Ok(Box::new(NatsReader::new(
            self.clone(),
            consumer,
            subscription,
        )))
    }

    /// Whether the consumer has every message before `up_to`
    /// acknowledged, or nothing left to deliver or settle at all.
    async fn finished_before(
        &self,
        subscription: &str,
        up_to: Position,
    ) -> Result<Option<bool>, ReadError> {
        let name = consumer_name(subscription);
        let info = self
            .inner
            .stream
            .consumer_info(&name)
            .await
            .map_err(|err| {
                NatsError::request(format!("reading consumer `{name}`"))(Box::new(err))
            })?;
        // Every message before `up_to` acknowledged; or, for a process
        // that notified nothing, nothing left at all.
        let reader = self
            .inner
            .readers
            .lock()
            .expect("readers lock")
            .get(&name)
            .and_then(std::sync::Weak::upgrade);
        if let Some(held) = reader {
            held.told(info.num_pending, info.num_ack_pending as u64);
        }
        let finished = (info.num_pending == 0 && info.num_ack_pending == 0)
            || (up_to > 0 && info.ack_floor.stream_sequence.saturating_add(1) >= up_to);
        Ok(Some(finished))
    }

    fn close(&self) {
        self.inner.closed.store(true, SeqCst);
    }

    fn dead_letter_store(&self) -> Option<Arc<dyn DeadLetterStore>> {
        Some(self.dead_letters())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_valid_and_distinct() {
        assert_eq!(consumer_name("welcome-email"), "welcome-email");
        let dotted = consumer_name("user.welcome");
        assert!(valid_name(&dotted), "{dotted}");
        assert_ne!(dotted, consumer_name("user_welcome"));
        assert_ne!(dotted, consumer_name("user welcome"));
    }

    #[test]
    fn a_filter_only_widens() {
        assert_eq!(widest("p.>", "p.a.b", "p"), "p.>");
        assert_eq!(widest("p.a.b", "p.>", "p"), "p.>");
        assert_eq!(widest("p.a.>", "p.a.b", "p"), "p.a.>");
        assert_eq!(widest("p.a.b", "p.a.c", "p"), "p.>");
        assert_eq!(widest("p.a.b", "p.a.b", "p"), "p.a.b");
        assert_eq!(widest("", "p.a.b", "p"), "p.a.b");
    }

    #[test]
    fn subjects() {
        assert!(valid_subject("shop.orders"));
        assert!(!valid_subject("shop..orders"));
        assert!(!valid_subject("shop.*"));
        assert!(valid_event_subject("user.created"));
        assert!(valid_event_subject("user.*"));
        assert!(!valid_event_subject("user created"));
        assert!(covers("shop.>", "shop.>"));
        assert!(covers(">", "shop.>"));
        assert!(!covers("other.>", "shop.>"));
    }
}
