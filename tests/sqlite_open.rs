//! Opening a SQLite log: the settings a user passes mean what they say, a
//! file that is not ours is refused before anything touches it, and a file
//! that cannot be written is refused at open instead of at every write.

use eventbus::backend::sqlite::OpenError;
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
    let bus = Bus::builder().backend(log).build().unwrap();
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
    let bus = Bus::builder().backend(log).build().unwrap();
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

/// Takes `chattr +i` off again, so the temporary directory can be removed
/// even when the test fails.
struct Immutable<'a>(&'a Path);

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(self.0)
            .status();
    }
}

fn writable(path: &Path) -> bool {
    std::fs::OpenOptions::new().write(true).open(path).is_ok()
}

#[tokio::test]
async fn a_read_only_file_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let log = SqliteLog::open(&path).await.unwrap();
        let bus = Bus::builder().backend(log).build().unwrap();
        bus.notify(OrderPlaced::new(1)).await.unwrap();
        bus.shutdown().await;
    }
    // The writer checkpoints and lets go of the file once the log is
    // dropped; wait for its lock to be free.
    let file = std::fs::File::open(&path).unwrap();
    while file.try_lock().is_err() {
        tokio::task::yield_now().await;
    }
    drop(file);

    // Permission bits stop everyone but root; root (as in CI) needs the
    // immutable attribute, where the file system supports it.
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&path, perms).unwrap();
    let mut _guard = None;
    if writable(&path) {
        let made = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if made {
            _guard = Some(Immutable(&path));
        }
    }
    if writable(&path) {
        eprintln!(
            "skipped: cannot make {} read-only here (running as root, and `chattr +i` is unavailable)",
            path.display()
        );
        return;
    }

    let err = SqliteLog::open(&path).await.unwrap_err();
    assert!(matches!(err, OpenError::ReadOnly { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "`{}` cannot be written: the file or its directory is read-only",
            path.display()
        )
    );
}
