//! Opening a SQLite log: the settings a user passes mean what they say, a
//! file that is not ours is refused before anything touches it, and a file
//! that cannot be written is refused at open instead of at every write.

use eventbus::log::sqlite::OpenError;
use eventbus::{Bus, SqliteLog, event};
use std::path::Path;

#[event]
pub struct OrderPlaced {
    pub order_id: u64,
}

#[tokio::test]
async fn a_max_size_of_u64_max_is_no_cap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let log = SqliteLog::options()
        .max_size(u64::MAX)
        .open(&path)
        .await
        .unwrap();
    let bus = Bus::builder().log(log).build().unwrap();
    for id in 0..100 {
        bus.notify(OrderPlaced::new(id))
            .await
            .unwrap_or_else(|err| panic!("event {id} refused: {err}"));
    }
    bus.shutdown().await;
}

#[tokio::test]
async fn a_max_size_too_small_for_the_tables_is_refused_before_the_file_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    for bytes in [0, 1, 4096, 64 * 1024 - 1] {
        let err = SqliteLog::options()
            .max_size(bytes)
            .open(&path)
            .await
            .unwrap_err();
        assert!(matches!(err, OpenError::MaxSizeTooSmall { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "`{}`: `max_size` of {bytes} bytes is below the 65536 the log's tables need; raise it, or leave it unset for no cap",
                path.display()
            )
        );
        assert!(!path.exists(), "nothing is created for a refused setting");
    }
    // The smallest accepted size holds the tables and some events.
    let log = SqliteLog::options()
        .max_size(64 * 1024)
        .open(&path)
        .await
        .unwrap();
    let bus = Bus::builder().log(log).build().unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    bus.shutdown().await;
}

#[tokio::test]
async fn a_database_of_another_application_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        conn.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO users (name) VALUES ('ada'), ('grace');",
        )
        .unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();

    let err = SqliteLog::open(&path).await.unwrap_err();
    assert!(matches!(err, OpenError::NotOurs { .. }), "{err:?}");

    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "the other application's file is byte for byte the same"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        modified
    );
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = path.clone().into_os_string();
        side.push(suffix);
        assert!(!Path::new(&side).exists(), "{suffix} file left behind");
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "the journal mode is the application's own");
}
