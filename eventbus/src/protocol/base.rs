//! The trait every protocol implements. It stands apart from dispatch,
//! which reads the registry, because the registry's entries are generic
//! over it.

use std::any::TypeId;

/// A side-effect protocol, implemented by [`#[protocol]`](macro@crate::protocol)
/// for `dyn YourTrait`.
///
/// The trait object type names the protocol in generic code:
/// `eventbus::dispatch::<dyn Trackable>(&event)`.
///
/// It is implemented for `dyn YourTrait + 'a` with any lifetime `'a`, not
/// only `'static`: the compiler checks that a spawned future is `Send` with
/// every lifetime inside it forgotten, so an impl for `'static` alone would
/// keep a [`ProtocolConsumer`](crate::ProtocolConsumer) from being started
/// inside `tokio::spawn`. Its identity, for the registry, comes from
/// [`type_id`](Protocol::type_id), which is always the `'static` one.
pub trait Protocol {
    /// The payload the protocol's method returns.
    type Output: Send + 'static;
    /// The protocol's name: its trait's name, such as `Trackable`.
    const NAME: &'static str;

    /// The [`TypeId`] of `dyn YourTrait + 'static`, whatever the lifetime in
    /// `Self`: the key under which the registry files the protocol's impls.
    fn type_id() -> TypeId;
}
