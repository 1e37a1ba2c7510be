//! **Post standardized events after your business logic; isolated consumers
//! turn them into tracking, notifications, webhooks and audit logs.**
//!
//! A service does its core work first (authorize, write rows, take money),
//! then says what happened by posting an event such as `UserCreated`. Each
//! side effect lives in its own consumer, out of the request path, and a new
//! side effect is one new protocol impl, with no business code touched.
//!
//! # Examples
//!
//! ## Declare an event
//!
//! [`#[event]`](macro@event) keeps your fields and adds the standard metadata
//! ([`Meta`]): a time-ordered id, the name, the version, the time, the actor,
//! and correlation and causation ids.
//!
//! ```
//! use eventbus::{event, Event};
//!
//! /// A user signed up.
//! #[event(name = "user.created", version = 1)]
//! pub struct UserCreated {
//!     pub user_id: u64,
//!     pub email: String,
//! }
//!
//! let created = UserCreated::new(7, "a@example.com".into());
//! assert_eq!(created.meta().name, "user.created");
//! assert_eq!(created.email, "a@example.com");
//! ```
//!
//! ## Turn it into side effects
//!
//! A protocol is a trait that maps an event to one kind of payload. Implement
//! the built-in [`Trackable`], [`Notifiable`] and [`Webhookable`], or your own
//! declared with [`#[protocol]`](macro@protocol), and mark each impl
//! [`#[register]`](macro@register) so dispatch can find it.
//!
//! ```
//! # use eventbus::{event, Event};
//! # #[event(name = "user.created", version = 1)]
//! # pub struct UserCreated {
//! #     pub user_id: u64,
//! #     pub email: String,
//! # }
//! use eventbus::{register, Track, Trackable};
//!
//! #[register]
//! impl Trackable for UserCreated {
//!     fn track(&self) -> Track {
//!         Track::new(self, self.user_id).property("email_domain", "example.com")
//!     }
//! }
//!
//! let created = UserCreated::new(7, "a@example.com".into());
//! let track = eventbus::track(&created).expect("UserCreated is trackable");
//! assert_eq!(track.distinct_id, "7");
//! // No `Notifiable` impl: the no-op fallback, which consumers skip.
//! assert!(eventbus::notifications(&created).is_none());
//! ```
//!
//! ## See what happens when it fires
//!
//! The [`registry`](mod@registry) lists every event, its fields and its
//! protocols. Commit it as a text file and keep it current from a test with
//! [`registry::assert_fresh`]; then `grep user.created events.registry` tells
//! anyone what an event triggers.
//!
//! ```
//! # use eventbus::{event, register, Track, Trackable};
//! # #[event(name = "user.created", version = 1)]
//! # pub struct UserCreated { pub user_id: u64, pub email: String }
//! # #[register]
//! # impl Trackable for UserCreated {
//! #     fn track(&self) -> Track { Track::new(self, self.user_id) }
//! # }
//! let text = eventbus::registry().render();
//! assert!(text.contains("event user.created v1"));
//! assert!(text.contains("impl user.created v1 Trackable"));
//! ```
//!
//! Forgetting `#[register]` does not compile:
//!
//! ```compile_fail
//! use eventbus::{event, Track, Trackable};
//!
//! #[event]
//! struct UserCreated {
//!     user_id: u64,
//! }
//!
//! impl Trackable for UserCreated {
//!     fn track(&self) -> Track {
//!         Track::new(self, self.user_id)
//!     }
//! }
//! ```

// Lets the built-in protocols use the same `#[protocol]` expansion as user
// crates, whose paths start with `::eventbus`.
extern crate self as eventbus;

#[cfg(feature = "analytics")]
pub mod analytics;
pub mod backend;
pub mod bus;
pub mod consumer;
#[cfg(feature = "dashboard")]
pub mod dashboard;
pub mod dead_letter;
#[cfg(feature = "email")]
pub mod email;
pub mod event;
mod failure;
mod handling;
pub mod protocol;
pub mod registry;
mod retry;
mod signal;
mod stall;
pub mod subscription;
pub mod testing;
#[cfg(feature = "webhooks")]
pub mod webhooks;

#[cfg(feature = "sqlite")]
pub use crate::backend::SqliteLog;
pub use crate::backend::{Backend, Capabilities, MemoryLog, Reader, StartFrom};
#[cfg(feature = "nats")]
pub use crate::backend::{NatsError, NatsLog};
#[cfg(feature = "postgres")]
pub use crate::backend::{PostgresError, PostgresLog};
pub use crate::bus::{
    BuildError, Bus, BusBuilder, DrainError, NotifyError, ShutdownReport, SubscribeError,
    TryNotifyError,
};
pub use crate::consumer::{
    BatchConfig, Batcher, BoxError, Consumer, IntoConsumer, Permanent, ProtocolConsumer,
    RetryAfter, Sink, consumer_fn, consumer_fn_with, sink_fn,
};
pub use crate::dead_letter::{DeadLetter, DeadLetters};
pub use crate::event::{AnyEvent, DecodeError, Event, EventRef, Meta};
pub use crate::protocol::{
    Channel, Notifiable, Notification, Protocol, Track, Trackable, Webhook, Webhookable, dispatch,
    implements, notifications, track, webhook,
};
pub use crate::registry::registry;
pub use crate::retry::Retry;
pub use crate::subscription::{Filter, Subscription, SubscriptionBuilder, SubscriptionStats};
#[doc(inline)]
pub use eventbus_macros::{event, protocol, register};
pub use serde_json::{Value, json};
pub use uuid::Uuid;

// Not public API. Referenced by macro-generated code.
#[doc(hidden)]
pub mod __private {
    pub use crate::event::key::order_key_of;
    pub use crate::protocol::{
        __EventbusRegisteredNotifiable, __EventbusRegisteredTrackable,
        __EventbusRegisteredWebhookable,
    };
    pub use crate::registry::{
        Dispatcher, EventEntry, EventField, FieldCheck, FieldInfo, ImplEntry, ProtocolEntry,
        Registration, Source, UnfitField, assert_field,
    };
    pub use inventory;
    pub use serde;
}
