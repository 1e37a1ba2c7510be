//! The in-memory log lets go of events once every subscription has finished
//! them: a bounded number stay behind while the bus runs, none after it is
//! gone, whether the events are held elsewhere too or only by the bus.

use eventbus::{AnyEvent, Bus, event};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// Counts how many values of it were dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counted(u8);

static DROPPED: AtomicUsize = AtomicUsize::new(0);

impl Drop for Counted {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, SeqCst);
    }
}

#[event]
pub struct Payload {
    pub counted: Counted,
}

/// Events per chunk of the ring, and how many chunks may hold finished
/// events: the one each cursor stands in, the producer's, and the spares
/// waiting for reuse.
const CHUNK: usize = 1024;
const LINGERING_CHUNKS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_events_are_dropped_whoever_holds_them() {
    let bus = Bus::builder().capacity(2 * CHUNK).build().unwrap();
    for name in ["a", "b", "c"] {
        bus.subscribe(
            name,
            eventbus::consumer_fn(|_: AnyEvent| async { Ok::<(), eventbus::BoxError>(()) }),
        )
        .start()
        .await
        .unwrap();
    }
    let total = 12 * CHUNK;
    // Half the events are only the bus's; the other half the test holds
    // too, until after the bus is done with them.
    let mut held = Vec::new();
    for i in 0..total {
        let event: AnyEvent = Payload::new(Counted::default()).into();
        if i % 2 == 0 {
            held.push(event.clone());
        }
        bus.notify(event).await.unwrap();
    }
    bus.drain().await.unwrap();
    let unheld = total - held.len();
    let dropped = DROPPED.load(SeqCst);
    assert!(
        dropped + LINGERING_CHUNKS * CHUNK >= unheld,
        "only {dropped} of {unheld} finished events the bus alone held were dropped",
    );
    drop(held);
    let dropped = DROPPED.load(SeqCst);
    assert!(
        dropped + LINGERING_CHUNKS * CHUNK >= total,
        "only {dropped} of {total} finished events were dropped",
    );
    bus.shutdown().await;
    drop(bus);
    // The subscriptions' tasks let go of their readers as they end, which
    // may be just after `shutdown` returns.
    for _ in 0..200 {
        if DROPPED.load(SeqCst) == total {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        DROPPED.load(SeqCst),
        total,
        "every event is dropped once the bus is gone"
    );
}
