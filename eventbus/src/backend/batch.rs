use super::Position;
use super::memory::Chunk;
use crate::event::AnyEvent;
use std::sync::Arc;

/// Deliveries a [`Reader`](super::Reader) read, in log order.
///
/// The in-memory log lends events straight out of its ring (no copy and no
/// reference count per event); other logs hand over owned events.
#[derive(Debug)]
pub struct Batch {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Ring {
        chunk: Arc<Chunk>,
        first: Position,
        start: usize,
        len: usize,
    },
    Owned {
        events: Vec<(Position, AnyEvent)>,
        end: Option<Position>,
        /// The attempt of each event, for a backend that counts
        /// redeliveries; `None`: every event's first.
        attempts: Option<Vec<u32>>,
    },
}

impl Batch {
    /// A batch of owned events, in increasing position order.
    pub fn from_events(events: Vec<(Position, AnyEvent)>) -> Self {
        debug_assert!(events.windows(2).all(|w| w[0].0 < w[1].0));
        Batch {
            inner: Inner::Owned {
                events,
                end: None,
                attempts: None,
            },
        }
    }

    /// A batch of owned events with the attempt the backend counts for
    /// each (1 for a first delivery, 3 for the third), in increasing
    /// position order: for a backend that redelivers by itself, so the
    /// subscription's retry policy counts the attempts the backend already
    /// made.
    pub fn from_deliveries(deliveries: Vec<(Position, AnyEvent, u32)>) -> Self {
        debug_assert!(deliveries.windows(2).all(|w| w[0].0 < w[1].0));
        let (events, attempts) = deliveries
            .into_iter()
            .map(|(position, event, attempt)| ((position, event), attempt.max(1)))
            .unzip();
        Batch {
            inner: Inner::Owned {
                events,
                end: None,
                attempts: Some(attempts),
            },
        }
    }

    /// A batch of owned events read up to (not including) `end`: for a log
    /// that skipped positions it read, such as rows it quarantined, so the
    /// subscription can release past them. May be empty.
    pub fn from_events_until(events: Vec<(Position, AnyEvent)>, end: Position) -> Self {
        debug_assert!(events.iter().all(|(p, _)| *p < end));
        Batch {
            inner: Inner::Owned {
                events,
                end: Some(end),
                attempts: None,
            },
        }
    }

    pub(crate) fn ring(chunk: Arc<Chunk>, first: Position, start: usize, len: usize) -> Self {
        Batch {
            inner: Inner::Ring {
                chunk,
                first,
                start,
                len,
            },
        }
    }

    /// How many events the batch holds.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Ring { len, .. } => *len,
            Inner::Owned { events, .. } => events.len(),
        }
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th event and its position.
    ///
    /// # Panics
    ///
    /// When `i >= len()`.
    #[inline]
    pub fn get(&self, i: usize) -> (Position, &AnyEvent) {
        match &self.inner {
            Inner::Ring {
                chunk,
                first,
                start,
                len,
            } => {
                assert!(i < *len, "batch index {i} out of range");
                (*first + i as u64, chunk.get(start + i))
            }
            Inner::Owned { events, .. } => {
                let (pos, event) = &events[i];
                (*pos, event)
            }
        }
    }

    /// The attempt the backend counts for the `i`th event: 1 unless the
    /// backend redelivered it.
    ///
    /// # Panics
    ///
    /// When `i >= len()`.
    #[inline]
    pub fn attempt(&self, i: usize) -> u32 {
        assert!(i < self.len(), "batch index {i} out of range");
        match &self.inner {
            Inner::Owned {
                attempts: Some(attempts),
                ..
            } => attempts[i],
            _ => 1,
        }
    }

    /// The position after the batch's last event: what to release once the
    /// whole batch is finished.
    pub fn end(&self) -> Option<Position> {
        match &self.inner {
            Inner::Ring { first, len, .. } => Some(first + *len as u64),
            Inner::Owned { events, end, .. } => {
                end.or_else(|| events.last().map(|(pos, _)| pos + 1))
            }
        }
    }
}
