//! Events: the facts a service posts after its business logic has run.
//!
//! An event is a plain struct annotated with [`#[event]`](macro@crate::event). The
//! attribute keeps the user's fields and adds one [`Meta`] field with the
//! standard keys every consumer can rely on. [`Event`] is the typed view used
//! in application code; [`AnyEvent`] is the type-erased, cheaply cloned value
//! that travels through a bus and that consumers receive.

mod any;
pub(crate) mod error;
pub(crate) mod key;
mod meta;

pub use self::any::{AnyEvent, EventRef};
pub use self::error::DecodeError;
pub use self::meta::Meta;

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// A struct annotated with [`#[event]`](macro@crate::event).
///
/// Do not implement this trait by hand: the attribute implements it, fills
/// [`Meta`] in the generated `new` constructor and registers the event in the
/// [registry](mod@crate::registry).
///
/// # Examples
///
/// ```
/// use eventbus::{event, Event};
///
/// /// A user signed up.
/// #[event(name = "user.created", version = 2)]
/// pub struct UserCreated {
///     pub user_id: u64,
///     pub email: String,
/// }
///
/// assert_eq!(UserCreated::NAME, "user.created");
/// assert_eq!(UserCreated::VERSION, 2);
///
/// let signup = UserCreated::new(7, "a@example.com".into());
/// let welcome_sent = UserCreated::new(8, "b@example.com".into()).caused_by(&signup);
/// assert_eq!(welcome_sent.meta().causation_id, Some(signup.meta().id));
/// assert_eq!(welcome_sent.meta().correlation_id, signup.meta().correlation_id);
/// ```
///
/// A type that is not an event cannot implement a protocol:
///
/// ```compile_fail
/// struct NotAnEvent;
///
/// #[eventbus::register]
/// impl eventbus::Trackable for NotAnEvent {
///     fn track(&self) -> eventbus::Track {
///         unimplemented!()
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "not an event",
    note = "add `#[eventbus::event]` to the definition of `{Self}`; only events can be notified and implement protocols"
)]
pub trait Event: Serialize + DeserializeOwned + Debug + Clone + Send + Sync + 'static {
    /// The event's stable name, such as `user.created`.
    const NAME: &'static str;
    /// The schema version of the event's fields, from 1.
    const VERSION: u32;

    /// The event's standard metadata.
    fn meta(&self) -> &Meta;

    /// The event's standard metadata, for changes before it is notified.
    fn meta_mut(&mut self) -> &mut Meta;

    /// What the event is kept in order with when several processes share
    /// a subscription: a backend that splits subscriptions into partitions
    /// (PostgreSQL) puts events of equal keys in one partition, delivered
    /// by one process at a time, in order.
    ///
    /// `#[event(key = field)]` makes it a hash of that field, the same in
    /// every process and build (fields of one type and value give one key:
    /// key related events on fields of the same type); by default it is the
    /// correlation id's, so an event stays with the events it caused and
    /// that caused it.
    ///
    /// ```
    /// use eventbus::{event, Event};
    ///
    /// #[event(key = order_id)]
    /// struct OrderPaid {
    ///     order_id: u64,
    /// }
    ///
    /// #[event(key = order_id)]
    /// struct OrderShipped {
    ///     order_id: u64,
    /// }
    ///
    /// // One order's events stay together, whatever caused them.
    /// assert_eq!(OrderPaid::new(7).order_key(), OrderShipped::new(7).order_key());
    /// ```
    fn order_key(&self) -> u64 {
        key::of_correlation(self.meta())
    }

    /// Sets who caused the event: a user id, a service, a job.
    #[must_use]
    fn with_actor(mut self, actor: impl Into<String>) -> Self
    where
        Self: Sized,
    {
        self.meta_mut().actor = Some(actor.into());
        self
    }

    /// Records that `cause` led to this event: the causation id becomes the
    /// cause's id and the correlation id is copied from it, so a chain of
    /// events shares one correlation id. The actor is copied too unless this
    /// event already has one.
    #[must_use]
    fn caused_by(mut self, cause: &(impl EventRef + ?Sized)) -> Self
    where
        Self: Sized,
    {
        let cause = cause.event_meta();
        let meta = self.meta_mut();
        meta.link_to(cause);
        if meta.actor.is_none() {
            meta.actor.clone_from(&cause.actor);
        }
        self
    }

    /// Joins an existing correlation chain by id, for a chain that started
    /// outside this process (a request id, say).
    #[must_use]
    fn correlated_with(mut self, correlation_id: uuid::Uuid) -> Self
    where
        Self: Sized,
    {
        self.meta_mut().correlation_id = correlation_id;
        self
    }
}
