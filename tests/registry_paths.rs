//! The registry file reads the same on every checkout: no absolute paths for
//! events from dependencies outside the workspace, and built-in protocols
//! named by the paths users write, not by eventbus's own modules.

use eventbus::{Notifiable, Trackable, Webhookable};
use outside_events::OrderPlaced;

#[test]
fn a_dependency_outside_the_workspace_is_named_relative_to_its_crate() {
    // Cargo names the dependency's files by absolute paths.
    let _ = OrderPlaced::new(1);
    let text = eventbus::registry().render();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("order.placed"))
        .collect();
    assert_eq!(
        lines,
        [
            "event order.placed v1 type=outside_events::OrderPlaced at=outside-events/src/events.rs:5 doc=\"An order was placed.\"",
            "field order.placed v1 order_id: u64",
            "impl order.placed v1 Trackable at=outside-events/src/events.rs:10",
        ]
    );
    let here = env!("CARGO_MANIFEST_DIR");
    assert!(!text.contains(here), "{text}");
    let info = eventbus::registry().event("order.placed", 1).unwrap();
    assert_eq!(info.file(), "outside-events/src/events.rs");
    assert_eq!(info.location(), "outside-events/src/events.rs:5");
}

#[test]
fn built_in_protocols_are_named_by_their_public_paths() {
    // The paths the lines show are the ones this file imports.
    fn _named<P: ?Sized + eventbus::Protocol>() {}
    _named::<dyn Notifiable>();
    _named::<dyn Trackable>();
    _named::<dyn Webhookable>();

    let text = eventbus::registry().render();
    let protocols: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("protocol "))
        .collect();
    assert_eq!(
        protocols,
        [
            "protocol Notifiable fn=notifications output=Vec<Notification> path=eventbus::Notifiable",
            "protocol Trackable fn=track output=Track path=eventbus::Trackable",
            "protocol Webhookable fn=webhook output=Webhook path=eventbus::Webhookable",
        ]
    );
}
