//! The signup example: a small accounts service posts events after its
//! business logic, and four consumers turn them into analytics, emails,
//! webhooks and an audit log, each on its own subscription.
//!
//! Run it with `cargo run --example signup`.

mod events;
mod protocols;
mod service;
mod sinks;
#[cfg(test)]
mod tests;

use crate::protocols::Auditable;
use crate::service::Accounts;
use crate::sinks::{JsonLines, Outbox, Stdout};
use eventbus::{BatchConfig, Bus, Notifiable, ProtocolConsumer, Trackable, Webhookable};
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let out = std::env::temp_dir().join("eventbus-signup");
    let bus = Bus::builder().capacity(1024).build()?;

    // One subscription per side effect. Each sees only the events of its
    // protocol, in batches where the sink prefers them.
    let analytics = Arc::new(JsonLines::create(out.join("analytics.jsonl"))?);
    bus.subscribe(
        "analytics",
        ProtocolConsumer::<dyn Trackable, _>::new(Arc::clone(&analytics)).batch(BatchConfig {
            size: 5,
            timeout: Duration::from_millis(200),
            ..BatchConfig::default()
        }),
    )
    .start()
    .await?;
    bus.subscribe("email", ProtocolConsumer::<dyn Notifiable, _>::new(Outbox))
        .concurrent(8)
        .start()
        .await?;
    let webhooks = Arc::new(JsonLines::create(out.join("webhooks.jsonl"))?);
    bus.subscribe(
        "webhooks",
        ProtocolConsumer::<dyn Webhookable, _>::new(Arc::clone(&webhooks)),
    )
    .start()
    .await?;
    bus.subscribe(
        "audit",
        ProtocolConsumer::<dyn Auditable, _>::new(Stdout("audit")),
    )
    .start()
    .await?;

    println!("signing up 12 users...");
    let accounts = Accounts::new(bus.clone());
    for user_id in 1..=12 {
        let email = format!("user{user_id}@example.com");
        let signup = accounts
            .sign_up(
                user_id,
                &email,
                if user_id % 3 == 0 { "ios" } else { "web" },
            )
            .await?;
        if user_id % 2 == 0 {
            accounts.verify_email(&signup).await?;
        }
        if user_id % 4 == 0 {
            accounts.subscribe(&signup, "pro", 2_900).await?;
        }
    }
    accounts.forgot_password(5, "user5@example.com").await?;
    accounts.delete(7, Some("moved to a competitor")).await?;

    println!("draining...");
    bus.drain().await;
    let stats = bus.stats();
    let report = bus.shutdown().await;

    println!();
    println!("{} events notified", bus.head());
    println!("| subscription | delivered | filtered out | failed | dead-lettered |");
    println!("| --- | --- | --- | --- | --- |");
    for s in &stats {
        println!(
            "| {} | {} | {} | {} | {} |",
            s.name, s.delivered, s.filtered, s.failed, s.dead_lettered
        );
    }
    if !report.is_clean() {
        println!("unfinished at shutdown: {:?}", report.timed_out);
    }
    println!("analytics: {}", analytics.path().display());
    println!("webhooks:  {}", webhooks.path().display());
    println!("registry:  examples/signup/events.registry (`grep user.created` it)");
    Ok(())
}
