//! Protocols: one trait per kind of side effect, turning an event into that
//! side effect's payload.
//!
//! A protocol is a trait with one `&self` method, declared with
//! [`#[protocol]`](macro@crate::protocol). Events opt in with an impl marked
//! [`#[register]`](macro@crate::register); [`dispatch`] finds the impl at run time
//! and returns `None`, the no-op fallback, for events without one. Base
//! consumers skip the no-ops, so a tracking consumer can subscribe to every
//! event and only ever see the ones that are trackable.
//!
//! The three built-in protocols, [`Trackable`], [`Notifiable`] and
//! [`Webhookable`], are declared with the same public attribute as any
//! user-defined one.

pub(crate) mod base;
mod notify;
mod track;
mod webhook;

pub use self::base::Protocol;

pub use self::notify::{Channel, Notifiable, Notification, notifications};
pub use self::track::{Track, Trackable, track};
pub use self::webhook::{Webhook, Webhookable, webhook};
// The hidden supertraits of the built-in protocols, made reachable so that
// the "not registered" error does not call the protocols sealed.
#[doc(hidden)]
pub use self::{
    notify::__EventbusRegisteredNotifiable, track::__EventbusRegisteredTrackable,
    webhook::__EventbusRegisteredWebhookable,
};

use crate::event::EventRef;

/// Runs protocol `P` on an event: `Some(payload)` when the event's type has a
/// registered impl of `P`, `None` (the no-op fallback) when it has none.
///
/// Works on a concrete event and on an [`AnyEvent`](crate::AnyEvent) alike.
///
/// # Examples
///
/// ```
/// use eventbus::{event, protocol, register};
///
/// #[event]
/// struct PasswordChanged {
///     user_id: u64,
/// }
///
/// #[event]
/// struct PageViewed {
///     path: String,
/// }
///
/// /// Writes a line to the audit log.
/// #[protocol]
/// trait Auditable {
///     fn audit(&self) -> String;
/// }
///
/// #[register]
/// impl Auditable for PasswordChanged {
///     fn audit(&self) -> String {
///         format!("user {} changed their password", self.user_id)
///     }
/// }
///
/// let changed = PasswordChanged::new(7);
/// assert_eq!(
///     eventbus::dispatch::<dyn Auditable>(&changed).as_deref(),
///     Some("user 7 changed their password"),
/// );
/// // No impl: the no-op fallback.
/// assert_eq!(eventbus::dispatch::<dyn Auditable>(&PageViewed::new("/".into())), None);
/// // The erased form dispatches the same way.
/// let any = eventbus::AnyEvent::new(changed);
/// assert!(eventbus::dispatch::<dyn Auditable>(&any).is_some());
/// ```
pub fn dispatch<P: ?Sized + Protocol>(event: &(impl EventRef + ?Sized)) -> Option<P::Output> {
    let event = event.__as_any();
    let entry = crate::registry::registry().impl_of(P::type_id(), event.type_id())?;
    let mut out: Option<P::Output> = None;
    entry.call(event, &mut out);
    out
}

/// Whether the event's type has a registered impl of protocol `P`, without
/// building the payload.
pub fn implements<P: ?Sized + Protocol>(event: &(impl EventRef + ?Sized)) -> bool {
    let event = event.__as_any();
    crate::registry::registry()
        .impl_of(P::type_id(), event.type_id())
        .is_some()
}
