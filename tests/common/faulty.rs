//! A user's backend: the real SQLite log, wrapped with switches a test
//! flips to make it fail as a shared outbox or a broker can: a claim lost,
//! a redelivery counted, a lag misreported, a reader or an append refused.

use async_trait::async_trait;
use eventbus::backend::{
    Backend, Batch, DeadLetterStore, Position, ReadError, Reader, RetryStore, WriteError,
};
use eventbus::{AnyEvent, Bus, Capabilities, SqliteLog, StartFrom};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The switches, off by default.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every read and commit finds the claim gone.
    pub lost: AtomicBool,
    /// Every commit finds the claim gone; reads still succeed.
    pub lost_on_commit: AtomicBool,
    /// Every delivery is handed out as this attempt.
    pub attempt: Mutex<Option<u32>>,
    /// `lag()` returns this instead of the truth.
    pub lag: Mutex<Option<u64>>,
    /// `reader()` fails.
    pub fail_reader: AtomicBool,
    /// `append()` fails.
    pub fail_append: AtomicBool,
}

impl Faults {
    fn claim(&self, on_commit: bool) -> Result<(), ReadError> {
        if self.lost.load(SeqCst) || (on_commit && self.lost_on_commit.load(SeqCst)) {
            return Err(ReadError::ClaimLost(
                "the lease expired and another process holds it".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Faulty {
    log: SqliteLog,
    faults: Arc<Faults>,
}

#[async_trait]
impl Backend for Faulty {
    fn capabilities(&self) -> Capabilities {
        self.log.capabilities()
    }

    async fn append(&self, event: AnyEvent) -> Result<Position, WriteError> {
        if self.faults.fail_append.load(SeqCst) {
            return Err(WriteError::Failed("the outbox table is gone".into()));
        }
        self.log.append(event).await
    }

    async fn reader(
        &self,
        subscription: &str,
        from: StartFrom,
    ) -> Result<Box<dyn Reader>, ReadError> {
        if self.faults.fail_reader.load(SeqCst) {
            return Err(ReadError::Failed("cannot reach the broker".into()));
        }
        Ok(Box::new(FaultyReader {
            inner: self.log.reader(subscription, from).await?,
            faults: Arc::clone(&self.faults),
        }))
    }

    fn close(&self) {
        self.log.close();
    }

    fn dead_letter_store(&self) -> Option<Arc<dyn DeadLetterStore>> {
        self.log.dead_letter_store()
    }

    fn retry_store(&self) -> Option<Arc<dyn RetryStore>> {
        self.log.retry_store()
    }
}

#[derive(Debug)]
struct FaultyReader {
    inner: Box<dyn Reader>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Reader for FaultyReader {
    async fn next(&mut self, max: usize) -> Result<Option<Batch>, ReadError> {
        self.faults.claim(false)?;
        let batch = self.inner.next(max).await?;
        // A lease is found lost when the read comes back, too.
        self.faults.claim(false)?;
        let attempt = *self.faults.attempt.lock().unwrap();
        Ok(match (batch, attempt) {
            (Some(batch), Some(attempt)) => Some(Batch::from_deliveries(
                (0..batch.len())
                    .map(|i| {
                        let (position, event) = batch.get(i);
                        (position, event.clone(), attempt)
                    })
                    .collect(),
            )),
            (batch, _) => batch,
        })
    }

    async fn commit(&mut self, up_to: Position) -> Result<(), ReadError> {
        self.faults.claim(true)?;
        self.inner.commit(up_to).await
    }

    fn position(&self) -> Position {
        self.inner.position()
    }

    fn lag(&self) -> Option<u64> {
        match *self.faults.lag.lock().unwrap() {
            Some(lag) => Some(lag),
            None => self.inner.lag(),
        }
    }
}

/// A bus on the SQLite log at `path`, wrapped with fresh switches.
pub async fn faulty_bus(path: &std::path::Path, shutdown: Duration) -> (Bus, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let backend = Faulty {
        log: SqliteLog::open(path).await.unwrap(),
        faults: Arc::clone(&faults),
    };
    let bus = Bus::builder()
        .backend(backend)
        .shutdown_timeout(shutdown)
        .build()
        .unwrap();
    (bus, faults)
}
