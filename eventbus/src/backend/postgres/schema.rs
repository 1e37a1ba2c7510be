//! The outbox's tables: created by versioned, idempotent migrations under
//! an advisory lock, checked for shape, and tied to the cluster they were
//! written on.

// Every dynamic statement only puts in the schema name, which is
// checked to be a plain identifier when the outbox connects.
use super::error::PostgresError;
use sqlx::AssertSqlSafe;
use sqlx::PgPool;

/// The newest layout this code knows.
pub(crate) const LAYOUT: i32 = 3;

/// The migrations, in order: (version, SQL with `{schema}` in place of the
/// schema). Published in `eventbus/sql/postgres/` for teams that run
/// their own migrations.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../sql/postgres/0001_outbox.sql")),
    (2, include_str!("../../../sql/postgres/0002_partitions.sql")),
    (3, include_str!("../../../sql/postgres/0003_parked.sql")),
];

/// Columns the outbox reads and writes, with the type
/// `information_schema.columns` reports for each.
const SHAPE: &[(&str, &[(&str, &str)])] = &[
    (
        "events",
        &[
            ("position", "bigint"),
            ("tx_id", "xid8"),
            ("event_id", "uuid"),
            ("name", "text"),
            ("version", "integer"),
            ("payload", "jsonb"),
            ("key_hash", "bigint"),
        ],
    ),
    (
        "cursors",
        &[
            ("subscription", "text"),
            ("partition", "integer"),
            ("tx_id", "xid8"),
            ("position", "bigint"),
            ("owner", "uuid"),
            ("lease_until", "timestamp with time zone"),
            ("start_snapshot", "pg_snapshot"),
        ],
    ),
    (
        "members",
        &[
            ("subscription", "text"),
            ("member", "uuid"),
            ("seen_until", "timestamp with time zone"),
        ],
    ),
    (
        "quarantine",
        &[
            ("subscription", "text"),
            ("position", "bigint"),
            ("name", "text"),
            ("version", "integer"),
            ("payload", "jsonb"),
            ("reason", "text"),
        ],
    ),
    (
        "retries",
        &[
            ("subscription", "text"),
            ("position", "bigint"),
            ("attempts", "integer"),
            ("next_attempt_at", "timestamp with time zone"),
            ("first_failed_at", "timestamp with time zone"),
        ],
    ),
    (
        "dead_letters",
        &[
            ("id", "bigint"),
            ("subscription", "text"),
            ("name", "text"),
            ("version", "integer"),
            ("payload", "jsonb"),
            ("errors", "jsonb"),
            ("attempts", "integer"),
            ("first_failed_at", "timestamp with time zone"),
            ("last_failed_at", "timestamp with time zone"),
            ("replay_requested_at", "timestamp with time zone"),
        ],
    ),
    (
        "parked",
        &[
            ("id", "bigint"),
            ("subscription", "text"),
            ("name", "text"),
            ("version", "integer"),
            ("payload", "jsonb"),
            ("errors", "jsonb"),
            ("attempts", "integer"),
            ("first_failed_at", "timestamp with time zone"),
            ("due_at", "timestamp with time zone"),
            ("claimed_until", "timestamp with time zone"),
            ("claim", "bigint"),
        ],
    ),
];

/// Whether `schema` is a plain identifier the outbox can put in SQL
/// unquoted.
pub(crate) fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && schema.len() <= 48
}

/// The advisory lock every process takes to migrate `schema`.
fn lock_key(schema: &str) -> i64 {
    // FNV-1a: stable across builds and processes, unlike `DefaultHasher`.
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    hash as i64
}

