//! Which emails of an event were sent, so that a retry of the event sends
//! only the rest.
//!
//! Kept in memory, per process, for a bounded number of events: an event
//! whose emails all went out is forgotten at once; one that failed is kept
//! until it succeeds or is pushed out by newer failures, which covers the
//! subscription's retries and a replay of its dead letter in this process.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use uuid::Uuid;

pub(super) struct Progress {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    sent: HashMap<Uuid, HashSet<usize>>,
    /// Events in the order they were first recorded, oldest first; may hold
    /// ids already forgotten, which eviction skips.
    order: VecDeque<Uuid>,
}

impl Progress {
    pub(super) fn new(capacity: usize) -> Self {
        Progress {
            inner: Mutex::default(),
            capacity,
        }
    }

    /// The indices of the event's emails already sent.
    pub(super) fn sent(&self, event: Uuid) -> HashSet<usize> {
        self.lock().sent.get(&event).cloned().unwrap_or_default()
    }

    /// Email `index` of `event` went out. Recorded at once, not at the end
    /// of the event, so that a handler cut short (a shutdown deadline) still
    /// leaves what it sent behind.
    pub(super) fn record(&self, event: Uuid, index: usize) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        match inner.sent.get_mut(&event) {
            Some(indices) => {
                indices.insert(index);
            }
            None => {
                inner.sent.insert(event, HashSet::from([index]));
                inner.order.push_back(event);
            }
        }
        while inner.sent.len() > self.capacity {
            match inner.order.pop_front() {
                Some(oldest) => {
                    inner.sent.remove(&oldest);
                }
                None => break,
            }
        }
        // Forgotten events leave their ids in `order`; drop them before the
        // queue outgrows the map by much.
        if inner.order.len() > 2 * self.capacity {
            let sent = &inner.sent;
            inner.order.retain(|id| sent.contains_key(id));
        }
    }

    /// Every email of `event` went out.
    pub(super) fn forget(&self, event: Uuid) {
        self.lock().sent.remove(&event);
    }

    /// How many events are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().sent.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map is consistent after every statement, so a panic while it
        // was held leaves nothing half-done.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_forgotten() {
        let progress = Progress::new(10);
        let event = Uuid::now_v7();
        progress.record(event, 0);
        progress.record(event, 2);
        assert_eq!(progress.sent(event), HashSet::from([0, 2]));
        progress.forget(event);
        assert!(progress.sent(event).is_empty());
    }

    #[test]
    fn forgets_the_oldest_past_capacity() {
        let progress = Progress::new(2);
        let events: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        for &event in &events {
            progress.record(event, 0);
        }
        assert_eq!(progress.len(), 2);
        assert!(progress.sent(events[0]).is_empty());
        assert_eq!(progress.sent(events[2]), HashSet::from([0]));
    }

    #[test]
    fn forgotten_ids_do_not_pile_up() {
        let progress = Progress::new(2);
        for _ in 0..100 {
            let event = Uuid::now_v7();
            progress.record(event, 0);
            progress.forget(event);
        }
        assert!(progress.lock().order.len() <= 4);
    }
}
