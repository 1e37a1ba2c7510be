//! The signup example: a small service's events, what each one triggers, and
//! the registry that says so.
//!
//! Run it with `cargo run --example signup`.

mod events;
mod protocols;
#[cfg(test)]
mod tests;

use crate::events::{SubscriptionStarted, UserCreated};
use crate::protocols::Auditable;
use eventbus::Event;

fn main() {
    // The business logic ran; now the service says what happened.
    let created = UserCreated::new(7, "ada@example.com".into(), "web".into());
    let started = SubscriptionStarted::new(7, "acct_7".into(), "pro".into(), 2_900)
        .with_actor("user:7")
        .caused_by(&created);

    for event in [eventbus::AnyEvent::new(created), started.into()] {
        println!("{} {}", event.name(), event.meta().id);
        if let Some(track) = eventbus::track(&event) {
            println!("  track    {} {:?}", track.distinct_id, track.properties);
        }
        for note in eventbus::notifications(&event).unwrap_or_default() {
            println!(
                "  notify   {} {} via {}",
                note.recipient, note.template, note.channel
            );
        }
        if let Some(hook) = eventbus::webhook(&event) {
            println!("  webhook  {} {}", hook.topic, hook.payload);
        }
        if let Some(audit) = eventbus::dispatch::<dyn Auditable>(&event) {
            println!("  audit    {} {}", audit.subject, audit.action);
        }
    }

    println!();
    print!("{}", eventbus::registry().render());
}
