use crate::event::{EventRef, Meta};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Events that feed product analytics.
///
/// # Examples
///
/// ```
/// use eventbus::{event, register, Track, Trackable};
///
/// #[event]
/// struct PlanUpgraded {
///     user_id: u64,
///     plan: String,
/// }
///
/// #[register]
/// impl Trackable for PlanUpgraded {
///     fn track(&self) -> Track {
///         Track::new(self, self.user_id).property("plan", self.plan.as_str())
///     }
/// }
///
/// let track = eventbus::track(&PlanUpgraded::new(7, "pro".into())).unwrap();
/// assert_eq!(track.event, "plan.upgraded");
/// assert_eq!(track.distinct_id, "7");
/// assert_eq!(track.properties["plan"], "pro");
/// ```
#[crate::protocol]
pub trait Trackable {
    /// The analytics record for this event.
    fn track(&self) -> Track;
}

/// An analytics record, in the shape analytics services (Segment, Mixpanel,
/// PostHog) accept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Track {
    /// What happened: the event's name unless changed.
    pub event: String,
    /// Who it happened to: a user or an anonymous id.
    pub distinct_id: String,
    /// Everything else worth slicing by.
    pub properties: Map<String, Value>,
    /// When it happened: the event's time unless changed.
    pub timestamp: DateTime<Utc>,
    /// The id of the event this record came from, for deduplication
    /// downstream when a delivery is retried.
    pub insert_id: Uuid,
}

impl Track {
    /// A record for `event` about `distinct_id`, with the event's name, time
    /// and id, and no properties yet.
    pub fn new(event: &(impl EventRef + ?Sized), distinct_id: impl ToString) -> Self {
        let meta: &Meta = event.event_meta();
        Track {
            event: meta.name.to_string(),
            distinct_id: distinct_id.to_string(),
            properties: Map::new(),
            timestamp: meta.occurred_at,
            insert_id: meta.id,
        }
    }

    /// Adds a property.
    #[must_use]
    pub fn property(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Renames the tracked event, for analytics names that differ from the
    /// event's own name.
    #[must_use]
    pub fn named(mut self, event: impl Into<String>) -> Self {
        self.event = event.into();
        self
    }
}

/// Runs [`Trackable`] on an event: the record, or `None` when the event is not
/// trackable. See [`dispatch`](crate::dispatch).
pub fn track(event: &(impl EventRef + ?Sized)) -> Option<Track> {
    crate::dispatch::<dyn Trackable>(event)
}
