//! How a subscription reads rows of the SQLite log that it cannot turn back
//! into events: a name or payload that is not UTF-8, a version that is not a
//! version number, and a quarantine that fails. Each such row is
//! quarantined with a reason that says what is wrong, and the stream goes
//! on; a row that cannot be quarantined is not passed over.

use eventbus::testing::Recorder;
use eventbus::{Bus, SqliteLog, event};
use std::path::Path;
use std::time::Duration;

#[event]
pub struct OrderPlaced {
    pub order_id: u64,
}

/// Long enough for a drain that can finish to finish; a drain that hangs
/// fails the test instead of stalling it.
const DRAIN: Duration = Duration::from_secs(10);

async fn bus_at(path: &Path) -> Bus {
    Bus::builder()
        .backend(SqliteLog::open(path).await.unwrap())
        .shutdown_timeout(Duration::from_millis(200))
        .build()
        .unwrap()
}

fn orders(recorder: &Recorder) -> Vec<u64> {
    recorder
        .of::<OrderPlaced>()
        .iter()
        .map(|o| o.order_id)
        .collect()
}

async fn drain(bus: &Bus) {
    tokio::time::timeout(DRAIN, bus.drain())
        .await
        .expect("the subscription stalled: drain did not finish")
        .unwrap();
}

/// Writes rows behind the bus's back, as a bug or a bad migration would.
fn insert_raw(path: &Path, values: &str) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(&format!(
            "INSERT INTO events (name, version, event_id, payload, appended_at) VALUES {values};"
        ))
        .unwrap();
}

/// The quarantined rows as (name, version as text, reason), in log order.
fn quarantined(path: &Path) -> Vec<(String, String, String)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT name, CAST(version AS TEXT), reason FROM quarantine ORDER BY position")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_is_quarantined_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let bus = bus_at(&path).await;
    let seen = Recorder::new();
    bus.subscribe("audit", seen.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    drain(&bus).await;

    // `order\xffplaced` as a name, then `{"order_id": 7\xff}` as a payload,
    // both stored as TEXT, as a C client writing raw bytes would.
    insert_raw(
        &path,
        "(CAST(X'6f72646572ff706c61636564' AS TEXT), 1, 'x', '{}', 0),
         ('order.placed', 1, 'y', CAST(X'7b226f726465725f6964223a2037ff7d' AS TEXT), 0)",
    );
    bus.notify(OrderPlaced::new(2)).await.unwrap();
    drain(&bus).await;
    assert_eq!(orders(&seen), [1, 2]);
    bus.shutdown().await;

    let rows = quarantined(&path);
    assert_eq!(
        rows,
        [
            (
                "order\u{fffd}placed".to_owned(),
                "1".to_owned(),
                "the stored name is not valid UTF-8".to_owned()
            ),
            (
                "order.placed".to_owned(),
                "1".to_owned(),
                "the stored payload is not valid UTF-8".to_owned()
            ),
        ]
    );
    // The payload is kept byte for byte, for whoever repairs it.
    let payload: Vec<u8> = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT payload FROM quarantine WHERE name = 'order.placed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(payload, b"{\"order_id\": 7\xff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_is_not_a_version_number_is_quarantined_never_read_as_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let bus = bus_at(&path).await;
    let seen = Recorder::new();
    bus.subscribe("audit", seen.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    drain(&bus).await;

    let good = r#"'{"meta": {}, "order_id": 9}'"#;
    insert_raw(
        &path,
        &format!(
            "('order.placed', 'abc', 'a', {good}, 0),
             ('order.placed', 1.5, 'b', {good}, 0),
             ('order.placed', -1, 'c', {good}, 0),
             ('order.placed', 4294967296, 'd', {good}, 0),
             ('order.placed', 0, 'e', {good}, 0)"
        ),
    );
    bus.notify(OrderPlaced::new(2)).await.unwrap();
    drain(&bus).await;
    assert_eq!(orders(&seen), [1, 2]);
    bus.shutdown().await;

    let rows = quarantined(&path);
    let expected: Vec<(String, String, String)> = ["abc", "1.5", "-1", "4294967296", "0"]
        .into_iter()
        .map(|version| {
            (
                "order.placed".to_owned(),
                // Kept as stored, for whoever repairs it.
                version.to_owned(),
                format!("the stored version `{version}` is not a version number"),
            )
        })
        .collect();
    assert_eq!(rows, expected);
}

#[test]
fn decoding_at_version_0_suggests_no_upcast() {
    // Versions start at 1, and `upcast` needs `version = 2` or higher: a
    // hint to add `#[event(version = 1, upcast = ...)]` would not compile.
    let err = eventbus::registry()
        .decode("order.placed", 0, br#"{"order_id": 1}"#)
        .unwrap_err();
    let message = err.to_string();
    assert!(!message.contains("upcast"), "{message}");
    assert_eq!(
        message,
        "no event named `order.placed` at version 0 is registered in this binary"
    );
}

/// The subscription's committed position, from its row.
fn committed(path: &Path, subscription: &str) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT position FROM subscriptions WHERE name = ?1",
            [subscription],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_quarantined_is_not_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let bus = bus_at(&path).await;
    let seen = Recorder::new();
    let audit = bus.subscribe("audit", seen.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    drain(&bus).await;

    // The quarantine table refuses every row, and a broken row arrives.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON quarantine
         BEGIN SELECT RAISE(ABORT, 'quarantine refused'); END;
         INSERT INTO events (name, version, event_id, payload, appended_at)
         VALUES ('order.refunded', 3, 'x', '{}', 0);",
    )
    .unwrap();
    let broken = conn.last_insert_rowid();
    bus.notify(OrderPlaced::new(2)).await.unwrap();

    // The row can be neither delivered nor quarantined, so the subscription
    // stays on it: the drain cannot finish, the later event waits behind
    // it, and the committed position stays before it.
    let stalled = tokio::time::timeout(Duration::from_secs(3), bus.drain()).await;
    assert!(
        stalled.is_err(),
        "the subscription passed over a row it could not quarantine"
    );
    assert_eq!(orders(&seen), [1]);
    assert!(committed(&path, "audit") <= broken);
    assert_eq!(audit.stats().lag, 2);
    assert!(quarantined(&path).is_empty());

    // Once the quarantine accepts the row, the stream goes on.
    conn.execute_batch("DROP TRIGGER refuse;").unwrap();
    drain(&bus).await;
    assert_eq!(orders(&seen), [1, 2]);
    bus.shutdown().await;
    let rows = quarantined(&path);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].2,
        "no event named `order.refunded` at version 3 is registered in this binary"
    );
    assert!(committed(&path, "audit") > broken + 1);
}
