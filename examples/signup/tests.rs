//! The example's own tests: its registry file is current, routes included,
//! and every consumer can consume every message.

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

/// The file also shows which subscription each event reaches: the bus is
/// wired by the same function as `main`'s.
#[tokio::test]
async fn registry_file_is_current() {
    let out = tempfile::tempdir().unwrap();
    let bus = eventbus::Bus::builder().build().unwrap();
    let receivers = crate::receivers::Receivers::start(std::time::Duration::ZERO)
        .await
        .unwrap();
    crate::subscribe(&bus, out.path(), &receivers)
        .await
        .unwrap();
    eventbus::registry::assert_fresh_with(&bus, "examples/signup/events.registry");
    bus.shutdown().await;
}

#[test]
fn every_protocol_consumes_every_event() {
    let ran = eventbus::testing::assert_exercise(samples());
    assert_eq!(ran.samples, 6);
    // Ten registered impls; UserDeleted has two samples, so its two run twice.
    assert_eq!(ran.calls, 12);
}

mod end_to_end {
    use crate::events::*;
    use crate::protocols::Auditable;
    use crate::service::Accounts;
    use eventbus::testing::Recorder;
    use eventbus::{Bus, ProtocolConsumer, Track, Trackable, sink_fn};
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn a_signup_reaches_every_side_effect() {
        let bus = Bus::builder().build().unwrap();
        let everything = Recorder::new();
        bus.subscribe("everything", everything.clone())
            .start()
            .await
            .unwrap();
        let tracked = Arc::new(Mutex::new(Vec::<Track>::new()));
        let sink = {
            let tracked = Arc::clone(&tracked);
            sink_fn(move |batch: Vec<Track>| {
                tracked.lock().unwrap().extend(batch);
                async { Ok(()) }
            })
        };
        bus.subscribe("analytics", ProtocolConsumer::<dyn Trackable, _>::new(sink))
            .start()
            .await
            .unwrap();
        let audit = Recorder::new();
        bus.subscribe("audit", audit.clone())
            .protocol::<dyn Auditable>()
            .start()
            .await
            .unwrap();

        let accounts = Accounts::new(bus.clone());
        let signup = accounts.sign_up(7, "ada@example.com", "web").await.unwrap();
        accounts.subscribe(&signup, "pro", 2_900).await.unwrap();
        accounts.delete(8, None).await.unwrap();
        bus.drain().await.unwrap();

        let created = everything.assert_received::<UserCreated>(|e| e.user_id == 7);
        assert_eq!(created.email, "ada@example.com");
        let started = everything
            .assert_received::<SubscriptionStarted>(|e| e.plan == "pro" && e.user_id == 7);
        assert_eq!(
            started.meta.causation_id,
            Some(created.meta.id),
            "linked to the signup"
        );
        assert_eq!(started.meta.correlation_id, created.meta.correlation_id);

        let tracked = tracked.lock().unwrap();
        let names: Vec<&str> = tracked.iter().map(|t| t.event.as_str()).collect();
        assert_eq!(names, ["user.created", "subscription.started"]);
        assert_eq!(audit.names(), ["subscription.started", "user.deleted"]);
        audit.assert_not_received::<UserCreated>(|_| true);
    }

    /// The real side effects, against the receivers the example starts:
    /// the email reaches the SMTP server, the track calls the collector,
    /// and the webhook the customer endpoint, which verifies its signature.
    #[tokio::test]
    async fn the_built_in_side_effects_reach_their_receivers() {
        let out = tempfile::tempdir().unwrap();
        let receivers = crate::receivers::Receivers::start(std::time::Duration::ZERO)
            .await
            .unwrap();
        let bus = Bus::builder().build().unwrap();
        let webhooks = crate::subscribe(&bus, out.path(), &receivers)
            .await
            .unwrap();
        let accounts = Accounts::new(bus.clone());
        let signup = accounts.sign_up(7, "ada@example.com", "web").await.unwrap();
        accounts.subscribe(&signup, "pro", 2_900).await.unwrap();
        bus.drain().await.unwrap();
        webhooks.idle().await.unwrap();

        let mails = receivers.smtp.received();
        assert_eq!(mails.len(), 1, "{mails:?}");
        assert_eq!(mails[0].envelope_to, ["ada@example.com"]);
        let text = String::from_utf8_lossy(&mails[0].data);
        assert!(text.contains("Subject: Welcome aboard"), "{text}");
        assert_eq!(
            receivers.analytics.calls(),
            ["user.created(7)", "subscription.started(7)"]
        );
        assert_eq!(receivers.webhooks.counts(), (1, 0), "one verified webhook");
        assert!(bus.shutdown().await.is_clean());
    }
}
