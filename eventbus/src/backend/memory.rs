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
use futures_util::task::AtomicWaker;
use std::fmt;
use std::pin::pin;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
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
    cursors: Mutex<Vec<CursorEntry>>,
    next_cursor_id: AtomicU64,
    /// Set when a cursor may have armed its doorbell since the producer
    /// last looked: the producer looks at the cursors only then. A flag,
    /// not a count, so a cursor that finds it set writes nothing shared.
    any_armed: AtomicBool,
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
                any_armed: AtomicBool::new(false),
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
        if self.any_armed.load(SeqCst) && self.any_armed.swap(false, SeqCst) {
            self.ring(false);
        }
        Ok(head)
    }

    /// Wakes the cursors waiting for an event, or all of them (`all`),
    /// when the log closes.
    fn ring(&self, all: bool) {
        let cursors = self.cursors.lock().expect("cursor lock");
        for cursor in cursors.iter() {
            if cursor.doorbell.disarm() || all {
                cursor.doorbell.waker.wake();
            }
        }
    }

    /// How far `head` may go: the slowest cursor plus the capacity.
    fn limit(&self) -> Position {
        let cursors = self.cursors.lock().expect("cursor lock");
        cursors
            .iter()
            .map(|cursor| cursor.released.load(SeqCst))
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
        self.shared.ring(true);
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
        let doorbell = Arc::new(Doorbell::default());
        shared
            .cursors
            .lock()
            .expect("cursor lock")
            .push(CursorEntry {
                id,
                released: Arc::clone(&released),
                doorbell: Arc::clone(&doorbell),
            });
        producer.limit = producer.limit.min(head.saturating_add(shared.capacity));
        MemoryCursor {
            shared: Arc::clone(shared),
            chunk: Arc::clone(&producer.tail),
            read: head,
            released,
            doorbell,
            id,
        }
    }
}

struct MemoryCursor {
    shared: Arc<Shared>,
    chunk: Arc<Chunk>,
    read: Position,
    released: Arc<Released>,
    doorbell: Arc<Doorbell>,
    id: u64,
}

/// What the producer knows of a cursor.
struct CursorEntry {
    id: u64,
    released: Arc<Released>,
    doorbell: Arc<Doorbell>,
}

/// How the producer wakes one cursor that found nothing to read: the
/// cursor's own waker, and whether it waits.
///
/// One per cursor rather than one `Notify` for all: a `Notify` takes a lock
/// shared by every cursor and the producer each time a cursor starts or
/// stops waiting, once per event per subscription when events come one at
/// a time, and that lock's traffic between the cores was most of the bus's
/// latency over a channel's.
#[derive(Default)]
struct Doorbell {
    armed: AtomicBool,
    waker: AtomicWaker,
}

impl Doorbell {
    /// Marks the cursor as waiting, and `any_armed` as worth a look. The
    /// cursor reads the head again after this: an append that came before
    /// the producer could see the mark is found then.
    fn arm(&self, any_armed: &AtomicBool) {
        self.armed.store(true, SeqCst);
        // Every operation here and in `Shared::try_append` is SeqCst, and
        // the mark is set before `any_armed` is read: a producer that
        // clears `any_armed` after this read sees the mark.
        if !any_armed.load(SeqCst) {
            any_armed.store(true, SeqCst);
        }
    }

    /// Unmarks it; returns whether it was waiting.
    fn disarm(&self) -> bool {
        self.armed.load(SeqCst) && self.armed.swap(false, SeqCst)
    }
}

/// Disarms a cursor's doorbell when its wait ends, however it ends.
struct Disarm<'a>(&'a Doorbell);

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        self.0.disarm();
    }
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
        let shared = Arc::clone(&self.shared);
        let doorbell = Arc::clone(&self.doorbell);
        let _disarm = Disarm(&doorbell);
        std::future::poll_fn(|cx| {
            loop {
                // Read `closed` before the head: once closed, no event is
                // appended, so a cursor that then finds nothing has read all.
                let closed = shared.closed.load(SeqCst);
                if let Some(batch) = self.take(max) {
                    return Poll::Ready(Ok(Some(batch)));
                }
                if closed {
                    return Poll::Ready(Ok(None));
                }
                doorbell.waker.register(cx.waker());
                doorbell.arm(&shared.any_armed);
                // Looked at again after arming: an event appended before
                // the producer could see the doorbell armed is read now.
                if shared.head.load(SeqCst) > self.read || shared.closed.load(SeqCst) {
                    continue;
                }
                return Poll::Pending;
            }
        })
        .await
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
            .retain(|cursor| cursor.id != self.id);
        self.shared.wake_producers();
    }
}
