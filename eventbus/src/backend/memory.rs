//! The in-memory log: a bounded ring shared by every subscription.
//!
//! Events live in fixed-size chunks linked in append order. Each slot is a
//! `OnceLock`, written once by the producer and then read by every cursor
//! without a lock: a cursor borrows a run of slots from one chunk as a
//! [`Batch`], so a delivery costs neither a copy nor a reference-count bump.
//! When the last cursor moves past a chunk, its slots go back to the
//! producer to reuse (see [`Spares`]), and the producer waits when the
//! slowest cursor is `capacity` events behind.

use super::error::TryAppendError;
use super::{Backend, Batch, Capabilities, Position, ReadError, Reader, StartFrom, WriteError};
use crate::event::AnyEvent;
use async_trait::async_trait;
use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::Notify;

/// Slots per chunk: one allocation per this many events, and the longest run
/// a cursor can borrow at once.
const CHUNK: usize = 1024;

/// The in-memory log, the default backend of a [`Bus`](crate::Bus).
///
/// Holds at most `capacity` events that some subscription has not finished;
/// keeps nothing across a restart. A bus built on it appends without a
/// future or an allocation when there is room, which
/// [`Bus::try_notify`](crate::Bus::try_notify) relies on; that path is the
/// bus's own, not part of [`Backend`].
pub struct MemoryLog {
    shared: Arc<Shared>,
}

struct Shared {
    capacity: u64,
    /// How many events were published. Written only under `producer`.
    head: AtomicU64,
    closed: AtomicBool,
    producer: Mutex<Producer>,
    cursors: Mutex<Vec<(u64, Arc<Released>)>>,
    next_cursor_id: AtomicU64,
    data: Notify,
    data_sleepers: AtomicUsize,
    space: Notify,
    space_sleepers: AtomicUsize,
    spares: Arc<Spares>,
}

struct Producer {
    tail: Arc<Chunk>,
    /// `head` may grow up to this without looking at the cursors again.
    limit: Position,
}

pub(crate) struct Chunk {
    base: Position,
    slots: Slots,
    next: OnceLock<Arc<Chunk>>,
    spares: Arc<Spares>,
}

type Slots = Box<[OnceLock<AnyEvent>]>;

impl Chunk {
    fn new(base: Position, spares: &Arc<Spares>) -> Arc<Chunk> {
        Arc::new(Chunk {
            base,
            slots: spares.take(),
            next: OnceLock::new(),
            spares: Arc::clone(spares),
        })
    }

    #[inline]
    pub(crate) fn get(&self, i: usize) -> &AnyEvent {
        self.slots[i]
            .get()
            .expect("slots below the published head are written")
    }
}

impl Drop for Chunk {
    /// Unlinks the chain iteratively: dropping a long run of chunks that
    /// nobody else holds must not recurse once per chunk. Each chunk's
    /// slots go back to the producer.
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(chunk) = next {
            next = match Arc::into_inner(chunk) {
                Some(mut chunk) => chunk.next.take(),
                None => None,
            };
        }
        let mut slots = std::mem::take(&mut self.slots);
        // Events held elsewhere too only lose a reference: that is done
        // here. The last reference of an event is left for a producer.
        let mut to_free = false;
        for slot in slots.iter_mut() {
            match slot.get() {
                Some(event) if event.is_unique() => to_free = true,
                Some(_) => drop(slot.take()),
                None => {}
            }
        }
        self.spares.give(slots, to_free);
    }
}

/// The slots of chunks every cursor has left, kept for the producer to
/// reuse, and the events still in them for a producer to drop.
///
/// Without this, the last cursor to pass a chunk drops its events on a
/// subscription's thread, while the producer allocated them on its own.
/// With glibc's allocator each such free takes the lock of the producer's
/// arena, which the producer needs for its next event: with events made in
/// the producer's loop that contention cost about a third of the bus's
/// rate at K = 4. A producer that drops them frees into its own cache.
/// At most [`SPARES`] chunks wait here, so at most that many chunks of
/// finished events outlive their last reader until the producer moves on.
#[derive(Default)]
struct Spares(Mutex<SpareSlots>);

#[derive(Default)]
struct SpareSlots {
    /// Left by every cursor, events still in them.
    used: Vec<Slots>,
    /// Emptied by a producer, ready for a new chunk.
    clean: Vec<Slots>,
}

/// How many chunks' slots wait for reuse.
const SPARES: usize = 2;

impl Spares {
    /// Slots for a new chunk: clean ones if a producer emptied some.
    fn take(&self) -> Slots {
        let clean = self.0.lock().expect("spares lock").clean.pop();
        clean.unwrap_or_else(|| (0..CHUNK).map(|_| OnceLock::new()).collect())
    }

    /// Keeps the slots of a chunk every cursor has left, if there is room;
    /// otherwise they and their events are dropped here. `to_free`: some
    /// event in them has no other handle.
    fn give(&self, slots: Slots, to_free: bool) {
        if slots.is_empty() {
            return;
        }
        let mut spares = self.0.lock().expect("spares lock");
        if spares.used.len() + spares.clean.len() < SPARES {
            if to_free {
                spares.used.push(slots);
            } else {
                spares.clean.push(slots);
            }
        }
    }

