//! Consumer modes: concurrent runs up to its limit at once, partitioned
//! keeps each key in order while keys run in parallel.

use eventbus::{AnyEvent, BoxError, Bus, Consumer, event};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[event]
pub struct MessageSent {
    pub conversation: u64,
    pub seq: u64,
}

/// Tracks how many handlers run at once, and the order per conversation.
#[derive(Clone, Default)]
struct Probe {
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    order: Arc<Mutex<HashMap<u64, Vec<u64>>>>,
}

impl Consumer for Probe {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let msg = event.downcast_ref::<MessageSent>().unwrap();
        // Long enough that other handlers start meanwhile; the clock is
        // paused, so this costs no real time.
        tokio::time::sleep(Duration::from_millis(10 + msg.seq % 7)).await;
        self.order
            .lock()
            .unwrap()
            .entry(msg.conversation)
            .or_default()
            .push(msg.seq);
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_mode_fills_every_slot_and_never_more() {
    let bus = Bus::builder().capacity(1024).build().unwrap();
    let probe = Probe::default();
    bus.subscribe("concurrent", probe.clone())
        .concurrent(16)
        .start()
        .await
        .unwrap();
    for seq in 0..500 {
        bus.notify(MessageSent::new(seq % 5, seq)).await.unwrap();
    }
    bus.drain().await.unwrap();
    assert_eq!(probe.peak.load(Ordering::SeqCst), 16);
    let total: usize = probe.order.lock().unwrap().values().map(Vec::len).sum();
    assert_eq!(total, 500);
    assert_eq!(bus.stats()[0].in_flight, 0);
}

/// Bursts into free permits are spawned in groups by fan-out tasks; limits
/// below, at and above a group's size must hold on real worker threads, and
/// every event must be delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bursts_respect_the_limit_on_worker_threads() {
    for limit in [1, 7, 32, 100, 5000] {
        let bus = Bus::builder().capacity(8192).build().unwrap();
        let probe = Probe::default();
        bus.subscribe("burst", probe.clone())
            .concurrent(limit)
            .start()
            .await
            .unwrap();
        let events = match limit {
            1 => 50,
            7 => 300,
            _ => 2000,
        };
        for seq in 0..events {
            bus.notify(MessageSent::new(seq % 3, seq)).await.unwrap();
        }
        bus.drain().await.unwrap();
        let peak = probe.peak.load(Ordering::SeqCst);
        assert!(peak <= limit, "limit {limit}, peak {peak}");
        let mut seen: Vec<u64> = probe
            .order
            .lock()
            .unwrap()
            .values()
            .flatten()
            .copied()
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..events).collect::<Vec<_>>(), "limit {limit}");
        let stats = &bus.stats()[0];
        assert_eq!(
            (stats.delivered, stats.in_flight, stats.lag),
            (events, 0, 0)
        );
        bus.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn sequential_mode_runs_one_at_a_time_in_order() {
    let bus = Bus::builder().build().unwrap();
    let probe = Probe::default();
    bus.subscribe("sequential", probe.clone())
        .start()
        .await
        .unwrap();
    for seq in 0..50 {
        bus.notify(MessageSent::new(1, seq)).await.unwrap();
    }
    bus.drain().await.unwrap();
    assert_eq!(probe.peak.load(Ordering::SeqCst), 1);
    assert_eq!(probe.order.lock().unwrap()[&1], (0..50).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn partitioned_mode_keeps_each_key_in_order_and_runs_keys_in_parallel() {
    let bus = Bus::builder().capacity(1024).build().unwrap();
    let probe = Probe::default();
    bus.subscribe("partitioned", probe.clone())
        .partitioned(4, |e: &AnyEvent| {
            e.downcast_ref::<MessageSent>().unwrap().conversation
        })
        .start()
        .await
        .unwrap();
    for seq in 0..400 {
        bus.notify(MessageSent::new(seq % 8, seq)).await.unwrap();
    }
    bus.drain().await.unwrap();
    let order = probe.order.lock().unwrap();
    assert_eq!(order.len(), 8);
    for (conversation, seqs) in order.iter() {
        let expected: Vec<u64> = (0..400).filter(|s| s % 8 == *conversation).collect();
        assert_eq!(seqs, &expected, "conversation {conversation} in order");
    }
    let peak = probe.peak.load(Ordering::SeqCst);
    assert!(
        peak > 1 && peak <= 4,
        "parallel across lanes, at most one per lane: {peak}"
    );
}
