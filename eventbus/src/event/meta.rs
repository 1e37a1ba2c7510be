use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::timestamp::context::ContextV7;
use uuid::{Timestamp, Uuid};

/// The standard metadata every event carries, in its `meta` field.
///
/// `#[event]` adds the field and the constructor fills it; consumers read it
/// to deduplicate (`id`), order (`occurred_at`), attribute (`actor`) and trace
/// (`correlation_id`, `causation_id`) without knowing the event's type.
///
/// # Examples
///
/// ```
/// use eventbus::{event, Event};
///
/// #[event]
/// struct OrderPlaced {
///     order_id: u64,
/// }
///
/// let placed = OrderPlaced::new(1).with_actor("user:7");
/// let meta = placed.meta();
/// assert_eq!(meta.name, "order.placed");
/// assert_eq!(meta.version, 1);
/// assert_eq!(meta.actor.as_deref(), Some("user:7"));
/// // A new event starts its own correlation chain.
/// assert_eq!(meta.correlation_id, meta.id);
/// assert_eq!(meta.causation_id, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Unique and time-ordered (UUIDv7): ids created later in a process sort
    /// after earlier ones.
    pub id: Uuid,
    /// The event's stable name, such as `user.created`.
    pub name: Cow<'static, str>,
    /// The schema version of the event's fields.
    pub version: u32,
    /// When the event was created, in UTC.
    pub occurred_at: DateTime<Utc>,
    /// Who caused it: a user, a service, a job. Free-form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The id shared by every event in one chain of cause and effect: the id
    /// of the chain's first event.
    pub correlation_id: Uuid,
    /// The id of the event that directly caused this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The Rust module that defined the event, such as `billing::events`.
    pub source: Cow<'static, str>,
}

impl Meta {
    /// Fresh metadata for a new event: a new UUIDv7 that is also the
    /// correlation id, the current time, no actor and no cause.
    ///
    /// `#[event]` constructors call this; call it yourself only when you build
    /// an event with a struct literal.
    #[must_use]
    pub fn new(name: &'static str, version: u32, source: &'static str) -> Self {
        // One clock read serves both the id and `occurred_at`, so the time in
        // the id is the time of the event. The ids come from one context per
        // process, as `Uuid::now_v7`'s do: they increase even within a
        // millisecond, and keep increasing if the clock steps back (then,
        // and only then, the id's time runs ahead of `occurred_at`).
        // The clock is read under the lock, so two threads cannot take
        // their times in one order and their ids in the other.
        static IDS: Mutex<ContextV7> = Mutex::new(ContextV7::new());
        let (id, now) = {
            let context = IDS.lock().unwrap_or_else(PoisonError::into_inner);
            let now = SystemTime::now();
            let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            let id = Uuid::new_v7(Timestamp::from_unix(
                &*context,
                since_epoch.as_secs(),
                since_epoch.subsec_nanos(),
            ));
            (id, now)
        };
        Meta {
            id,
            name: Cow::Borrowed(name),
            version,
            occurred_at: DateTime::<Utc>::from(now),
            actor: None,
            correlation_id: id,
            causation_id: None,
            source: Cow::Borrowed(source),
        }
    }

    /// Links this event to the one that caused it: the causation id becomes
    /// the cause's id, and the correlation id is copied from the cause, so the
    /// whole chain shares one correlation id.
    pub fn link_to(&mut self, cause: &Meta) {
        self.causation_id = Some(cause.id);
        self.correlation_id = cause.correlation_id;
    }
}
