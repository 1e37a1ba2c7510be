use crate::consumer::{BoxError, Consumer};
use crate::event::{AnyEvent, Event};
use std::fmt;
use std::sync::{Arc, Mutex};

/// A consumer that remembers every event it handles, for assertions in
/// tests. Cheap to clone: clones share one record.
///
/// Subscribe it, notify, call [`Bus::drain`](crate::Bus::drain), then
/// assert. No sleeps needed.
///
/// # Examples
///
/// ```
/// use eventbus::{event, testing::Recorder, Bus};
///
/// #[event]
/// struct OrderPlaced {
///     order_id: u64,
///     cents: u64,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().build()?;
/// let orders = Recorder::new();
/// bus.subscribe("orders", orders.clone()).start().await?;
///
/// bus.notify(OrderPlaced::new(1, 500)).await?;
/// bus.notify(OrderPlaced::new(2, 900)).await?;
/// bus.drain().await?;
///
/// let big = orders.assert_received::<OrderPlaced>(|o| o.cents > 800);
/// assert_eq!(big.order_id, 2);
/// assert_eq!(orders.of::<OrderPlaced>().len(), 2);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<AnyEvent>>>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("events", &self.len())
            .finish()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Recorder::default()
    }

    /// Every event handled so far, in the order handled.
    pub fn events(&self) -> Vec<AnyEvent> {
        self.lock().clone()
    }

    /// The names of the events handled so far, in order.
    pub fn names(&self) -> Vec<String> {
        self.lock().iter().map(|e| e.name().to_owned()).collect()
    }

    /// Every handled event of type `E`, in order.
    pub fn of<E: Event>(&self) -> Vec<E> {
        self.lock()
            .iter()
            .filter_map(|e| e.downcast_ref::<E>().cloned())
            .collect()
    }

    /// How many events were handled.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything recorded.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The first handled `E` for which `matches` holds.
    ///
    /// # Panics
    ///
    /// When there is none, listing what was handled instead.
    #[track_caller]
    pub fn assert_received<E: Event>(&self, matches: impl Fn(&E) -> bool) -> E {
        let events = self.lock();
        if let Some(found) = events
            .iter()
            .filter_map(|e| e.downcast_ref::<E>())
            .find(|e| matches(e))
        {
            return found.clone();
        }
        panic!(
            "no `{}` matching the condition was handled; handled {} event(s):\n{}",
            E::NAME,
            events.len(),
            describe(&events),
        );
    }

    /// Checks that no `E` for which `matches` holds was handled.
    ///
    /// # Panics
    ///
    /// When one was, showing it.
    #[track_caller]
    pub fn assert_not_received<E: Event>(&self, matches: impl Fn(&E) -> bool) {
        let events = self.lock();
        if let Some(found) = events
            .iter()
            .filter_map(|e| e.downcast_ref::<E>())
            .find(|e| matches(e))
        {
            panic!("expected no matching `{}`, but handled {found:?}", E::NAME);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AnyEvent>> {
        self.events.lock().expect("recorder lock")
    }
}

fn describe(events: &[AnyEvent]) -> String {
    events
        .iter()
        .map(|e| format!("  - {e:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Consumer for Recorder {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        self.lock().push(event.clone());
        Ok(())
    }

    fn describe(&self) -> Option<String> {
        Some("Recorder".to_owned())
    }
}
