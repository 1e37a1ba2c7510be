//! Group commit for `notify`: events written concurrently by many tasks go
//! to the database together, one statement and one transaction for up to
//! [`MAX_BATCH`] of them.
//!
//! A transaction per event caps the rate at what the server commits per
//! second (a few thousand on a small machine), however many producers
//! there are. Here each writer task takes whatever has queued up while the
//! previous statement ran, waiting a moment for the producers it just
//! answered ([`GATHER`]), so a lone producer still pays one round trip,
//! and many producers share each commit.

use super::{Inner, PostgresError, reader};
use crate::backend::Position;
use sqlx::AssertSqlSafe;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc, oneshot};

/// The most events one statement writes.
const MAX_BATCH: usize = 512;

/// Statements in flight at once. One: while it commits, the next batch
/// forms, and the fewer commits the more events each carries. On our
/// 2-core machine, with the server on the same cores, 16 producers got
/// 13,400 to 13,800 events/s with one writer, 10,700 to 12,900 with two
/// and 7,800 to 8,700 with four.
pub(super) const WRITERS: usize = 1;

/// The longest a batch waits for the producers the previous batch
/// answered to come back.
///
/// Without it, 16 producers each waiting for its own event split into two
/// groups of 8 that take turns: while one group's statement runs, the
/// other queues, and the writer takes the queued group the moment the
/// statement returns, before the answered producers have run again. On our
/// 2-core machine waiting up to 50 µs for them made every batch 16 and
/// `notify` 1.5x faster (25,000 to 38,000 events/s); 150 and 400 µs gained
/// little more. A producer that does not come back costs its successor this
/// much latency once: the next batch expects only what arrived.
const GATHER: Duration = Duration::from_micros(100);

/// Events waiting for a writer; past this, `notify` waits for room.
const QUEUE: usize = 4 * MAX_BATCH;

/// An event encoded and waiting to be written, and who waits for it.
pub(super) struct Pending {
    pub(super) id: uuid::Uuid,
    pub(super) name: String,
    pub(super) version: i32,
    pub(super) payload: String,
    /// What it is kept in order with: [`super::key_hash`].
    pub(super) key: i64,
    pub(super) reply: oneshot::Sender<Result<Position, PostgresError>>,
}

/// The queue `append` puts events on.
pub(super) type Queue = mpsc::Sender<Pending>;

/// A queue and its receiving end, shared by the writer tasks.
pub(super) fn queue() -> (Queue, Arc<Mutex<mpsc::Receiver<Pending>>>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, Arc::new(Mutex::new(rx)))
}

/// One writer task: takes a batch off the queue, writes it, answers each
/// event of it. Ends when the outbox is gone.
pub(super) async fn write_batches(inner: Weak<Inner>, queue: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    // How many events the next batch can expect: those the last batch
    // answered, whose producers may come back at once, and those that were
    // already waiting.
    let mut expect = 1;
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut batch = Vec::with_capacity(expect);
            batch.push(first);
            let started = Instant::now();
            loop {
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(pending) => batch.push(pending),
                        Err(_) => break,
                    }
                }
                if batch.len() >= expect || started.elapsed() >= GATHER {
                    break;
                }
                tokio::task::yield_now().await;
            }
            // A `notify` given up on (its future dropped) before its event
            // went out is not written.
            batch.retain(|pending| !pending.reply.is_closed());
            batch
        };
        if batch.is_empty() {
            continue;
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let written = write(&strong, &batch).await;
        if matches!(written, Err(sqlx::Error::Database(_))) && batch.len() > 1 {
            // One event the database refuses (a string with a NUL, which
            // jsonb rejects) must not fail the others: each is written on
            // its own, and only what fails alone is refused. Only when the
            // server refused the statement, so nothing of it was stored: a
            // lost connection fails the whole batch at once.
            for pending in batch {
                let alone = write(&strong, std::slice::from_ref(&pending)).await;
                answer(vec![pending], alone);
            }
            continue;
        }
        drop(strong);
        // Another writer may hold the queue, waiting in it: then nothing
        // is known to be waiting.
        let waiting = queue.try_lock().map_or(0, |queue| queue.len());
        expect = (batch.len() + waiting).min(MAX_BATCH);
        answer(batch, written);
    }
}

/// Answers each event of `batch`, written in one transaction (`written`
/// is its id) or refused.
fn answer(batch: Vec<Pending>, written: Result<String, sqlx::Error>) {
    match written {
        Ok(tx_id) => {
            let first = match reader::first_in(&tx_id) {
                Ok(first) => first,
                Err(err) => {
                    for pending in batch {
                        let _ = pending
                            .reply
                            .send(Err(PostgresError::OutOfRange(err.to_string())));
                    }
                    return;
                }
            };
            // The batch is one transaction and only its rows are in
            // it, inserted in this order: the k-th is k-th in it.
            for (k, pending) in batch.into_iter().enumerate() {
                let _ = pending.reply.send(Ok(first + k as Position));
            }
        }
        Err(source) => {
            let source = Arc::new(source);
            for pending in batch {
                let _ = pending.reply.send(Err(PostgresError::Batch {
                    doing: "inserting events",
                    source: Arc::clone(&source),
                }));
            }
        }
    }
}

/// Writes `batch` in one statement; the id of its transaction.
async fn write(inner: &Inner, batch: &[Pending]) -> Result<String, sqlx::Error> {
    let schema = &inner.schema;
    // In the order given (WITH ORDINALITY, ORDER BY): rows get their
    // positions, and their ranks in the transaction, in that order.
    let insert = format!(
        "INSERT INTO {schema}.events (event_id, name, version, payload, key_hash)
         SELECT id, name, version, payload::jsonb, key_hash
         FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::int8[])
              WITH ORDINALITY AS u(id, name, version, payload, key_hash, ord)
         ORDER BY ord
         RETURNING 1"
    );
    // One statement, so it is atomic without BEGIN and COMMIT. The NOTIFY
    // is delivered at commit, and not at all on a rollback.
    let sql = if inner.notify_on_commit {
        format!(
            "WITH written AS ({insert})
             SELECT pg_current_xact_id()::text FROM (SELECT count(*) FROM written) AS w, pg_notify($6, '')"
        )
    } else {
        format!(
            "WITH written AS ({insert})
             SELECT pg_current_xact_id()::text FROM (SELECT count(*) FROM written) AS w"
        )
    };
    let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql))
        .bind(batch.iter().map(|p| p.id).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.name.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.version).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.payload.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.key).collect::<Vec<_>>());
    if inner.notify_on_commit {
        query = query.bind(&inner.channel);
    }
    query.fetch_one(&inner.pool).await
}
