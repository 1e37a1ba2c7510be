use super::{Event, Meta};
use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

/// A type-erased event: what a bus carries and what consumers receive.
///
/// Cloning is cheap (a reference count), and the concrete event is always one
/// [`downcast_ref`](AnyEvent::downcast_ref) away. Protocol dispatch such as
/// [`track`](crate::track) accepts it as readily as the concrete type.
///
/// # Examples
///
/// ```
/// use eventbus::{event, AnyEvent};
///
/// #[event]
/// struct InvoicePaid {
///     invoice_id: u64,
///     cents: u64,
/// }
///
/// let any = AnyEvent::new(InvoicePaid::new(12, 9_900));
/// assert_eq!(any.name(), "invoice.paid");
/// assert!(any.is::<InvoicePaid>());
/// assert_eq!(any.downcast_ref::<InvoicePaid>().unwrap().cents, 9_900);
///
/// let json = any.to_json().unwrap();
/// assert_eq!(json["invoice_id"], 12);
/// assert_eq!(json["meta"]["name"], "invoice.paid");
/// ```
#[derive(Clone)]
pub struct AnyEvent {
    inner: Arc<dyn Erased>,
}

/// The object-safe face of every [`Event`]; sealed inside this module.
trait Erased: Any + Send + Sync {
    fn meta(&self) -> &Meta;
    fn order_key(&self) -> u64;
    fn as_any(&self) -> &dyn Any;
    fn to_json(&self) -> serde_json::Result<serde_json::Value>;
    fn to_vec(&self) -> serde_json::Result<Vec<u8>>;
    fn type_name(&self) -> &'static str;
    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl<E: Event> Erased for E {
    fn meta(&self) -> &Meta {
        Event::meta(self)
    }

    fn order_key(&self) -> u64 {
        Event::order_key(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
    }

    fn to_vec(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<E>()
    }

    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl AnyEvent {
    /// Whether this is the event's only handle: dropping it frees the
    /// event.
    #[inline]
    pub(crate) fn is_unique(&self) -> bool {
        Arc::strong_count(&self.inner) == 1
    }
}

impl AnyEvent {
    /// Erases the event's type.
    pub fn new<E: Event>(event: E) -> Self {
        AnyEvent {
            inner: Arc::new(event),
        }
    }

    /// The event's stable name, such as `user.created`.
    pub fn name(&self) -> &str {
        &self.inner.meta().name
    }

    /// The event's schema version.
    pub fn version(&self) -> u32 {
        self.inner.meta().version
    }

    /// The event's standard metadata.
    pub fn meta(&self) -> &Meta {
        self.inner.meta()
    }

    /// What the event is kept in order with across processes:
    /// [`Event::order_key`]. Also a natural key for
    /// [`partitioned`](crate::SubscriptionBuilder::partitioned) lanes.
    pub fn order_key(&self) -> u64 {
        self.inner.order_key()
    }

    /// The Rust type behind the event, such as `signup::events::UserCreated`.
    pub fn type_name(&self) -> &'static str {
        self.inner.type_name()
    }

    /// The [`TypeId`] of the concrete event type.
    pub fn event_type_id(&self) -> TypeId {
        self.inner.as_any().type_id()
    }

    /// Whether the event is an `E`.
    pub fn is<E: Event>(&self) -> bool {
        self.inner.as_any().is::<E>()
    }

    /// The concrete event, if it is an `E`.
    pub fn downcast_ref<E: Event>(&self) -> Option<&E> {
        self.inner.as_any().downcast_ref::<E>()
    }

    /// The event as JSON, `meta` included.
    ///
    /// # Errors
    ///
    /// Fails only if a field's own `Serialize` impl fails, for example a map
    /// whose keys are not strings.
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        self.inner.to_json()
    }

    /// The event as JSON bytes, `meta` included: the form durable backends
    /// store, and [`Registry::decode`](crate::registry::Registry::decode)
    /// reads back.
    ///
    /// # Errors
    ///
    /// As [`to_json`](AnyEvent::to_json).
    pub fn to_json_bytes(&self) -> serde_json::Result<Vec<u8>> {
        self.inner.to_vec()
    }

    pub(crate) fn as_any(&self) -> &dyn Any {
        self.inner.as_any()
    }
}

impl fmt::Debug for AnyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.debug(f)
    }
}

impl<E: Event> From<E> for AnyEvent {
    fn from(event: E) -> Self {
        AnyEvent::new(event)
    }
}

/// An event in either form, concrete or [`AnyEvent`]: what protocol dispatch
/// and [`Event::caused_by`] accept.
///
/// Implemented for every [`Event`] and for [`AnyEvent`]; sealed.
pub trait EventRef: sealed::Sealed {
    /// The event's standard metadata.
    fn event_meta(&self) -> &Meta;

    #[doc(hidden)]
    fn __as_any(&self) -> &dyn Any;
}

impl<E: Event> EventRef for E {
    fn event_meta(&self) -> &Meta {
        self.meta()
    }

    fn __as_any(&self) -> &dyn Any {
        self
    }
}

impl EventRef for AnyEvent {
    fn event_meta(&self) -> &Meta {
        self.meta()
    }

    fn __as_any(&self) -> &dyn Any {
        self.as_any()
    }
}

mod sealed {
    pub trait Sealed {}
    impl<E: super::Event> Sealed for E {}
    impl Sealed for super::AnyEvent {}
}
