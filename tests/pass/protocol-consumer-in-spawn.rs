//! Services start subscriptions from spawned tasks (a supervisor, one worker
//! per tenant): a `ProtocolConsumer`, of a built-in protocol and of the
//! user's own, must start inside `tokio::spawn`.

use eventbus::{Bus, ProtocolConsumer, Track, Trackable, event, protocol, register, sink_fn};

#[event]
struct UserCreated {
    user_id: u64,
}

#[register]
impl Trackable for UserCreated {
    fn track(&self) -> Track {
        Track::new(self, self.user_id)
    }
}

/// Writes a line to the audit log.
#[protocol]
pub trait Auditable {
    /// The audit line.
    fn audit(&self) -> String;
}

#[register]
impl Auditable for UserCreated {
    fn audit(&self) -> String {
        format!("user {} created", self.user_id)
    }
}

#[tokio::main]
async fn main() {
    let bus = Bus::builder().build().unwrap();
    let spawned = tokio::spawn({
        let bus = bus.clone();
        async move {
            bus.subscribe(
                "analytics",
                ProtocolConsumer::<dyn Trackable, _>::new(sink_fn(|_: Vec<Track>| async {
                    Ok(())
                })),
            )
            .start()
            .await
            .unwrap();
            bus.subscribe(
                "audit",
                ProtocolConsumer::<dyn Auditable, _>::new(sink_fn(|_: Vec<String>| async {
                    Ok(())
                })),
            )
            .start()
            .await
            .unwrap();
            bus.notify(UserCreated::new(1)).await.unwrap();
            bus.drain().await.unwrap();
        }
    });
    spawned.await.unwrap();
    assert_eq!(bus.stats().len(), 2);
    bus.shutdown().await;
}
