//! A subscription's reader of a JetStream durable pull consumer, and the
//! settling of each delivery on its own.

use super::letters::{NatsDeadLetters, Quarantined};
use super::{NAME_HEADER, NatsError, NatsLog, VERSION_HEADER};
use crate::backend::{Batch, Position, ReadError, Reader, Settle, Settlement};
use crate::event::AnyEvent;
use async_nats::Subject;
use async_nats::jetstream::{AckKind, Message, consumer};
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How often a message that does not decode is delivered (and handed back
/// after [`UNDECODABLE_WAIT`]) before it is quarantined: a process of a
/// newer version may decode it.
const UNDECODABLE_TRIES: u32 = 4;
const UNDECODABLE_WAIT: Duration = Duration::from_secs(1);

/// How long a reader of a closed log waits for one more message before it
/// reports the end.
const CLOSED_IDLE: Duration = Duration::from_millis(500);

/// How long one pull request waits on the server; the client keeps one
/// open. A stopped reader's last request stays on the server until then,
/// so it also bounds how long a handed-back message waits (see
/// `hand_back`).
const PULL_EXPIRES: Duration = Duration::from_secs(5);

pub(super) struct NatsReader {
    log: NatsLog,
    consumer: consumer::PullConsumer,
    /// The pull stream, opened at the first read with the subscription's
    /// demand as its batch size.
    messages: Option<consumer::pull::Stream>,
    held: Arc<Held>,
    /// The position the next delivery gets: positions number this
    /// reader's deliveries, a redelivery included.
    next: Position,
    /// Messages the server still had for the consumer when the last one
    /// arrived.
    pending: u64,
    /// A closed log's reader saw a message published after the close.
    ended: bool,
    /// The last read failed; the next ones wait instead of failing again.
    failing: bool,
    /// For a closed log: the stream's last sequence when this reader saw
    /// the close.
    close_bound: Option<u64>,
    progress: tokio::task::JoinHandle<()>,
}

/// The deliveries this process holds, unsettled: settled from any task,
/// and their claims extended while they are held.
pub(super) struct Held {
    taken: Mutex<HashMap<Position, Taken>>,
    acks: mpsc::UnboundedSender<Ack>,
    /// Messages the server had not delivered yet, at its last word.
    pending: AtomicU64,
    /// Those plus the ones held here: the subscription's lag.
    lag: Arc<AtomicU64>,
}

impl Held {
    /// Sets the lag from what the server last said and what is held.
    fn count(&self, taken: &HashMap<Position, Taken>) {
        self.lag
            .store(self.pending.load(SeqCst) + taken.len() as u64, SeqCst);
    }

    /// What the server says of the whole subscription, in every process:
    /// messages not delivered yet, and delivered but not settled.
    pub(super) fn told(&self, not_delivered: u64, unsettled: u64) {
        self.pending.store(not_delivered, SeqCst);
        self.lag.store(not_delivered + unsettled, SeqCst);
    }
}

struct Taken {
    /// Where the message's acknowledgement goes.
    reply: Subject,
    since: Instant,
}

enum Ack {
    Send(Subject, AckKind),
    /// Records a message that does not decode, then terminates it.
    Quarantine(Subject, Quarantined),
    /// Answered once every acknowledgement queued before it was sent.
    Flushed(oneshot::Sender<()>),
}

impl NatsReader {
    pub(super) fn new(log: NatsLog, consumer: consumer::PullConsumer, subscription: &str) -> Self {
        let (acks, queue) = mpsc::unbounded_channel();
        let held = Arc::new(Held {
            taken: Mutex::new(HashMap::new()),
            acks,
            pending: AtomicU64::new(0),
            lag: Arc::new(AtomicU64::new(0)),
        });
        log.watch(&consumer.cached_info().name, &held);
        tokio::spawn(send_acks(
            queue,
            log.inner.client.clone(),
            log.dead_letters(),
            subscription.to_owned(),
        ));
        let progress = tokio::spawn(extend_claims(Arc::downgrade(&held), log.inner.ack_wait / 3));
        NatsReader {
            log,
            consumer,
            messages: None,
            held,
            next: 1,
            pending: 0,
            ended: false,
            failing: false,
            close_bound: None,
            progress,
        }
    }

    async fn open(&mut self, max: usize) -> Result<(), ReadError> {
        if self.messages.is_some() {
            return Ok(());
        }
        let name = &self.consumer.cached_info().name;
        let messages = self
            .consumer
            .stream()
            .max_messages_per_batch(max)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_EXPIRES / 3)
            .messages()
            .await
            .map_err(|err| {
                NatsError::request(format!("pulling from consumer `{name}`"))(Box::new(err))
            })?;
        self.messages = Some(messages);
        Ok(())
    }

    /// Turns one message into a delivery, or settles it at once: a message
    /// that does not decode is terminated with an error logged, since no
    /// attempt could handle it.
    fn take(&mut self, message: Message) -> Option<(Position, AnyEvent, u32)> {
        let (attempt, sequence, pending) = match message.info() {
            Ok(info) => (
                u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
                info.stream_sequence,
                info.pending,
            ),
            Err(_) => (1, 0, self.pending),
        };
        self.pending = pending;
        let decoded = decode(&self.log, &message);
        let subject = message.subject.to_string();
        let name = message
            .headers
            .as_ref()
            .and_then(|h| h.get(NAME_HEADER))
            .map_or_else(|| subject.clone(), |v| v.as_str().to_owned());
        let Some(reply) = message.reply.clone() else {
            // Not from a consumer: nothing to settle, nothing to deliver.
            return None;
        };
        match decoded {
            Ok(event) => {
                let position = self.next;
                self.next += 1;
                self.held.pending.store(pending, SeqCst);
                self.held.taken.lock().expect("held lock").insert(
                    position,
                    Taken {
                        reply,
                        since: Instant::now(),
                    },
                );
                Some((position, event, attempt))
            }
            Err(reason) if attempt < UNDECODABLE_TRIES => {
                // Maybe written by a newer version that another process
                // of a rolling deploy runs: handed back for it first.
                tracing::warn!(
                    stream = %self.log.inner.stream_name,
                    sequence,
                    attempt,
                    "a message does not decode here; handed back for a process that may decode it: `{name}`: {reason}",
                );
                let _ = self
                    .held
                    .acks
                    .send(Ack::Send(reply, AckKind::Nak(Some(UNDECODABLE_WAIT))));
                None
            }
            Err(reason) => {
                let reason = format!("`{name}` does not decode: {reason}");
                tracing::error!(
                    stream = %self.log.inner.stream_name,
                    sequence,
                    "a message does not decode, so the subscription cannot handle it; it is quarantined and stays in the stream: {reason}",
                );
                let record = Quarantined {
                    sequence,
                    subject,
                    name,
                    reason,
                    at: chrono::Utc::now(),
                };
                let _ = self.held.acks.send(Ack::Quarantine(reply, record));
                None
            }
        }
    }
}

