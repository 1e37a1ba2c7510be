//! Consumers: where side effects happen.
//!
//! A [`Consumer`] handles the events of one subscription. Write one by
//! implementing the trait, wrap a closure with [`consumer_fn`] (or
//! [`consumer_fn_with`], which hands it a clone of your state), or use a
//! [`ProtocolConsumer`], the base consumer of a protocol, which turns events
//! into payloads and hands them to a [`Sink`] in batches.
//!
//! The trait uses `async fn`-style methods returning `impl Future + Send`
//! rather than `#[async_trait]`: the bus calls `handle` once per event, and
//! `async_trait` would allocate a box on every call.

mod batcher;
mod permanent;
mod protocol;
mod retry_after;

pub use self::batcher::{BatchConfig, Batcher, BatcherStopped, FnSink, Sink, sink_fn};
pub use self::permanent::Permanent;
pub use self::protocol::{ProtocolBatching, ProtocolConsumer};
pub use self::retry_after::RetryAfter;

use crate::dead_letter::DeadLetterWriter;
use crate::event::AnyEvent;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// The error a consumer returns: anything that is an error, `anyhow` and
/// `std::io::Error` included, through `?` or `.into()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Handles the events of one subscription.
///
/// A returned error or a panic affects only this event in this subscription:
/// the bus retries it according to the subscription's
/// [`Retry`](crate::Retry) policy, then dead-letters it.
///
/// # Examples
///
/// ```
/// use eventbus::{AnyEvent, BoxError, Consumer};
///
/// struct SearchIndexer;
///
/// impl Consumer for SearchIndexer {
///     async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
///         let json = event.to_json()?;
///         // Send `json` to the search index here.
///         let _ = json;
///         Ok(())
///     }
/// }
/// ```
pub trait Consumer: Send + Sync + 'static {
    /// Handles one event.
    ///
    /// # Errors
    ///
    /// Any error makes the bus retry the event, then dead-letter it.
    fn handle(&self, event: &AnyEvent) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// The events this consumer wants, narrowing the subscription's own
    /// filter; events it does not want never reach `handle`. The default is
    /// every event.
    fn interest(&self) -> crate::Filter {
        crate::Filter::all()
    }

    /// Finishes buffered work: called when the bus drains and when the
    /// subscription stops. A batching consumer flushes here.
    fn flush(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// How the [registry file](crate::registry::assert_fresh_with) names
    /// this consumer on its subscription's line, such as
    /// `ProtocolConsumer<Trackable>`. The default, `None`, leaves it out.
    ///
    /// Keep it the same from build to build: the file is committed.
    fn describe(&self) -> Option<String> {
        None
    }
}

/// A shared consumer: keep one `Arc` to inspect it while the bus runs the
/// other.
impl<C: Consumer> Consumer for Arc<C> {
    fn handle(&self, event: &AnyEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        C::handle(self, event)
    }

    fn interest(&self) -> crate::Filter {
        C::interest(self)
    }

    fn flush(&self) -> impl Future<Output = ()> + Send {
        C::flush(self)
    }

    fn describe(&self) -> Option<String> {
        C::describe(self)
    }
}

/// What [`Bus::subscribe`](crate::Bus::subscribe) takes: a [`Consumer`], or
/// something that becomes one once its subscription starts and it can be
/// given the subscription's [`Context`], such as a [`ProtocolConsumer`],
/// whose batcher writes to the subscription's dead letters.
///
/// Every consumer is one, as it is.
///
/// It need not be `'static` itself: only the consumer it becomes runs in
/// the subscription's task.
pub trait IntoConsumer: Send {
    /// The consumer it becomes.
    type Consumer: Consumer;

    /// Becomes the consumer of a starting subscription.
    ///
    /// # Errors
    ///
    /// A setting that cannot work, and why:
    /// [`start`](crate::SubscriptionBuilder::start) returns it, naming it,
    /// before anything runs.
    fn into_consumer(self, context: &Context) -> Result<Self::Consumer, BoxError>;

    /// The events the consumer wants; see [`Consumer::interest`].
    fn interest(&self) -> crate::Filter;

    /// How the registry file names the consumer; see
    /// [`Consumer::describe`].
    fn describe(&self) -> Option<String>;
}

impl<C: Consumer> IntoConsumer for C {
    type Consumer = C;

    fn into_consumer(self, _context: &Context) -> Result<C, BoxError> {
        Ok(self)
    }

    fn interest(&self) -> crate::Filter {
        Consumer::interest(self)
    }

    fn describe(&self) -> Option<String> {
        Consumer::describe(self)
    }
}

/// What an [`IntoConsumer`] is given when its subscription starts.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) subscription: Arc<str>,
    pub(crate) dead_letters: DeadLetterWriter,
    /// Payloads the consumer holds unwritten, for the subscription's stats.
    pub(crate) buffered: Arc<std::sync::atomic::AtomicU64>,
}

impl Context {
    /// The subscription's name.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// Where the consumer records events it gave up on outside of `handle`,
    /// such as the events of a batch its sink rejected for good.
    pub fn dead_letters(&self) -> &DeadLetterWriter {
        &self.dead_letters
    }
}

/// A consumer made from an async closure that takes the event by value.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = eventbus::Bus::builder().build()?;
/// bus.subscribe(
///     "log",
///     eventbus::consumer_fn(|event: eventbus::AnyEvent| async move {
///         println!("{} {}", event.name(), event.meta().id);
///         Ok(())
///     }),
/// )
/// .start()
/// .await?;
/// # Ok(()) }
/// ```
pub fn consumer_fn<F, Fut>(f: F) -> FnConsumer<F>
where
    F: Fn(AnyEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    FnConsumer { f }
}

/// The consumer [`consumer_fn`] returns.
#[derive(Clone)]
pub struct FnConsumer<F> {
    f: F,
}

impl<F> fmt::Debug for FnConsumer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnConsumer").finish_non_exhaustive()
    }
}

impl<F, Fut> Consumer for FnConsumer<F>
where
    F: Fn(AnyEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    fn handle(&self, event: &AnyEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        (self.f)(event.clone())
    }
}

/// A consumer made from an async closure that gets its own clone of `state`
/// with each event: a connection pool, a client, an `Arc` of your own. One
/// clone at the call site is all it takes, where [`consumer_fn`] needs one
/// outside the closure and one inside it.
///
/// # Examples
///
/// ```
/// use eventbus::{AnyEvent, consumer_fn_with};
/// use std::sync::{Arc, Mutex};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = eventbus::Bus::builder().build()?;
/// let audit_log: Arc<Mutex<Vec<String>>> = Arc::default();
/// bus.subscribe(
///     "audit",
///     consumer_fn_with(Arc::clone(&audit_log), |log, event: AnyEvent| async move {
///         log.lock().unwrap().push(event.name().to_owned());
///         Ok(())
///     }),
/// )
/// .start()
/// .await?;
/// # Ok(()) }
/// ```
pub fn consumer_fn_with<S, F, Fut>(state: S, f: F) -> FnWithConsumer<S, F>
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, AnyEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    FnWithConsumer { state, f }
}

/// The consumer [`consumer_fn_with`] returns.
#[derive(Clone)]
pub struct FnWithConsumer<S, F> {
    state: S,
    f: F,
}

impl<S, F> fmt::Debug for FnWithConsumer<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnWithConsumer").finish_non_exhaustive()
    }
}

impl<S, F, Fut> Consumer for FnWithConsumer<S, F>
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, AnyEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    fn handle(&self, event: &AnyEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        (self.f)(self.state.clone(), event.clone())
    }
}