    /// Drops the events of one used set of slots, on the calling
    /// producer's thread and outside the producer lock, and keeps the
    /// slots for a later chunk.
    fn clean_one(&self) {
        let Some(mut slots) = self.0.lock().expect("spares lock").used.pop() else {
            return;
        };
        for slot in slots.iter_mut() {
            drop(slot.take());
        }
        self.0.lock().expect("spares lock").clean.push(slots);
    }
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk").field("base", &self.base).finish()
    }
}

impl MemoryLog {
    /// A log that holds up to `capacity` unfinished events.
    ///
    /// # Panics
    ///
    /// When `capacity` is 0; [`BusBuilder::build`](crate::BusBuilder::build)
    /// reports that as an error instead.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "MemoryLog capacity must be at least 1");
        let spares = Arc::new(Spares::default());
        MemoryLog {
            shared: Arc::new(Shared {
                capacity: capacity as u64,
                head: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                producer: Mutex::new(Producer {
                    tail: Chunk::new(0, &spares),
                    limit: Position::MAX,
                }),
                cursors: Mutex::new(Vec::new()),
                next_cursor_id: AtomicU64::new(0),
                data: Notify::new(),
                data_sleepers: AtomicUsize::new(0),
                space: Notify::new(),
                space_sleepers: AtomicUsize::new(0),
                spares,
            }),
        }
    }

    /// The most unfinished events the log holds.
    pub fn capacity(&self) -> usize {
        self.shared.capacity as usize
    }
}

impl fmt::Debug for MemoryLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLog")
            .field("capacity", &self.shared.capacity)
            .field("head", &self.shared.head.load(SeqCst))
            .field("closed", &self.shared.closed.load(SeqCst))
            .finish()
    }
}

impl Shared {
    pub(crate) fn try_append(&self, event: AnyEvent) -> Result<Position, TryAppendError> {
        let mut producer = self.producer.lock().expect("producer lock");
        // Checked under the producer lock, which `close` takes too: an event
        // is either appended before the log closes, and so read by every
        // cursor before it ends, or refused.
        if self.closed.load(SeqCst) {
            return Err(TryAppendError::Closed(event));
        }
        let head = self.head.load(SeqCst);
        if head >= producer.limit {
            producer.limit = self.limit();
            if head >= producer.limit {
                return Err(TryAppendError::Full(event));
            }
        }
        let mut index = (head - producer.tail.base) as usize;
        let linked = index == CHUNK;
        if linked {
            let chunk = Chunk::new(head, &self.spares);
            let _ = producer.tail.next.set(Arc::clone(&chunk));
            producer.tail = chunk;
            index = 0;
        }
        let _ = producer.tail.slots[index].set(event);
        self.head.store(head + 1, SeqCst);
        drop(producer);
        if linked {
            // Once a chunk, so the next one finds clean slots.
            self.spares.clean_one();
        }
        if self.data_sleepers.load(SeqCst) > 0 {
            self.data.notify_waiters();
        }
        Ok(head)
    }

    /// How far `head` may go: the slowest cursor plus the capacity.
    fn limit(&self) -> Position {
        let cursors = self.cursors.lock().expect("cursor lock");
        cursors
            .iter()
            .map(|(_, released)| released.load(SeqCst))
            .min()
            .map_or(Position::MAX, |slowest| {
                slowest.saturating_add(self.capacity)
            })
    }

    async fn append(&self, mut event: AnyEvent) -> Result<Position, WriteError> {
        loop {
            match self.try_append(event) {
                Ok(pos) => return Ok(pos),
                Err(TryAppendError::Closed(e)) => return Err(WriteError::Closed(e)),
                Err(TryAppendError::Full(e)) => event = e,
            }
            let mut notified = pin!(self.space.notified());
            notified.as_mut().enable();
            let _sleeping = Sleeper::new(&self.space_sleepers);
            // Re-check after announcing ourselves, so a release between the
            // failed attempt and now is not missed.
            match self.try_append(event) {
                Ok(pos) => return Ok(pos),
                Err(TryAppendError::Closed(e)) => return Err(WriteError::Closed(e)),
                Err(TryAppendError::Full(e)) => event = e,
            }
            notified.await;
        }
    }

    fn wake_producers(&self) {
        if self.space_sleepers.load(SeqCst) > 0 {
            self.space.notify_waiters();
        }
    }
}

/// Counts a task as asleep on a `Notify` for as long as it lives, so wakers
/// skip the notification when nobody sleeps.
struct Sleeper<'a>(&'a AtomicUsize);

impl<'a> Sleeper<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, SeqCst);
        Sleeper(count)
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl MemoryLog {
    /// How many events were appended.
    pub(crate) fn head(&self) -> Position {
        self.shared.head.load(SeqCst)
    }

    /// Appends without waiting: the bus's fast path.
    #[inline]
    pub(crate) fn try_append(&self, event: AnyEvent) -> Result<Position, TryAppendError> {
        self.shared.try_append(event)
    }
}