/// Whether a pull error ends the client's pull stream, which is then opened
/// again.
fn ends(err: &consumer::pull::MessagesError) -> bool {
    use consumer::pull::MessagesErrorKind as Kind;
    matches!(
        err.kind(),
        Kind::ConsumerDeleted | Kind::NoResponders | Kind::RequestLimitExceeded
    )
}

/// The event a message carries: named by its header (or, from a publisher
/// that sets none, by its subject) at the version its header gives (or the
/// newest registered).
fn decode(log: &NatsLog, message: &Message) -> Result<AnyEvent, String> {
    decode_parts(
        log,
        &message.subject,
        message.headers.as_ref(),
        &message.payload,
    )
}

/// [`decode`] for a message read some other way (by its sequence).
pub(super) fn decode_parts(
    log: &NatsLog,
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<AnyEvent, String> {
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let name = match header(NAME_HEADER) {
        Some(name) => name,
        None => subject
            .strip_prefix(log.inner.prefix.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .ok_or_else(|| format!("subject `{subject}` names no event"))?
            .to_owned(),
    };
    let registry = crate::registry::registry();
    let version = match header(VERSION_HEADER) {
        Some(version) => version
            .parse::<u32>()
            .map_err(|_| format!("version header `{version}` is not a version"))?,
        None => registry
            .latest(&name)
            .ok_or_else(|| format!("no event named `{name}` is registered"))?
            .version(),
    };
    registry
        .decode(&name, version, payload)
        .map_err(|err| err.to_string())
}

/// How long a flush waits for the server's confirmation.
const CONFIRM_WAIT: Duration = Duration::from_secs(5);

/// Sends acknowledgements in the order they were queued, off the path of
/// the deliveries. A flush sends the last one again with a reply subject
/// and waits for the server's answer: the server applies one consumer's
/// acknowledgements in order, so once it answers, it applied every one
/// before, and the counts read afterwards count nothing twice. (Asking
/// for an answer to every acknowledgement cost a quarter of the delivery
/// rate.)
async fn send_acks(
    mut queue: mpsc::UnboundedReceiver<Ack>,
    client: async_nats::Client,
    letters: Arc<NatsDeadLetters>,
    subscription: String,
) {
    let consumer = &subscription;
    let inbox = client.new_inbox();
    let mut confirmations = match client.subscribe(format!("{inbox}.*")).await {
        Ok(subscriber) => Some(subscriber),
        Err(err) => {
            tracing::warn!(%consumer, error = %err, "cannot subscribe to acknowledgement confirmations; flushes do not wait for the server");
            None
        }
    };
    // The last acknowledgement sent and not yet confirmed.
    let mut last: Option<(Subject, AckKind)> = None;
    let mut asked: u64 = 0;
    // Flushes waiting for confirmation `n`, since when.
    let mut flushes: Vec<(u64, Instant, oneshot::Sender<()>)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            ack = queue.recv() => {
                let Some(ack) = ack else { break };
                let (reply, kind) = match ack {
                    Ack::Send(reply, kind) => (reply, kind),
                    Ack::Quarantine(reply, record) => {
                        // Terminated only once recorded; otherwise handed
                        // back, to be recorded at its next delivery.
                        match letters.quarantine(&subscription, &record).await {
                            Ok(()) => (reply, AckKind::Term),
                            Err(err) => {
                                tracing::error!(
                                    %consumer,
                                    error = %crate::failure::error_chain(&err).join(": "),
                                    "could not record a message that does not decode; it is delivered again later",
                                );
                                (reply, AckKind::Nak(Some(Duration::from_secs(5))))
                            }
                        }
                    }
                    Ack::Flushed(done) => {
                        match (last.take(), &confirmations) {
                            (Some((reply, kind)), Some(_)) => {
                                asked += 1;
                                let confirm = format!("{inbox}.{asked}");
                                // Sent again: applying it twice changes
                                // nothing, and the answer comes after
                                // every earlier one was applied.
                                match client.publish_with_reply(reply, confirm, kind.into()).await {
                                    Ok(()) => flushes.push((asked, Instant::now(), done)),
                                    Err(err) => {
                                        unsent(consumer, &err);
                                        let _ = done.send(());
                                    }
                                }
                            }
                            _ => {
                                let _ = done.send(());
                            }
                        }
                        continue;
                    }
                };
                if let Err(err) = client.publish(reply.clone(), kind.into()).await {
                    unsent(consumer, &err);
                }
                // Only a final settlement is sent again at a flush: applied
                // twice it changes nothing, where a second nak would put a
                // message another process holds by now back in line.
                if matches!(kind, AckKind::Ack | AckKind::Term) {
                    last = Some((reply, kind));
                }
            }
            Some(confirmed) = async { confirmations.as_mut()?.next().await } => {
                if let Some(n) = confirmed.subject.rsplit('.').next().and_then(|n| n.parse::<u64>().ok()) {
                    flushes.retain(|(asked, _, _)| *asked > n);
                    // The senders of those dropped: their flushes end.
                }
            }
            _ = tick.tick() => {
                let before = flushes.len();
                flushes.retain(|(_, since, _)| since.elapsed() < CONFIRM_WAIT);
                if flushes.len() < before {
                    tracing::warn!(%consumer, "the server did not confirm the acknowledgements of a stop in time; the counts it reports may count some messages twice");
                }
            }
        }
    }
}

