use super::batcher::{BatchConfig, Batcher, Sink};
use super::{BoxError, Consumer, Context, IntoConsumer};
use crate::event::AnyEvent;
use crate::protocol::{Protocol, dispatch};
use crate::subscription::Filter;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

/// The base consumer of protocol `P`: dispatches `P` on each event, puts the
/// payload into a [`Batcher`], and skips events without an impl (the no-op
/// fallback); those are filtered out before they reach it, so they cost the
/// subscription no demand.
///
/// # Examples
///
/// ```
/// use eventbus::{event, register, sink_fn, Bus, ProtocolConsumer, Track, Trackable};
/// use std::sync::{Arc, Mutex};
///
/// #[event]
/// struct UserCreated {
///     user_id: u64,
/// }
///
/// #[register]
/// impl Trackable for UserCreated {
///     fn track(&self) -> Track {
///         Track::new(self, self.user_id)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sent = Arc::new(Mutex::new(Vec::new()));
/// let sink = {
///     let sent = Arc::clone(&sent);
///     sink_fn(move |batch: Vec<Track>| {
///         sent.lock().unwrap().extend(batch);
///         async { Ok(()) }
///     })
/// };
/// let bus = Bus::builder().build()?;
/// bus.subscribe("tracking", ProtocolConsumer::<dyn Trackable, _>::new(sink))
///     .start()
///     .await?;
///
/// bus.notify(UserCreated::new(7)).await?;
/// bus.drain().await?; // flushes the batch
/// assert_eq!(sent.lock().unwrap()[0].distinct_id, "7");
/// # Ok(()) }
/// ```
pub struct ProtocolConsumer<P: ?Sized + Protocol, S> {
    sink: S,
    config: BatchConfig,
    _protocol: PhantomData<fn(&P)>,
}

/// A started [`ProtocolConsumer`]: dispatches each event to its protocol
/// and hands the payload (of type `T`) to the batcher.
///
/// It names the protocol by a function and a name, not by its trait object
/// type: a type with `dyn YourTrait + '_` in it would not be `'static` for
/// every lifetime, and a subscription started inside `tokio::spawn` is
/// checked for every lifetime.
pub struct ProtocolBatching<T> {
    batcher: Batcher<T>,
    dispatch: fn(&AnyEvent) -> Option<T>,
    protocol: &'static str,
}

impl<T> fmt::Debug for ProtocolBatching<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtocolBatching")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// [`dispatch`] for an [`AnyEvent`], as a function pointer.
fn dispatch_any<P: ?Sized + Protocol>(event: &AnyEvent) -> Option<P::Output> {
    dispatch::<P>(event)
}

impl<P: ?Sized + Protocol, S> fmt::Debug for ProtocolConsumer<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtocolConsumer")
            .field("protocol", &P::NAME)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<P: ?Sized + Protocol, S: Sink<P::Output>> ProtocolConsumer<P, S> {
    /// A consumer writing `P`'s payloads to `sink` with the default
    /// [`BatchConfig`].
    pub fn new(sink: S) -> Self {
        ProtocolConsumer {
            sink,
            config: BatchConfig::default(),
            _protocol: PhantomData,
        }
    }

    /// Changes when batches are written and how failed writes are retried.
    #[must_use]
    pub fn batch(mut self, config: BatchConfig) -> Self {
        self.config = config;
        self
    }
}

/// Returned when a subscription starts with `BatchConfig { size: 0, .. }`.
#[derive(Debug, thiserror::Error)]
#[error("`BatchConfig::size` must be at least 1: it is how many payloads a batch holds")]
struct ZeroBatchSize;

/// Returned by a [`ProtocolConsumer`] used without a bus.
impl<P, S> IntoConsumer for ProtocolConsumer<P, S>
where
    P: ?Sized + Protocol,
    P::Output: Sync,
    S: Sink<P::Output>,
{
    type Consumer = ProtocolBatching<P::Output>;

    fn into_consumer(self, context: &Context) -> Result<ProtocolBatching<P::Output>, BoxError> {
        if self.config.size == 0 {
            return Err(ZeroBatchSize.into());
        }
        Ok(ProtocolBatching {
            batcher: Batcher::start_counted(
                self.sink,
                self.config,
                context.dead_letters().clone(),
                Arc::clone(&context.buffered),
            ),
            dispatch: dispatch_any::<P>,
            protocol: P::NAME,
        })
    }

    fn interest(&self) -> Filter {
        Filter::all().protocol::<P>()
    }

    fn describe(&self) -> Option<String> {
        Some(format!("ProtocolConsumer<{}>", P::NAME))
    }
}

impl<T: Send + Sync + 'static> Consumer for ProtocolBatching<T> {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let Some(payload) = (self.dispatch)(event) else {
            return Ok(());
        };
        self.batcher.push(event.clone(), payload).await?;
        Ok(())
    }

    fn flush(&self) -> impl Future<Output = ()> + Send {
        let batcher = self.batcher.clone();
        async move { batcher.flush().await }
    }

    fn describe(&self) -> Option<String> {
        Some(format!("ProtocolConsumer<{}>", self.protocol))
    }
}
