//! The batcher: collects payloads and writes them to a sink in batches, on
//! size, on a timeout, and when asked to flush; retries a failed write, then
//! dead-letters the events behind the batch.

use super::BoxError;
use crate::dead_letter::DeadLetterWriter;
use crate::event::AnyEvent;
use crate::retry::{Attempted, Attempts, Failure, Retry};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Where batches of payloads go: an analytics API, an email service, a file.
///
/// # Examples
///
/// ```
/// use eventbus::{BoxError, Sink, Track};
///
/// struct Analytics;
///
/// impl Sink<Track> for Analytics {
///     async fn write(&self, batch: &[Track]) -> Result<(), BoxError> {
///         // POST the batch to the analytics service here.
///         let _ = batch;
///         Ok(())
///     }
/// }
/// ```
pub trait Sink<T>: Send + Sync + 'static {
    /// Writes one batch. On error the whole batch is retried.
    ///
    /// # Errors
    ///
    /// Any error makes the batcher retry the batch, then dead-letter the
    /// events it came from.
    fn write(&self, batch: &[T]) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// A shared sink: keep one `Arc` to inspect it while the bus writes to it.
impl<T, S: Sink<T>> Sink<T> for Arc<S> {
    fn write(&self, batch: &[T]) -> impl Future<Output = Result<(), BoxError>> + Send {
        S::write(self, batch)
    }
}

/// A sink made from an async closure that takes each batch by value.
pub fn sink_fn<T, F, Fut>(f: F) -> FnSink<T, F>
where
    T: Clone + Send + Sync + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    FnSink {
        f,
        _payload: PhantomData,
    }
}

/// The sink [`sink_fn`] returns.
pub struct FnSink<T, F> {
    f: F,
    _payload: PhantomData<fn(T)>,
}

impl<T, F> fmt::Debug for FnSink<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnSink").finish_non_exhaustive()
    }
}

impl<T, F, Fut> Sink<T> for FnSink<T, F>
where
    T: Clone + Send + Sync + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    fn write(&self, batch: &[T]) -> impl Future<Output = Result<(), BoxError>> + Send {
        (self.f)(batch.to_vec())
    }
}

/// When a [`Batcher`] writes, and how it retries.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Write when this many payloads are waiting. Default 100.
    pub size: usize,
    /// Write when the oldest waiting payload is this old. Default 1 second.
    pub timeout: Duration,
    /// How a failed write is retried before its events are dead-lettered.
    pub retry: Retry,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            size: 100,
            timeout: Duration::from_secs(1),
            retry: Retry::default(),
        }
    }
}

enum Message<T> {
    Item(AnyEvent, T),
    Flush(oneshot::Sender<()>),
}

/// Collects payloads and writes them to a [`Sink`] in batches, from a task
/// of its own. Cheap to clone.
///
/// [`push`](Batcher::push) waits while a full batch is being written, so a
/// slow sink slows its subscription down instead of piling up payloads.
///
/// Dropping the last clone stops the task, even in the middle of a write
/// that hangs, so an aborted subscription leaves nothing running; call
/// [`flush`](Batcher::flush) first to write what is waiting.
pub struct Batcher<T> {
    tx: mpsc::Sender<Message<T>>,
    _task: Arc<AbortOnDrop>,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
            _task: Arc::clone(&self._task),
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> fmt::Debug for Batcher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

/// Returned by [`Batcher::push`] when the batcher's task has ended.
#[derive(Debug, thiserror::Error)]
#[error("batcher has stopped")]
pub struct BatcherStopped;

impl<T: Send + 'static> Batcher<T> {
    /// Starts a batcher writing to `sink`. Events of batches that fail for
    /// good go to `dead_letters`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, or when `config.size` is 0.
    pub fn start<S: Sink<T>>(sink: S, config: BatchConfig, dead_letters: DeadLetterWriter) -> Self {
        Self::start_counted(sink, config, dead_letters, Arc::default())
    }

    /// [`start`](Batcher::start), keeping in `buffered` how many payloads
    /// wait unwritten: a subscription's stats show it.
    pub(crate) fn start_counted<S: Sink<T>>(
        sink: S,
        config: BatchConfig,
        dead_letters: DeadLetterWriter,
        buffered: Arc<AtomicU64>,
    ) -> Self {
        assert!(config.size > 0, "`BatchConfig::size` must be at least 1");
        // The queue in front of the batcher holds at most one batch (and
        // never more than the channel allows).
        let (tx, rx) = mpsc::channel(config.size.min(1 << 16));
        let run = run(rx, Arc::new(sink), config, dead_letters, buffered);
        // Started by a subscription, the sink is part of its handler: a
        // `drain` from inside the sink must know it would wait on itself.
        let task = match crate::handling::current() {
            Some(handling) => tokio::spawn(handling.scope(run)),
            None => tokio::spawn(run),
        };
        Batcher {
            tx,
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
        }
    }

