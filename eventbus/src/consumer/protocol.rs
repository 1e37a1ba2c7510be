use super::batcher::{BatchConfig, Batcher, Sink};
use super::{BoxError, Consumer, Context};
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
    sink: Option<S>,
    config: BatchConfig,
    batcher: Option<Batcher<P::Output>>,
    _protocol: PhantomData<fn(&P)>,
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
            sink: Some(sink),
            config: BatchConfig::default(),
            batcher: None,
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
#[derive(Debug, thiserror::Error)]
#[error("protocol consumer was not started by a bus; subscribe it with `Bus::subscribe`")]
struct NotStarted;

impl<P, S> Consumer for ProtocolConsumer<P, S>
where
    P: ?Sized + Protocol + 'static,
    P::Output: Sync,
    S: Sink<P::Output>,
{
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let Some(payload) = dispatch::<P>(event) else {
            return Ok(());
        };
        let batcher = self.batcher.as_ref().ok_or(NotStarted)?;
        batcher.push(event.clone(), payload).await?;
        Ok(())
    }

    fn interest(&self) -> Filter {
        Filter::all().protocol::<P>()
    }

    fn check(&self) -> Result<(), BoxError> {
        if self.config.size == 0 {
            return Err(ZeroBatchSize.into());
        }
        Ok(())
    }

    fn describe(&self) -> Option<String> {
        Some(format!("ProtocolConsumer<{}>", P::NAME))
    }

    fn start(&mut self, context: &Context) {
        if let Some(sink) = self.sink.take() {
            self.batcher = Some(Batcher::start_counted(
                sink,
                self.config.clone(),
                context.dead_letters().clone(),
                Arc::clone(&context.buffered),
            ));
        }
    }

    fn flush(&self) -> impl Future<Output = ()> + Send {
        let batcher = self.batcher.clone();
        async move {
            if let Some(batcher) = batcher {
                batcher.flush().await;
            }
        }
    }
}