/// Creates or upgrades the outbox in `schema`, checks its shape, and ties it
/// to this cluster; refuses a cluster other than the one it was written on.
pub(crate) async fn prepare(pool: &PgPool, schema: &str) -> Result<(), PostgresError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(PostgresError::query("starting the outbox's migration"))?;
    // Several processes starting at once: one migrates, the others wait
    // here and then find nothing to do.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key(schema))
        .execute(&mut *tx)
        .await
        .map_err(PostgresError::query("taking the migration lock"))?;
    let recorded: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{schema}.migrations"))
        .fetch_one(&mut *tx)
        .await
        .map_err(PostgresError::query("reading the outbox's layout version"))?;
    let current: i32 = if recorded {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT coalesce(max(version), 0) FROM {schema}.migrations"
        )))
        .fetch_one(&mut *tx)
        .await
        .map_err(PostgresError::query("reading the outbox's layout version"))?
    } else {
        0
    };
    if current > LAYOUT {
        return Err(PostgresError::NewerLayout {
            schema: schema.to_owned(),
            found: current,
            supported: LAYOUT,
        });
    }
    // Tables already there but not made by a migration of ours (another
    // application's, or a half-done manual one) are checked before any
    // statement of ours trips over them.
    if current == 0 {
        check_shape(&mut tx, schema, false).await?;
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        sqlx::raw_sql(AssertSqlSafe(sql.replace("{schema}", schema)))
            .execute(&mut *tx)
            .await
            .map_err(PostgresError::query("creating the outbox's tables"))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {schema}.migrations (version) VALUES ($1)"
        )))
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(PostgresError::query(
            "recording the outbox's layout version",
        ))?;
    }
    check_shape(&mut tx, schema, true).await?;
    check_cluster(&mut tx, schema).await?;
    tx.commit()
        .await
        .map_err(PostgresError::query("committing the outbox's migration"))
}

/// Checks every table of the outbox, or with `all` false only those that
/// exist.
async fn check_shape(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    all: bool,
) -> Result<(), PostgresError> {
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text
         FROM information_schema.columns WHERE table_schema = $1",
    )
    .bind(schema)
    .fetch_all(conn)
    .await
    .map_err(PostgresError::query("checking the outbox's tables"))?;
    for (table, wanted) in SHAPE {
        if !all && !columns.iter().any(|(t, _, _)| t == table) {
            continue;
        }
        for (column, data_type) in *wanted {
            let found = columns
                .iter()
                .find(|(t, c, _)| t == table && c == column)
                .map(|(_, _, ty)| ty.as_str());
            let detail = match found {
                Some(ty) if ty == *data_type => continue,
                Some(ty) => format!("column `{column}` is {ty}, not {data_type}"),
                None => format!("it has no column `{column}`"),
            };
            return Err(PostgresError::Shape {
                schema: schema.to_owned(),
                table,
                detail,
            });
        }
    }
    Ok(())
}

async fn check_cluster(conn: &mut sqlx::PgConnection, schema: &str) -> Result<(), PostgresError> {
    let found: String =
        sqlx::query_scalar("SELECT system_identifier::text FROM pg_control_system()")
            .fetch_one(&mut *conn)
            .await
            .map_err(PostgresError::query("reading the cluster's identity"))?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.cluster (system_identifier) VALUES ($1) ON CONFLICT DO NOTHING"
    )))
    .bind(&found)
    .execute(&mut *conn)
    .await
    .map_err(PostgresError::query("recording the cluster's identity"))?;
    let stored: String = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT system_identifier FROM {schema}.cluster"
    )))
    .fetch_one(&mut *conn)
    .await
    .map_err(PostgresError::query(
        "reading the recorded cluster identity",
    ))?;
    if stored != found {
        return Err(PostgresError::ClusterChanged {
            schema: schema.to_owned(),
            stored,
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::valid_schema;

    #[test]
    fn schema_names() {
        for good in ["eventbus", "_x", "tenant_42"] {
            assert!(valid_schema(good), "{good}");
        }
        for bad in [
            "",
            "Eventbus",
            "1x",
            "a-b",
            "a;drop table x",
            "a\"b",
            &"x".repeat(49),
        ] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
