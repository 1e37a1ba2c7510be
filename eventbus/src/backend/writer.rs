//! Where a bus writes: the in-memory ring through its own fast path, or any
//! backend; and what this process has written, for `drain`.

use super::error::TryAppendError;
use super::{Backend, MemoryLog, Position, WriteError};
use crate::event::AnyEvent;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use tokio::sync::Notify;

/// The bus's writing side. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    inner: Arc<Inner>,
}

struct Inner {
    /// The in-memory ring, when that is the backend: appending to it needs
    /// no future while there is room, which `try_notify` relies on.
    memory: Option<Arc<MemoryLog>>,
    backend: Arc<dyn Backend>,
    closed: AtomicBool,
    /// On another backend: how many events this process wrote, and the
    /// position after the last of them. The ring counts its own.
    accepted: AtomicU64,
    appended: AtomicU64,
    /// Writes to another backend that got past the `closed` check and have
    /// not returned yet, and where `returned` waits for them.
    writing: AtomicU64,
    none_writing: Notify,
}

/// Counts a write as under way until it returns, or is given up on.
struct Writing<'a>(&'a Inner);

impl<'a> Writing<'a> {
    fn enter(inner: &'a Inner) -> Self {
        inner.writing.fetch_add(1, SeqCst);
        Writing(inner)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if self.0.writing.fetch_sub(1, SeqCst) == 1 {
            self.0.none_writing.notify_waiters();
        }
    }
}

/// Why [`Writer::try_write`] did not write, with the event handed back.
pub(crate) enum TryWrite {
    Full(AnyEvent),
    WouldBlock(AnyEvent),
    Closed(AnyEvent),
}

impl Writer {
    pub(crate) fn memory(log: Arc<MemoryLog>) -> Self {
        Writer::with(Some(Arc::clone(&log)), log)
    }

    pub(crate) fn backend(backend: Arc<dyn Backend>) -> Self {
        Writer::with(None, backend)
    }

    fn with(memory: Option<Arc<MemoryLog>>, backend: Arc<dyn Backend>) -> Self {
        Writer {
            inner: Arc::new(Inner {
                memory,
                backend,
                closed: AtomicBool::new(false),
                accepted: AtomicU64::new(0),
                appended: AtomicU64::new(0),
                writing: AtomicU64::new(0),
                none_writing: Notify::new(),
            }),
        }
    }

    /// The backend, as the trait.
    pub(crate) fn get(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Writes `event`, waiting while the backend is full.
    pub(crate) async fn write(&self, event: AnyEvent) -> Result<(), WriteError> {
        let inner = &self.inner;
        if let Some(log) = &inner.memory {
            return match log.try_append(event) {
                Ok(_) => Ok(()),
                Err(TryAppendError::Full(event)) => inner.backend.append(event).await.map(drop),
                Err(TryAppendError::Closed(event)) => Err(WriteError::Closed(event)),
            };
        }
        // Counted before `closed` is read: a close either finds this write
        // under way and `returned` waits for it, or this write finds the
        // close and refuses the event.
        let _writing = Writing::enter(inner);
        if inner.closed.load(SeqCst) {
            return Err(WriteError::Closed(event));
        }
        let position = inner.backend.append(event).await?;
        inner.accepted.fetch_add(1, SeqCst);
        inner.appended.fetch_max(position + 1, SeqCst);
        Ok(())
    }

    /// Writes `event` only if that needs no waiting.
    #[inline]
    pub(crate) fn try_write(&self, event: AnyEvent) -> Result<(), TryWrite> {
        match &self.inner.memory {
            Some(log) => match log.try_append(event) {
                Ok(_) => Ok(()),
                Err(TryAppendError::Full(e)) => Err(TryWrite::Full(e)),
                Err(TryAppendError::Closed(e)) => Err(TryWrite::Closed(e)),
            },
            None if self.is_closed() => Err(TryWrite::Closed(event)),
            None => Err(TryWrite::WouldBlock(event)),
        }
    }

    /// Stops accepting events.
    pub(crate) fn close(&self) {
        self.inner.closed.store(true, SeqCst);
        self.inner.backend.close();
    }

    /// Waits until every write under way when the writer closed has
    /// returned, accepted or refused: only then does the count of what
    /// this process accepted stop moving. The in-memory ring accepts
    /// nothing after it closes, and needs no wait.
    pub(crate) async fn returned(&self) {
        let inner = &self.inner;
        loop {
            let none_writing = inner.none_writing.notified();
            tokio::pin!(none_writing);
            none_writing.as_mut().enable();
            if inner.writing.load(SeqCst) == 0 {
                return;
            }
            none_writing.await;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.load(SeqCst)
    }

    /// The position after the last event this process wrote: what `drain`
    /// waits for.
    pub(crate) fn appended(&self) -> Position {
        match &self.inner.memory {
            Some(log) => log.head(),
            None => self.inner.appended.load(SeqCst),
        }
    }

    /// How many events this process wrote.
    pub(crate) fn accepted(&self) -> u64 {
        match &self.inner.memory {
            Some(log) => log.head(),
            None => self.inner.accepted.load(SeqCst),
        }
    }
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.backend.fmt(f)
    }
}
