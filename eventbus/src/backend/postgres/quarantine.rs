//! Events a subscription could not decode: listed, and given another
//! chance once the binary knows them.

use super::{PostgresError, PostgresLog};
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

/// A stored event that a subscription could not decode, set aside with the
/// reason so the stream went on; from [`PostgresLog::quarantined`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quarantined {
    /// The subscription that read it.
    pub subscription: String,
    /// The row's `position` in the `events` table.
    pub row: i64,
    /// The stored event name.
    pub name: String,
    /// The stored version: it may be what was wrong.
    pub version: i32,
    /// Why it did not decode.
    pub reason: String,
    /// The stored payload, as JSON text.
    pub payload: String,
    /// When it was set aside.
    pub quarantined_at: DateTime<Utc>,
}

/// What [`PostgresLog::requeue_quarantined`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Requeued {
    /// Rows that decode now, moved to the subscription's dead letters.
    pub requeued: u64,
    /// Rows that still do not decode; they stay quarantined.
    pub still_quarantined: u64,
}

impl PostgresLog {
    /// The rows quarantined for `subscription`, in the order they were
    /// written.
    ///
    /// # Errors
    ///
    /// [`PostgresError::Query`] when the table cannot be read.
    pub async fn quarantined(&self, subscription: &str) -> Result<Vec<Quarantined>, PostgresError> {
        let rows: Vec<(i64, String, i32, String, String, DateTime<Utc>)> =
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT position, name, version, reason, payload::text, quarantined_at
                 FROM {}.quarantine WHERE subscription = $1 ORDER BY position",
                self.inner.schema
            )))
            .bind(subscription)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(PostgresError::query("reading the quarantine"))?;
        Ok(rows
            .into_iter()
            .map(
                |(row, name, version, reason, payload, quarantined_at)| Quarantined {
                    subscription: subscription.to_owned(),
                    row,
                    name,
                    version,
                    reason,
                    payload,
                    quarantined_at,
                },
            )
            .collect())
    }

    /// Gives the rows quarantined for `subscription` another chance: those
    /// that decode with this binary (rolled forward to a version that knows
    /// them, or with an upcast that was missing) become dead letters of the
    /// subscription, to [replay](crate::DeadLetters::replay_all) like any
    /// other; the rest stay quarantined. A row moves in one transaction,
    /// and only if this call took it out of the quarantine: it is never
    /// both, nor neither, nor a letter twice when two processes requeue at
    /// once.
    ///
    /// # Errors
    ///
    /// [`PostgresError::Query`] when a statement fails; nothing moved then.
    pub async fn requeue_quarantined(&self, subscription: &str) -> Result<Requeued, PostgresError> {
        let rows = self.quarantined(subscription).await?;
        let schema = &self.inner.schema;
        let mut tx = self.inner.pool.begin().await.map_err(PostgresError::query(
            "starting to requeue quarantined events",
        ))?;
        let mut requeued = 0;
        let mut still_quarantined = 0;
        for row in rows {
            let decodes = u32::try_from(row.version).is_ok_and(|version| {
                crate::registry::registry()
                    .decode(&row.name, version, row.payload.as_bytes())
                    .is_ok()
            });
            if !decodes {
                still_quarantined += 1;
                continue;
            }
            let errors = serde_json::to_string(&[format!("quarantined: {}", row.reason)])
                .map_err(PostgresError::Encode)?;
            let moved = sqlx::query(AssertSqlSafe(format!(
                "WITH taken AS (
                     DELETE FROM {schema}.quarantine WHERE subscription = $1 AND position = $2
                     RETURNING name, version, payload, quarantined_at)
                 INSERT INTO {schema}.dead_letters
                     (subscription, name, version, payload, errors, attempts, first_failed_at, last_failed_at)
                 SELECT $1, name, version, payload, $3::jsonb, 0, quarantined_at, now() FROM taken"
            )))
            .bind(subscription)
            .bind(row.row)
            .bind(errors)
            .execute(&mut *tx)
            .await
            .map_err(PostgresError::query("requeueing a quarantined event"))?
            .rows_affected();
            requeued += moved;
        }
        tx.commit()
            .await
            .map_err(PostgresError::query("requeueing quarantined events"))?;
        Ok(Requeued {
            requeued,
            still_quarantined,
        })
    }
}
