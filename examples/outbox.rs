//! The PostgreSQL outbox: a user row and its `UserCreated` commit together
//! in one transaction, and a rolled-back signup emits nothing.
//!
//! ```sh
//! cargo run --example outbox   # against EVENTBUS_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! It works in a schema of its own (`eventbus_outbox_example`), created on
//! the first run; run it again and the welcome mails of the earlier runs
//! are not sent again, because the subscription's place is kept in the
//! database.

use eventbus::{AnyEvent, BoxError, Bus, Consumer, PostgresLog, event};
use std::time::Duration;

#[event(name = "user.created")]
struct UserCreated {
    user_id: i64,
    email: String,
}

/// Sends the welcome mail (here: prints it), and tells `main` which user
/// it greeted.
struct Welcome(tokio::sync::mpsc::UnboundedSender<i64>);

impl Consumer for Welcome {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        if let Some(user) = event.downcast_ref::<UserCreated>() {
            println!("welcome mail to {} (user {})", user.email, user.user_id);
            let _ = self.0.send(user.user_id);
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("EVENTBUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = "eventbus_outbox_example";
    let log = PostgresLog::builder()
        .url(&url)
        .schema(schema)
        .connect()
        .await?;
    let pool = log.pool().clone();
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS eventbus_outbox_example.users (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             email text NOT NULL UNIQUE
         )",
    )
    .execute(&pool)
    .await?;

    let bus = Bus::builder()
        .backend(log.clone())
        .shutdown_timeout(Duration::from_secs(5))
        .build()?;
    let (greeted, mut greetings) = tokio::sync::mpsc::unbounded_channel();
    bus.subscribe("welcome", Welcome(greeted)).start().await?;

    // A signup: the user row and its event in one transaction.
    let email = format!("ada+{}@example.com", uuid_suffix());
    let mut tx = pool.begin().await?;
    let user_id: i64 = sqlx::query_scalar(
        "INSERT INTO eventbus_outbox_example.users (email) VALUES ($1) RETURNING id",
    )
    .bind(&email)
    .fetch_one(&mut *tx)
    .await?;
    log.notify_in(&mut tx, UserCreated::new(user_id, email))
        .await?;
    tx.commit().await?;
    println!("committed user {user_id} and its UserCreated");

    // A signup that fails after its event was written: both roll back.
    let mut tx = pool.begin().await?;
    let ghost: i64 = sqlx::query_scalar(
        "INSERT INTO eventbus_outbox_example.users (email) VALUES ('ghost@example.com') RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await?;
    log.notify_in(
        &mut tx,
        UserCreated::new(ghost, "ghost@example.com".to_owned()),
    )
    .await?;
    tx.rollback().await?;
    println!("rolled back user {ghost}: no row, no event, no mail");

    // The committed signup's mail goes out; the rolled-back one's never.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(greeted) = greetings.recv().await {
            assert_ne!(greeted, ghost, "a rolled-back signup was greeted");
            if greeted == user_id {
                break;
            }
        }
    })
    .await?;
    let report = bus.shutdown().await;
    println!("stopped: {report:?}");
    Ok(())
}

/// A suffix that differs between runs, so each run signs up a new user.
fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}")
}
