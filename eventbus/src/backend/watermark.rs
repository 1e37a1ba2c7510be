//! The helper that turns out-of-order finishes into one commit point.

use super::Position;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// The finished position when deliveries finish out of order (concurrent
/// and partitioned modes): everything before the oldest unfinished one.
/// The helper by which every [`Reader`](super::Reader) with one commit
/// point per subscription turns finished deliveries into the position it
/// commits.
///
/// Events start in position order, so the window is a queue: starting pushes
/// at the back, finishing marks an entry found by binary search, and the
/// finished prefix is popped from the front. No allocation per event once the
/// queue has grown to the number in flight.
#[derive(Debug, Default)]
pub struct Watermark {
    window: Mutex<VecDeque<(Position, bool)>>,
    /// Set when the oldest event finishes, so the runner releases the log
    /// promptly.
    progressed: Notify,
}

impl Watermark {
    /// Nothing started.
    pub fn new() -> Self {
        Watermark::default()
    }

    /// Resolves after the oldest unfinished delivery finished, so the
    /// position to commit moved. Create it before checking
    /// [`done`](Watermark::done), so a finish in between is not missed.
    pub fn progressed(&self) -> tokio::sync::futures::Notified<'_> {
        self.progressed.notified()
    }

    /// A delivery started; positions start in increasing order.
    pub fn start(&self, position: Position) {
        let mut window = self.window.lock().expect("watermark lock");
        debug_assert!(window.back().is_none_or(|(last, _)| *last < position));
        window.push_back((position, false));
    }

    /// A delivery finished: handled, or dead-lettered.
    pub fn finish(&self, position: Position) {
        let mut window = self.window.lock().expect("watermark lock");
        let Ok(i) = window.binary_search_by_key(&position, |(p, _)| *p) else {
            return;
        };
        window[i].1 = true;
        if i > 0 {
            // Only the oldest event finishing moves the watermark.
            return;
        }
        while window.front().is_some_and(|(_, finished)| *finished) {
            window.pop_front();
        }
        drop(window);
        self.progressed.notify_one();
    }

    /// Everything before the returned position is finished, given that
    /// everything before `read` was read.
    pub fn done(&self, read: Position) -> Position {
        self.window
            .lock()
            .expect("watermark lock")
            .front()
            .map_or(read, |&(oldest, _)| oldest.min(read))
    }
}