/// An acknowledgement that could not be sent: the server delivers the
/// message again after its ack wait, a duplicate, never a loss.
fn unsent(consumer: &str, err: &dyn std::error::Error) {
    tracing::warn!(%consumer, error = %err, "could not settle a message; the server delivers it again");
}

/// Tells the server, every `every`, that the messages held longer than that
/// are still being worked on, so it does not give them to another process.
async fn extend_claims(held: std::sync::Weak<Held>, every: Duration) {
    let every = every.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(held) = held.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut taken = held.taken.lock().expect("held lock");
        for t in taken.values_mut() {
            if now.duration_since(t.since) >= every {
                t.since = now;
                let _ = held
                    .acks
                    .send(Ack::Send(t.reply.clone(), AckKind::Progress));
            }
        }
    }
}

impl Settle for Held {
    fn settle(&self, position: Position, settlement: Settlement) {
        let mut held = self.taken.lock().expect("held lock");
        let Some(taken) = held.remove(&position) else {
            return;
        };
        self.count(&held);
        drop(held);
        let kind = match settlement {
            Settlement::Done => AckKind::Ack,
            Settlement::Retry(delay) => AckKind::Nak(Some(delay)),
            Settlement::DeadLettered => AckKind::Term,
        };
        let _ = self.acks.send(Ack::Send(taken.reply, kind));
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("taken", &self.taken.lock().map(|t| t.len()).unwrap_or(0))
            .finish()
    }
}

