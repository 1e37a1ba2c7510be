//! The signup example: a small accounts service posts events after its
//! business logic, and four consumers turn them into analytics batches,
//! emails over SMTP, signed webhooks and an audit log, each on its own
//! subscription. The far ends (an analytics collector, an SMTP server and a
//! customer's webhook endpoint that checks every signature) are started by
//! the example itself, on 127.0.0.1.
//!
//! Run it with `cargo run --example signup`, then run it again; with
//! `-- --dashboard` it then serves its dashboard on 127.0.0.1:8080/ops
//! until Ctrl-C. Events and
//! webhook deliveries live in SQLite files, and the customer's webhook
//! endpoint is slow, so the first run shuts down before every webhook went
//! out; the second run reports that backlog and delivers it.

mod events;
mod protocols;
mod receivers;
mod service;
mod sinks;
#[cfg(test)]
mod tests;

use crate::protocols::Auditable;
use crate::receivers::{Receivers, WEBHOOK_SECRET};
use crate::service::Accounts;
use crate::sinks::Stdout;
use eventbus::analytics::Segment;
use eventbus::dashboard::Dashboard;
use eventbus::email::{Mailer, RenderError, Rendered, Tls, render_fn};
use eventbus::webhooks::{DeliveryState, Endpoint, StaticEndpoints, Webhooks};
use eventbus::{BatchConfig, Bus, ProtocolConsumer, SqliteLog};
use std::error::Error;
use std::path::Path;
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

    let receivers = Receivers::start(Duration::from_millis(150)).await?;
    let webhooks = subscribe(&bus, &out, &receivers).await?;

    for s in bus.stats().iter().filter(|s| s.lag > 0) {
        println!(
            "resuming: `{}` is {} event(s) behind from the last run",
            s.name, s.lag
        );
    }
    let backlog = unsent(&webhooks).await?;
    if backlog > 0 {
        println!("resuming: {backlog} webhook deliveries were still pending from the last run");
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
        bus.drain().await?;
    } else {
        println!("draining...");
        bus.drain().await?;
        webhooks.idle().await?;
    }
    if let Some(address) = dashboard_address() {
        serve_dashboard(&bus, &address).await?;
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
    let pending = unsent(&webhooks).await?;
    let (verified, refused) = receivers.webhooks.counts();
    println!();
    println!(
        "customer endpoint: {verified} webhook(s) with a verified signature, {refused} refused; {pending} still pending in {}",
        out.join("webhooks.db").display()
    );
    println!(
        "analytics collector: {} track call(s)",
        receivers.analytics.calls().len()
    );
    let mails = receivers.smtp.received();
    println!("SMTP server: {} message(s)", mails.len());
    for mail in &mails {
        let text = String::from_utf8_lossy(&mail.data);
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("?");
        println!("  to {}: {subject}", mail.envelope_to.join(", "));
    }
    println!("registry: examples/signup/events.registry (`grep user.created` it)");
    Ok(())
}

/// `--dashboard` (on 127.0.0.1:8080) or `--dashboard ADDRESS`.
fn dashboard_address() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--dashboard")?;
    Some(
        args.get(at + 1)
            .filter(|a| !a.starts_with("--"))
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
    )
}

/// Serves the bus's dashboard at `/ops` until Ctrl-C.
async fn serve_dashboard(bus: &Bus, address: &str) -> Result<(), Box<dyn Error>> {
    let app = axum::Router::new().nest("/ops", Dashboard::new(bus.clone()).router());
    let listener = tokio::net::TcpListener::bind(address).await?;
    println!(
        "dashboard: http://{}/ops (Ctrl-C to stop)",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Webhook deliveries not sent yet: pending, or cut short mid-attempt by
/// the last stop (those go again first).
async fn unsent(webhooks: &Webhooks) -> Result<usize, Box<dyn Error>> {
    let mut unsent = 0;
    for state in [DeliveryState::Pending, DeliveryState::Sending] {
        unsent += webhooks.deliveries(None, Some(state), 0, 1000).await?.len();
    }
    Ok(unsent)
}

/// Starts one subscription per side effect. Each sees only the events of
/// its protocol, in batches where the sink prefers them. The example's test
/// wires a bus with it too, to keep the routes in `events.registry` current.
async fn subscribe(
    bus: &Bus,
    out: &Path,
    receivers: &Receivers,
) -> Result<Webhooks, Box<dyn Error>> {
    bus.subscribe(
        "analytics",
        Segment::new("signup-example-write-key")
            .endpoint(receivers.analytics.url())
            .batch(BatchConfig {
                size: 5,
                timeout: Duration::from_millis(200),
                ..BatchConfig::default()
            }),
    )
    .start()
    .await?;

    let mailer = Mailer::builder("127.0.0.1")
        .port(receivers.smtp.port())
        .tls(Tls::None) // a local relay; use `Tls::StartTls` (the default) for a provider
        .from("Accounts <accounts@example.com>")
        .render(render_fn(|note| match note.template.as_str() {
            "welcome" => Ok(Rendered::new(
                "Welcome aboard",
                format!("Hello! Your account {} is ready.", note.data["user_id"]),
            )),
            "password-reset" => Ok(Rendered::new(
                "Reset your password",
                "Follow the link we sent to reset your password.",
            )),
            other => Err(RenderError::unknown_template(other)),
        }))
        .build()?;
    bus.subscribe("email", mailer).concurrent(8).start().await?;

    let endpoints = StaticEndpoints::new();
    endpoints.insert(Endpoint::new(
        "acme",
        &receivers.webhooks.url(),
        WEBHOOK_SECRET,
    )?);
    let webhooks = Webhooks::builder(endpoints)
        .store_path(out.join("webhooks.db"))
        // The example's customer endpoint is on this machine.
        .allow("127.0.0.1/32".parse()?)
        .per_endpoint(1)
        .build()?;
    bus.subscribe("webhooks", webhooks.consumer())
        .start()
        .await?;

    bus.subscribe(
        "audit",
        ProtocolConsumer::<dyn Auditable, _>::new(Stdout("audit")),
    )
    .start()
    .await?;
    Ok(webhooks)
}
