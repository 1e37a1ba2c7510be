//! The example's own tests: its registry file is current, and every consumer
//! can consume every message.

use crate::events::*;
use eventbus::AnyEvent;

fn samples() -> Vec<AnyEvent> {
    vec![
        UserCreated::new(1, "a@example.com".into(), "web".into()).into(),
        EmailVerified::new(1, "a@example.com".into()).into(),
        SubscriptionStarted::new(1, "acct_1".into(), "pro".into(), 2_900).into(),
        PasswordResetRequested::new(1, "a@example.com".into()).into(),
        UserDeleted::new(1, None).into(),
        UserDeleted::new(2, Some("moved".into())).into(),
    ]
}

#[test]
fn registry_file_is_current() {
    eventbus::registry::assert_fresh("examples/signup/events.registry");
}

#[test]
fn every_protocol_consumes_every_event() {
    let ran = eventbus::testing::assert_exercise(samples());
    assert_eq!(ran.samples, 6);
    // Ten registered impls; UserDeleted has two samples, so its two run twice.
    assert_eq!(ran.calls, 12);
}