impl fmt::Debug for NatsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsReader")
            .field("consumer", &self.consumer.cached_info().name)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Reader for NatsReader {
    async fn next(&mut self, max: usize) -> Result<Option<Batch>, ReadError> {
        if self.ended {
            return Ok(None);
        }
        self.open(max).await?;
        let closed = self.log.inner.closed.load(SeqCst);
        if closed && self.close_bound.is_none() {
            // Where the stream ended when this process closed the log (or
            // soon after): what other processes publish later is theirs.
            let mut stream = self.log.inner.stream.clone();
            let last = tokio::time::timeout(CLOSED_IDLE, stream.info())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|info| info.state.last_sequence);
            let published = self.log.inner.published.load(SeqCst);
            self.close_bound = Some(last.unwrap_or(published).max(published));
        }
        let messages = self.messages.as_mut().expect("opened");
        // Awaiting the stream's next item is cancel safe: a message is
        // only taken from it when the future completes.
        let first = loop {
            let item = if closed {
                match tokio::time::timeout(CLOSED_IDLE, messages.next()).await {
                    Ok(item) => item,
                    Err(_) => return Ok(None),
                }
            } else {
                messages.next().await
            };
            // An outage is reported once (the subscription shows it until
            // a message comes); while it lasts, the client reconnects and
            // pulls again by itself, and this read waits for it rather
            // than have the subscription back off further and further.
            match item {
                Some(Err(err)) if self.failing && !ends(&err) => {
                    tracing::debug!(error = %err, "still cannot pull; waiting for the server");
                }
                item => break item,
            }
        };
        let mut items = vec![first];
        while items.len() < max {
            match messages.next().now_or_never() {
                Some(item) => items.push(item),
                None => break,
            }
        }
        let mut deliveries = Vec::with_capacity(items.len());
        let mut failure = None;
        for item in items {
            let message = match item {
                Some(Ok(message)) => message,
                // Messages pulled with it are still taken: an error says
                // nothing of them.
                Some(Err(err)) => {
                    if ends(&err) {
                        self.messages = None;
                    }
                    failure.get_or_insert(err);
                    continue;
                }
                None => {
                    self.messages = None;
                    continue;
                }
            };
            self.failing = false;
            if closed
                && self.close_bound.is_some_and(|bound| {
                    message
                        .info()
                        .is_ok_and(|info| info.stream_sequence > bound)
                })
            {
                // Published after this process closed the log: left to
                // the processes still running.
                if let Some(reply) = message.reply.clone() {
                    let _ = self.held.acks.send(Ack::Send(reply, AckKind::Nak(None)));
                }
                self.ended = true;
                continue;
            }
            if let Some(delivery) = self.take(message) {
                deliveries.push(delivery);
            }
        }
        if let Some(err) = failure
            && deliveries.is_empty()
            && !self.ended
        {
            self.failing = true;
            let name = &self.consumer.cached_info().name;
            return Err(
                NatsError::request(format!("pulling from consumer `{name}`"))(Box::new(err)).into(),
            );
        }
        self.held.count(&self.held.taken.lock().expect("held lock"));
        Ok(Some(Batch::from_deliveries(deliveries)))
    }

    /// Nothing to commit: each delivery was settled on its own.
    async fn commit(&mut self, _up_to: Position) -> Result<(), ReadError> {
        Ok(())
    }

    /// Hands what this process still holds back to the server at once, so
    /// another process need not wait for the ack wait, and sends every
    /// queued acknowledgement.
    async fn stop(&mut self) -> Result<(), ReadError> {
        self.hand_back();
        let (done, flushed) = oneshot::channel();
        if self.held.acks.send(Ack::Flushed(done)).is_ok() {
            let _ = flushed.await;
        }
        self.log
            .inner
            .client
            .flush()
            .await
            .map_err(|err| NatsError::request("sending acknowledgements")(Box::new(err)))?;
        // What is left, for the subscription's final stats.
        if let Ok(info) = self.consumer.info().await {
            self.held
                .told(info.num_pending, info.num_ack_pending as u64);
        }
        Ok(())
    }

    fn settler(&self) -> Option<Arc<dyn Settle>> {
        Some(Arc::clone(&self.held) as Arc<dyn Settle>)
    }

    fn position(&self) -> Position {
        self.next
    }

    fn lag(&self) -> Option<u64> {
        Some(self.held.lag.load(SeqCst))
    }

    fn live_lag(&self) -> Option<Arc<AtomicU64>> {
        Some(Arc::clone(&self.held.lag))
    }

    fn head(&self) -> Option<Position> {
        Some(self.next + self.pending)
    }
}

impl NatsReader {
    /// Hands every message this process holds back to the server, to be
    /// delivered again at once: those read and not settled, and those the
    /// client received and the subscription never read (a paused one, or
    /// one stopped mid-read).
    fn hand_back(&mut self) {
        let mut back: Vec<Subject> = self
            .held
            .taken
            .lock()
            .expect("held lock")
            .drain()
            .map(|(_, t)| t.reply)
            .collect();
        if let Some(mut messages) = self.messages.take() {
            while let Some(Some(item)) = messages.next().now_or_never() {
                if let Ok(message) = item
                    && let Some(reply) = message.reply.clone()
                {
                    back.push(reply);
                }
            }
        }
        // Due once this reader's last pull request expired on the server:
        // a 2.9 server hands a message due earlier to that dead request,
        // and may then deliver it twice.
        let due = PULL_EXPIRES + Duration::from_secs(1);
        for reply in back {
            let _ = self
                .held
                .acks
                .send(Ack::Send(reply, AckKind::Nak(Some(due))));
        }
    }
}

impl Drop for NatsReader {
    /// A subscription stopped at a deadline drops its reader without
    /// stopping it: what it held goes back all the same.
    fn drop(&mut self) {
        self.progress.abort();
        self.hand_back();
    }
}
