//! The signup example: a small accounts service posts events after its
//! business logic, and four consumers turn them into analytics, emails,
//! webhooks and an audit log, each on its own subscription.
//!
//! Run it with `cargo run --example signup`, then run it again. Events live
//! in a SQLite file, and the customers' webhook endpoint is slow, so the
//! first run shuts down before every webhook went out; the second run
//! reports that backlog and delivers it.

mod events;
mod protocols;
mod service;
mod sinks;
#[cfg(test)]
mod tests;

use crate::protocols::Auditable;
use crate::service::Accounts;
use crate::sinks::{JsonLines, Outbox, SlowEndpoint, Stdout};
use eventbus::{BatchConfig, Bus, Notifiable, ProtocolConsumer, SqliteLog, Trackable, Webhookable};
use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let out = std::env::temp_dir().join("eventbus-signup");
    std::fs::create_dir_all(&out)?;
    let db = out.join("events.db");
    let log = SqliteLog::open(&db).await?;
    let earlier = log.len();
    let bus = Bus::builder()
        .backend(log)
        .shutdown_timeout(Duration::from_millis(700))
        .build()?;
    println!(
        "log: {} ({earlier} events from earlier runs; delete it to start over)",
        db.display()
    );

    let sinks = subscribe(&bus, &out).await?;

    for s in bus.stats().iter().filter(|s| s.lag > 0) {
        println!(
            "resuming: `{}` is {} event(s) behind from the last run",
            s.name, s.lag
        );
    }

    println!("signing up 12 users...");
    let accounts = Accounts::new(bus.clone());
    let first = earlier + 1;
    for user_id in first..first + 12 {
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
    accounts
        .forgot_password(first + 4, "someone@example.com")
        .await?;
    accounts
        .delete(first + 6, Some("moved to a competitor"))
        .await?;

    if earlier == 0 {
        // The first run stops like a deploy in the middle of a backlog:
        // whatever is not finished within the shutdown timeout stays in
        // the log for the next run.
        println!("first run: shutting down without waiting for the slow webhook endpoint...");
    } else {
        println!("draining...");
        bus.drain().await.unwrap();
    }
    let stats = bus.stats();
    let report = bus.shutdown().await;

    println!();
    println!("{} events notified in this run", bus.notified());
    println!("| subscription | delivered | filtered out | failed | dead-lettered |");
    println!("| --- | --- | --- | --- | --- |");
    for s in &stats {
        println!(
            "| {} | {} | {} | {} | {} |",
            s.name, s.delivered, s.filtered, s.failed, s.dead_lettered
        );
    }
    for s in &report.timed_out {
        println!(
            "`{}` stopped {} event(s) behind; they stay in {} and the next run resumes there",
            s.name,
            s.lag,
            db.display()
        );
    }
    println!("analytics: {}", sinks.analytics.path().display());
    println!("webhooks:  {}", sinks.webhooks.path().display());
    println!("registry:  examples/signup/events.registry (`grep user.created` it)");
    Ok(())
}

/// The files the side effects write to.
struct Sinks {
    analytics: Arc<JsonLines>,
    webhooks: Arc<SlowEndpoint>,
}

/// Starts one subscription per side effect. Each sees only the events of
/// its protocol, in batches where the sink prefers them. The example's test
/// wires a bus with it too, to keep the routes in `events.registry` current.
async fn subscribe(bus: &Bus, out: &Path) -> Result<Sinks, Box<dyn Error>> {
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
    let webhooks = Arc::new(SlowEndpoint::new(
        JsonLines::create(out.join("webhooks.jsonl"))?,
        Duration::from_millis(250),
    ));
    bus.subscribe(
        "webhooks",
        ProtocolConsumer::<dyn Webhookable, _>::new(Arc::clone(&webhooks)).batch(BatchConfig {
            size: 1,
            ..BatchConfig::default()
        }),
    )
    .start()
    .await?;
    bus.subscribe(
        "audit",
        ProtocolConsumer::<dyn Auditable, _>::new(Stdout("audit")),
    )
    .start()
    .await?;

    Ok(Sinks {
        analytics,
        webhooks,
    })
}
