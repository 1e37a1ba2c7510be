//! Opening a SQLite log: the settings a user passes mean what they say, a
//! file that is not ours is refused before anything touches it, and a file
//! that cannot be written is refused at open instead of at every write.

use eventbus::log::sqlite::OpenError;
use eventbus::{Bus, SqliteLog, event};

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