    /// Adds a payload, and the event it came from (dead-lettered if the
    /// batch fails for good).
    ///
    /// # Errors
    ///
    /// [`BatcherStopped`] when the batcher's task has ended.
    pub async fn push(&self, event: AnyEvent, payload: T) -> Result<(), BatcherStopped> {
        self.tx
            .send(Message::Item(event, payload))
            .await
            .map_err(|_| BatcherStopped)
    }

    /// Writes whatever is waiting and resolves once it is written (or
    /// dead-lettered).
    pub async fn flush(&self) {
        let (ack, acked) = oneshot::channel();
        if self.tx.send(Message::Flush(ack)).await.is_ok() {
            let _ = acked.await;
        }
    }
}

/// The payloads a batcher holds and has not written. Dropped with some
/// still in it, the batcher's task was cut off (the bus dropped or the
/// runtime shut down without `shutdown()`): say so, since they are gone.
struct Unwritten<T> {
    events: Vec<AnyEvent>,
    payloads: Vec<T>,
}

impl<T> Drop for Unwritten<T> {
    fn drop(&mut self) {
        if !self.payloads.is_empty() {
            tracing::warn!(
                unwritten = self.payloads.len(),
                "batched payloads were dropped without being written: the bus was dropped, or the runtime shut down, without `Bus::shutdown`",
            );
        }
    }
}

async fn run<T: Send, S: Sink<T>>(
    mut rx: mpsc::Receiver<Message<T>>,
    sink: Arc<S>,
    config: BatchConfig,
    dead_letters: DeadLetterWriter,
    buffered: Arc<AtomicU64>,
) {
    let mut buffer = Unwritten {
        events: Vec::with_capacity(config.size.min(1024)),
        payloads: Vec::with_capacity(config.size.min(1024)),
    };
    let Unwritten { events, payloads } = &mut buffer;
    let mut deadline: Option<Instant> = None;
    loop {
        let message = match deadline {
            Some(at) => tokio::select! {
                message = rx.recv() => message,
                () = tokio::time::sleep_until(at) => {
                    write(&*sink, &config, &dead_letters, events, payloads, &buffered).await;
                    deadline = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match message {
            Some(Message::Item(event, payload)) => {
                buffered.fetch_add(1, Relaxed);
                events.push(event);
                payloads.push(payload);
                if payloads.len() == 1 {
                    deadline = Some(Instant::now() + config.timeout);
                }
                if payloads.len() >= config.size {
                    write(&*sink, &config, &dead_letters, events, payloads, &buffered).await;
                    deadline = None;
                }
            }
            Some(Message::Flush(ack)) => {
                write(&*sink, &config, &dead_letters, events, payloads, &buffered).await;
                deadline = None;
                let _ = ack.send(());
            }
            None => {
                write(&*sink, &config, &dead_letters, events, payloads, &buffered).await;
                return;
            }
        }
    }
}

/// One batch's attempts at its sink.
struct Batch<'a, S, T> {
    sink: &'a S,
    /// Held as the batcher holds it: `&mut` needs the payloads `Send`
    /// only, where a shared slice would need them `Sync`.
    payloads: &'a mut Vec<T>,
}

impl<T: Send, S: Sink<T>> Attempts for Batch<'_, S, T> {
    async fn attempt(&mut self, _number: u32, _retry: bool) -> Result<(), Failure> {
        crate::retry::attempt(self.sink.write(self.payloads)).await
    }

    async fn retrying(
        &mut self,
        number: u32,
        errors: &[String],
        delay: Duration,
        _first_failed_at: chrono::DateTime<chrono::Utc>,
    ) {
        tracing::warn!(
            batch = self.payloads.len(),
            attempt = number,
            retry_in = ?delay,
            error = %errors.join(": "),
            "sink write failed; retrying",
        );
    }
}

async fn write<T: Send, S: Sink<T>>(
    sink: &S,
    config: &BatchConfig,
    dead_letters: &DeadLetterWriter,
    events: &mut Vec<AnyEvent>,
    payloads: &mut Vec<T>,
    buffered: &AtomicU64,
) {
    if payloads.is_empty() {
        return;
    }
    let written = payloads.len() as u64;
    let mut batch = Batch {
        sink,
        payloads: &mut *payloads,
    };
    if let Attempted::GaveUp {
        attempts,
        errors,
        first_failed_at,
    } = config.retry.run(&mut batch, 1, None).await
    {
        tracing::error!(
            batch = payloads.len(),
            attempts,
            error = %errors.join(": "),
            "sink rejected a batch for good; dead-lettering its events",
        );
        for event in events.drain(..) {
            dead_letters
                .write(event, errors.clone(), attempts, first_failed_at)
                .await;
        }
    }
    events.clear();
    payloads.clear();
    buffered.fetch_sub(written, Relaxed);
}
