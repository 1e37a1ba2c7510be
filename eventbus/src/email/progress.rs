//! Which emails of an event were sent or refused for good, so that a retry
//! of the event sends only the rest.
//!
//! Kept in memory, per process, for a bounded number of events: an event
//! whose emails all went out is forgotten at once; any other is kept until
//! it succeeds or is pushed out by newer ones, which covers the
//! subscription's retries and a replay of its dead letter in this process.
//!
//! Each email is keyed by its place in the event's list *and* a fingerprint
//! of the notification, so a `Notifiable` impl that returns its list in
//! another order on the retry is noticed instead of skipping the wrong
//! email.

use crate::protocol::Notification;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use uuid::Uuid;

pub(super) struct Progress {
    inner: Mutex<Inner>,
    capacity: usize,
}

/// What became of one email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The server took it.
    Sent,
    /// The server refused it with a 5xx: `reply` is what it said, for the
    /// event's error on the attempts that no longer send it.
    Rejected { reply: String },
}

/// One email's record: the notification it was made from, and its fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Done {
    pub(super) fingerprint: u64,
    pub(super) outcome: Outcome,
}

#[derive(Default)]
struct Inner {
    done: HashMap<Uuid, HashMap<usize, Done>>,
    /// Events in the order they were first recorded, oldest first; may hold
    /// ids already forgotten, which eviction skips.
    order: VecDeque<Uuid>,
}

/// The notification's identity across retries: recipient, template and
/// data (and channel). Only compared within this process, so the std
/// hasher's unstable output across builds does not matter.
pub(super) fn fingerprint(notification: &Notification) -> u64 {
    let mut hasher = DefaultHasher::new();
    // serde_json writes a `Map`'s keys in one order for equal maps, so equal
    // notifications give equal text.
    serde_json::to_string(notification)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

impl Progress {
    pub(super) fn new(capacity: usize) -> Self {
        Progress {
            inner: Mutex::default(),
            capacity,
        }
    }

    /// What is known of the event's emails, by index.
    pub(super) fn done(&self, event: Uuid) -> HashMap<usize, Done> {
        self.lock().done.get(&event).cloned().unwrap_or_default()
    }

    /// Email `index` of `event` ended as `outcome`. Recorded at once, not at
    /// the end of the event, so that a handler cut short (a shutdown
    /// deadline) still leaves what it sent behind.
    pub(super) fn record(&self, event: Uuid, index: usize, done: Done) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        match inner.done.get_mut(&event) {
            Some(emails) => {
                emails.insert(index, done);
            }
            None => {
                inner.done.insert(event, HashMap::from([(index, done)]));
                inner.order.push_back(event);
            }
        }
        while inner.done.len() > self.capacity {
            match inner.order.pop_front() {
                Some(oldest) => {
                    inner.done.remove(&oldest);
                }
                None => break,
            }
        }
        // Forgotten events leave their ids in `order`; drop them before the
        // queue outgrows the map by much.
        if inner.order.len() > 2 * self.capacity {
            let done = &inner.done;
            inner.order.retain(|id| done.contains_key(id));
        }
    }

    /// Forgets the event's refused emails and keeps the sent ones: the
    /// event is dead-lettered, and a replay of its letter is the user
    /// asking to try those again.
    pub(super) fn forget_rejected(&self, event: Uuid) {
        let mut inner = self.lock();
        if let Some(emails) = inner.done.get_mut(&event) {
            emails.retain(|_, done| done.outcome == Outcome::Sent);
            if emails.is_empty() {
                inner.done.remove(&event);
            }
        }
    }

    /// Every email of `event` went out, or what was kept of it no longer
    /// matches its list.
    pub(super) fn forget(&self, event: Uuid) {
        self.lock().done.remove(&event);
    }

    /// How many events are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().done.len()
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

    fn sent(fingerprint: u64) -> Done {
        Done {
            fingerprint,
            outcome: Outcome::Sent,
        }
    }

    #[test]
    fn remembers_until_forgotten() {
        let progress = Progress::new(10);
        let event = Uuid::now_v7();
        progress.record(event, 0, sent(1));
        progress.record(event, 2, sent(3));
        assert_eq!(progress.done(event).len(), 2);
        assert_eq!(progress.done(event)[&2], sent(3));
        progress.forget(event);
        assert!(progress.done(event).is_empty());
    }

    #[test]
    fn forgetting_the_rejected_keeps_the_sent() {
        let progress = Progress::new(10);
        let event = Uuid::now_v7();
        progress.record(event, 0, sent(1));
        let rejected = Done {
            fingerprint: 2,
            outcome: Outcome::Rejected {
                reply: "550 no".to_owned(),
            },
        };
        progress.record(event, 1, rejected);
        progress.forget_rejected(event);
        assert_eq!(progress.done(event), HashMap::from([(0, sent(1))]));
    }

    #[test]
    fn forgets_the_oldest_past_capacity() {
        let progress = Progress::new(2);
        let events: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        for &event in &events {
            progress.record(event, 0, sent(0));
        }
        assert_eq!(progress.len(), 2);
        assert!(progress.done(events[0]).is_empty());
        assert_eq!(progress.done(events[2]).len(), 1);
    }

    #[test]
    fn forgotten_ids_do_not_pile_up() {
        let progress = Progress::new(2);
        for _ in 0..100 {
            let event = Uuid::now_v7();
            progress.record(event, 0, sent(0));
            progress.forget(event);
        }
        assert!(progress.lock().order.len() <= 4);
    }

    #[test]
    fn the_fingerprint_tells_notifications_apart() {
        let a = Notification::email("a@example.com", "news");
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(
            fingerprint(&a),
            fingerprint(&Notification::email("b@example.com", "news"))
        );
        assert_ne!(fingerprint(&a), fingerprint(&a.clone().data("name", "Ada")));
    }
}