#[async_trait]
impl Backend for MemoryLog {
    /// Ordered, and nothing more: it lives and dies with the process.
    fn capabilities(&self) -> Capabilities {
        Capabilities::new().ordered(true)
    }

    async fn append(&self, event: AnyEvent) -> Result<Position, WriteError> {
        self.shared.append(event).await
    }

    async fn reader(
        &self,
        _subscription: &str,
        from: StartFrom,
    ) -> Result<Box<dyn Reader>, ReadError> {
        match from {
            StartFrom::Now => Ok(Box::new(self.open_at_head())),
            StartFrom::Beginning => Err(ReadError::Unsupported(
                "the in-memory log keeps no history, so a subscription can only start from now; use a durable log to read from the beginning",
            )),
        }
    }

    fn capacity(&self) -> Option<usize> {
        usize::try_from(self.shared.capacity).ok()
    }

    fn close(&self) {
        let producer = self.shared.producer.lock().expect("producer lock");
        self.shared.closed.store(true, SeqCst);
        drop(producer);
        self.shared.data.notify_waiters();
        self.shared.space.notify_waiters();
    }
}

impl MemoryLog {
    fn open_at_head(&self) -> MemoryCursor {
        let shared = &self.shared;
        let mut producer = shared.producer.lock().expect("producer lock");
        let head = shared.head.load(SeqCst);
        let released = Arc::new(Released(AtomicU64::new(head)));
        let id = shared.next_cursor_id.fetch_add(1, SeqCst);
        shared
            .cursors
            .lock()
            .expect("cursor lock")
            .push((id, Arc::clone(&released)));
        producer.limit = producer.limit.min(head.saturating_add(shared.capacity));
        MemoryCursor {
            shared: Arc::clone(shared),
            chunk: Arc::clone(&producer.tail),
            read: head,
            released,
            id,
        }
    }
}

struct MemoryCursor {
    shared: Arc<Shared>,
    chunk: Arc<Chunk>,
    read: Position,
    released: Arc<Released>,
    id: u64,
}

/// A cursor's finished position, alone on its cache line: every cursor
/// moves its own at each commit, and the producer reads them all. Packed
/// side by side (the allocator puts these small values next to each
/// other), the cores would fight over shared lines, and how often they did
/// depended on where the allocator happened to put them.
#[repr(align(128))]
struct Released(AtomicU64);

impl std::ops::Deref for Released {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

impl fmt::Debug for MemoryCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCursor")
            .field("read", &self.read)
            .field("released", &self.released.load(SeqCst))
            .finish()
    }
}

impl MemoryCursor {
    /// A batch of what is readable now, if anything.
    fn take(&mut self, max: usize) -> Option<Batch> {
        let head = self.shared.head.load(SeqCst);
        if self.read >= head {
            return None;
        }
        while self.read >= self.chunk.base + CHUNK as u64 {
            let next = self
                .chunk
                .next
                .get()
                .expect("a chunk is linked before events past it are published");
            self.chunk = Arc::clone(next);
        }
        let start = (self.read - self.chunk.base) as usize;
        let len = (max.max(1) as u64)
            .min(head - self.read)
            .min((CHUNK - start) as u64) as usize;
        let batch = Batch::ring(Arc::clone(&self.chunk), self.read, start, len);
        self.read += len as u64;
        Some(batch)
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, ReadError> {
        loop {
            // Read `closed` before the head: once closed, no event is
            // appended, so a cursor that then finds nothing has read all.
            let closed = self.shared.closed.load(SeqCst);
            if let Some(batch) = self.take(max) {
                return Ok(Some(batch));
            }
            if closed {
                return Ok(None);
            }
            let shared = Arc::clone(&self.shared);
            let mut notified = pin!(shared.data.notified());
            notified.as_mut().enable();
            let _sleeping = Sleeper::new(&shared.data_sleepers);
            if self.shared.head.load(SeqCst) > self.read || self.shared.closed.load(SeqCst) {
                continue;
            }
            notified.await;
        }
    }
}

#[async_trait]
impl Reader for MemoryCursor {
    async fn next(&mut self, max: usize) -> Result<Option<Batch>, ReadError> {
        self.next_batch(max).await
    }

    async fn commit(&mut self, up_to: Position) -> Result<(), ReadError> {
        self.release_now(up_to);
        Ok(())
    }

    fn position(&self) -> Position {
        self.read
    }

    fn lag(&self) -> Option<u64> {
        Some(
            self.shared
                .head
                .load(SeqCst)
                .saturating_sub(self.released.load(SeqCst)),
        )
    }
}

impl MemoryCursor {
    fn release_now(&self, up_to: Position) {
        if self.released.fetch_max(up_to, SeqCst) < up_to {
            self.shared.wake_producers();
        }
    }
}

impl Drop for MemoryCursor {
    fn drop(&mut self) {
        self.shared
            .cursors
            .lock()
            .expect("cursor lock")
            .retain(|(id, _)| *id != self.id);
        self.shared.wake_producers();
    }
}
