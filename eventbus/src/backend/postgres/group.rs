//! Group commit for `notify`: events written concurrently by many tasks go
//! to the database together, one statement and one transaction for up to
//! [`MAX_BATCH`] of them.
//!
//! A transaction per event caps the rate at what the server commits per
//! second (a few thousand on a small machine), however many producers
//! there are. Here each writer task takes whatever has queued up while the
//! previous statement ran, letting the producers it just answered come
//! back first ([`GATHER_YIELDS`]), so a lone producer still pays one round trip,
//! and many producers share each commit.

use super::{Inner, PostgresError, reader};
use crate::backend::Position;
use sqlx::AssertSqlSafe;
use std::sync::{Arc, Weak};
use tokio::sync::{Mutex, mpsc, oneshot};

/// The most events one statement writes.
const MAX_BATCH: usize = 512;

/// Statements in flight at once. One: while it commits, the next batch
/// forms, and the fewer commits the more events each carries. On our
/// 2-core machine, with the server on the same cores, 16 producers got
/// 13,400 to 13,800 events/s with one writer, 10,700 to 12,900 with two
/// and 7,800 to 8,700 with four (on a slower day, before batches waited
/// for their producers: [`GATHER_YIELDS`]).
pub(super) const WRITERS: usize = 1;

/// How many times a batch lets the runtime's other tasks run, so the
/// producers the previous batch answered can come back, before it is
/// written without them.
///
/// Without it, 16 producers each waiting for its own event split into two
/// groups of 8 that take turns: while one group's statement runs, the
/// other queues, and the writer takes the queued group the moment the
/// statement returns, before the answered producers have run again. On our
/// 2-core machine one yield took `notify` from 21,000 to 35,000 events/s
/// and two to 41,000 (`--quick` runs); four, or yielding for up to 100 µs,
/// gained nothing more. A yield waits for one round of the runtime's other
/// runnable tasks, not for a clock: where producers do not come back (each
/// request notifies once) a batch pays up to two rounds, a few microseconds on a
/// quiet runtime and more on a busy one, where every task waits that long
/// for its turn anyway.
const GATHER_YIELDS: u32 = 2;

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
            let mut yields = 0;
            loop {
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(pending) => batch.push(pending),
                        Err(_) => break,
                    }
                }
                if batch.len() >= expect || yields == GATHER_YIELDS {
                    break;
                }
                tokio::task::yield_now().await;
                yields += 1;
            }
            // A `notify` given up on (its future dropped) before its event
            // went out is not written.
            batch.retain(|pending| !pending.reply.is_closed());
            batch
        };
        if batch.is_empty() {
            expect = 1;
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
            expect = batch.len();
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
