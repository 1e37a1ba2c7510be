//! The registry file with a bus: which subscriptions each event reaches,
//! kept current by the same check as the rest of the file.

use eventbus::registry::{self, CheckError};
use eventbus::testing::Recorder;
use eventbus::{
    Bus, Notifiable, Notification, ProtocolConsumer, Track, Trackable, event, register, sink_fn,
};

#[event(name = "invoice.paid")]
pub struct InvoicePaid {
    pub invoice_id: u64,
}

#[event(name = "invoice.voided")]
pub struct InvoiceVoided {
    pub invoice_id: u64,
}

#[event(name = "user.created")]
pub struct UserCreated {
    pub user_id: u64,
}

#[register]
impl Trackable for InvoicePaid {
    fn track(&self) -> Track {
        Track::new(self, self.invoice_id)
    }
}

#[register]
impl Notifiable for InvoicePaid {
    fn notifications(&self) -> Vec<Notification> {
        Vec::new()
    }
}

#[register]
impl Trackable for UserCreated {
    fn track(&self) -> Track {
        Track::new(self, self.user_id)
    }
}

/// The wiring a service's `main` would do.
async fn wire(bus: &Bus) {
    let analytics = sink_fn(|_: Vec<Track>| async { Ok(()) });
    bus.subscribe(
        "analytics",
        ProtocolConsumer::<dyn Trackable, _>::new(analytics),
    )
    .start()
    .await
    .unwrap();
    bus.subscribe("billing", Recorder::new())
        .events(["invoice.*"])
        .unwrap()
        .concurrent(4)
        .start()
        .await
        .unwrap();
    bus.subscribe("alerts", eventbus::consumer_fn(|_| async { Ok(()) }))
        .events(["invoice.paid", "user.*"])
        .unwrap()
        .protocol::<dyn Notifiable>()
        .partitioned(2, |e| e.name().to_owned())
        .start()
        .await
        .unwrap();
    bus.subscribe("everything", Recorder::new())
        .start()
        .await
        .unwrap();
}

#[tokio::test]
async fn each_event_lists_the_subscriptions_it_reaches() {
    let bus = Bus::builder().build().unwrap();
    wire(&bus).await;
    let text = eventbus::registry().render_with(&bus);

    let subscriptions: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("subscription "))
        .collect();
    assert_eq!(
        subscriptions,
        [
            "subscription alerts mode=partitioned(2) events=invoice.paid,user.* protocols=Notifiable",
            "subscription analytics mode=sequential protocols=Trackable consumer=ProtocolConsumer<Trackable>",
            "subscription billing mode=concurrent(4) events=invoice.* consumer=Recorder",
            "subscription everything mode=sequential events=* consumer=Recorder",
        ]
    );
    let grep = |name: &str| -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("route ") && l.contains(name))
            .collect()
    };
    assert_eq!(
        grep("invoice.paid"),
        [
            "route invoice.paid v1 -> alerts via Notifiable",
            "route invoice.paid v1 -> analytics via Trackable consumer=ProtocolConsumer<Trackable>",
            "route invoice.paid v1 -> billing consumer=Recorder",
            "route invoice.paid v1 -> everything consumer=Recorder",
        ]
    );
    // No protocol impl: not tracked, and no notification to alert on.
    assert_eq!(
        grep("invoice.voided"),
        [
            "route invoice.voided v1 -> billing consumer=Recorder",
            "route invoice.voided v1 -> everything consumer=Recorder",
        ]
    );
    // Its name passes `alerts`' patterns, but it is not Notifiable.
    assert_eq!(
        grep("user.created"),
        [
            "route user.created v1 -> analytics via Trackable consumer=ProtocolConsumer<Trackable>",
            "route user.created v1 -> everything consumer=Recorder",
        ]
    );
    // The lines sit under their event, after its impls.
    assert!(text.contains(
        "impl invoice.paid v1 Trackable at=tests/registry_routes.rs:26\n\
         route invoice.paid v1 -> alerts via Notifiable\n"
    ));
    // Without the bus, the file is what `render` gives.
    let without = eventbus::registry().render();
    assert!(!without.contains("route ") && !without.contains("subscription "));
    bus.shutdown().await;
}

#[tokio::test]
async fn the_check_with_a_bus_keeps_the_routes_current() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.registry");
    let bus = Bus::builder().build().unwrap();
    wire(&bus).await;
    std::fs::write(&path, eventbus::registry().render_with(&bus)).unwrap();
    registry::check_with(&bus, &path).unwrap();
    registry::assert_fresh_with(&bus, &path);

    // The same file without the bus is stale: it names the routes.
    assert!(matches!(
        registry::compare(&path),
        Err(CheckError::Stale { .. })
    ));

    // Rewiring shows in the diff: a stopped subscription's routes go.
    bus.unsubscribe("billing").await;
    let err = registry::check_with(&bus, &path).unwrap_err();
    let CheckError::Stale { diff, .. } = &err else {
        panic!("expected a stale file, got {err:?}");
    };
    assert!(
        diff.contains("-route invoice.voided v1 -> billing"),
        "{diff}"
    );
    assert!(
        diff.contains("-subscription billing mode=concurrent(4)"),
        "{diff}"
    );
    bus.shutdown().await;
}
