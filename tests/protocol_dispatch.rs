//! Protocol dispatch: registered impls are found for concrete and erased
//! events, and everything else gets the no-op fallback.

use eventbus::{
    AnyEvent, Channel, Notifiable, Notification, Track, Trackable, Webhook, Webhookable, event,
    protocol, register,
};

#[event]
pub struct OrderPlaced {
    pub order_id: u64,
    pub customer: String,
    pub account: String,
}

#[event]
pub struct HeartbeatSent {}

/// A line in the audit log.
#[protocol]
pub trait Auditable {
    fn audit(&self) -> String;
}

#[register]
impl Trackable for OrderPlaced {
    fn track(&self) -> Track {
        Track::new(self, &self.customer).property("order_id", self.order_id)
    }
}

#[register]
impl Notifiable for OrderPlaced {
    fn notifications(&self) -> Vec<Notification> {
        vec![
            Notification::email(&self.customer, "order-placed"),
            Notification::sms("+15550100", "order-placed").data("order", self.order_id),
        ]
    }
}

#[register]
impl Webhookable for OrderPlaced {
    fn webhook(&self) -> Webhook {
        Webhook::new("order.placed", eventbus::json!({ "id": self.order_id }))
            .for_account(&self.account)
    }
}

#[register]
impl Auditable for OrderPlaced {
    fn audit(&self) -> String {
        format!("order {} placed", self.order_id)
    }
}

fn order() -> OrderPlaced {
    OrderPlaced::new(42, "c@example.com".into(), "acct_9".into())
}

#[test]
fn built_in_protocols_build_their_payloads() {
    let e = order();
    let track = eventbus::track(&e).unwrap();
    assert_eq!(track.event, "order.placed");
    assert_eq!(track.distinct_id, "c@example.com");
    assert_eq!(track.properties["order_id"], 42);
    assert_eq!(track.timestamp, e.meta.occurred_at);
    assert_eq!(track.insert_id, e.meta.id);

    let notes = eventbus::notifications(&e).unwrap();
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[1].channel, Channel::Sms);
    assert_eq!(notes[1].data["order"], 42);

    let hook = eventbus::webhook(&e).unwrap();
    assert_eq!(hook.topic, "order.placed");
    assert_eq!(hook.payload["id"], 42);
    assert_eq!(hook.account.as_deref(), Some("acct_9"));
}

#[test]
fn events_without_an_impl_get_the_noop_fallback() {
    let beat = HeartbeatSent::new();
    assert_eq!(eventbus::track(&beat), None);
    assert_eq!(eventbus::notifications(&beat), None);
    assert_eq!(eventbus::webhook(&beat), None);
    assert_eq!(eventbus::dispatch::<dyn Auditable>(&beat), None);
    assert!(!eventbus::implements::<dyn Trackable>(&beat));
    assert!(eventbus::implements::<dyn Trackable>(&order()));
}

#[test]
fn erased_events_dispatch_like_concrete_ones() {
    let events = [AnyEvent::new(order()), AnyEvent::new(HeartbeatSent::new())];
    let tracked: Vec<_> = events.iter().filter_map(eventbus::track).collect();
    assert_eq!(tracked.len(), 1);
    assert_eq!(tracked[0].event, "order.placed");
    let audited: Vec<_> = events
        .iter()
        .filter_map(eventbus::dispatch::<dyn Auditable>)
        .collect();
    assert_eq!(audited, ["order 42 placed"]);
}

#[test]
fn user_protocols_are_in_the_registry_like_built_ins() {
    let registry = eventbus::registry();
    let names: Vec<_> = registry.protocols().iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        ["Auditable", "Notifiable", "Trackable", "Webhookable"]
    );
    let audit = &registry.protocols()[0];
    assert_eq!(audit.method(), "audit");
    assert_eq!(audit.output(), "String");
    assert_eq!(audit.path(), "protocol_dispatch::Auditable");

    let order = registry.event("order.placed", 1).unwrap();
    let implemented: Vec<_> = order.protocols().iter().map(|p| p.protocol()).collect();
    assert_eq!(
        implemented,
        ["Auditable", "Notifiable", "Trackable", "Webhookable"]
    );
    assert!(
        registry
            .event("heartbeat.sent", 1)
            .unwrap()
            .protocols()
            .is_empty()
    );
}

#[test]
fn exercise_runs_every_protocol_and_names_missing_samples() {
    let ran = eventbus::testing::exercise([order().into(), HeartbeatSent::new().into()]).unwrap();
    assert_eq!(ran.samples, 2);
    assert_eq!(ran.calls, 4);
    assert_eq!(ran.noops, 4);

    let err = eventbus::testing::exercise([order().into()]).unwrap_err();
    assert_eq!(
        err.failures,
        [eventbus::testing::Failure::NoSample {
            name: "heartbeat.sent".into(),
            version: 1
        }]
    );
    assert!(
        err.to_string()
            .contains("event `heartbeat.sent` v1 has no sample")
    );
}
