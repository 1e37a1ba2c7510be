//! Schema versions: an event stored at an older version is read by newer
//! code through the `upcast` function registered with the event; without
//! one, reading it is a clear error (and a durable log quarantines it).

use eventbus::testing::Recorder;
use eventbus::{BoxError, Bus, DecodeError, Event, SqliteLog, StartFrom, Value, event};

/// An order was placed. v1 stored `total` in dollars; v2 moved to cents;
/// v3 added the currency.
#[event(name = "order.placed", version = 3, upcast = upcast_order)]
pub struct OrderPlaced {
    pub order_id: u64,
    pub total_cents: u64,
    pub currency: String,
}

fn upcast_order(from: u32, mut json: Value) -> Result<Value, BoxError> {
    let fields = json.as_object_mut().ok_or("an order is a JSON object")?;
    if from == 1 {
        let dollars = fields
            .remove("total")
            .and_then(|t| t.as_f64())
            .ok_or("a v1 order needs a numeric `total`")?;
        fields.insert(
            "total_cents".into(),
            ((dollars * 100.0).round() as u64).into(),
        );
    }
    if from <= 2 {
        fields.insert("currency".into(), "USD".into());
    }
    Ok(json)
}

/// An invoice went out. Its v1 is not readable any more: no upcast.
#[event(name = "invoice.sent", version = 2)]
pub struct InvoiceSent {
    pub invoice_id: u64,
}

fn stored_v1_order() -> Vec<u8> {
    let meta = OrderPlaced::new(0, 0, String::new()).meta().clone();
    let mut json = serde_json::json!({ "order_id": 7, "total": 12.5, "meta": meta });
    json["meta"]["version"] = 1.into();
    serde_json::to_vec(&json).unwrap()
}

#[test]
fn an_older_version_is_read_through_the_upcast() {
    let event = eventbus::registry()
        .decode("order.placed", 1, &stored_v1_order())
        .unwrap();
    let order = event.downcast_ref::<OrderPlaced>().unwrap();
    assert_eq!(
        (order.order_id, order.total_cents, order.currency.as_str()),
        (7, 1250, "USD")
    );
    assert_eq!(order.meta().version, 3, "read as the current version");

    let v2 = serde_json::json!({
        "order_id": 8, "total_cents": 99,
        "meta": OrderPlaced::new(0, 0, String::new()).meta(),
    });
    let event = eventbus::registry()
        .decode("order.placed", 2, &serde_json::to_vec(&v2).unwrap())
        .unwrap();
    assert_eq!(event.downcast_ref::<OrderPlaced>().unwrap().currency, "USD");
}

#[test]
fn a_failing_upcast_names_the_versions_and_the_reason() {
    let meta = OrderPlaced::new(0, 0, String::new()).meta().clone();
    let broken = serde_json::to_vec(&serde_json::json!({ "order_id": 7, "meta": meta })).unwrap();
    let err = eventbus::registry()
        .decode("order.placed", 1, &broken)
        .unwrap_err();
    assert!(matches!(
        err,
        DecodeError::Upcast {
            stored: 1,
            current: 3,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "upcasting event `order.placed` from version 1 to 3 failed"
    );
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "a v1 order needs a numeric `total`"
    );
}

#[test]
fn without_an_upcast_an_older_version_is_a_clear_error() {
    let err = eventbus::registry()
        .decode("invoice.sent", 1, b"{}")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "event `invoice.sent` is stored at version 1, but this binary has version 2 and no `upcast` for older versions; add `#[event(version = 2, upcast = ...)]`"
    );
    let _ = InvoiceSent::new(1);
}

#[test]
fn the_registry_says_which_events_upcast() {
    let text = eventbus::registry().render();
    assert!(text.contains("event order.placed v3 type=event_upcast::OrderPlaced at=tests/event_upcast.rs:11 upcasts-older-versions doc="));
    assert!(!text.contains(
        "event invoice.sent v2 type=event_upcast::InvoiceSent at=tests/event_upcast.rs:34 upcasts"
    ));
}

#[tokio::test]
async fn a_durable_log_upcasts_old_rows_and_quarantines_unreadable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    // Create the file, then write rows as an older binary would have.
    drop(SqliteLog::open(&path).await.unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO events (name, version, event_id, payload, appended_at) VALUES ('order.placed', 1, 'a', ?1, 0)",
            [stored_v1_order()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO events (name, version, event_id, payload, appended_at) VALUES ('invoice.sent', 1, 'b', x'7b7d', 0)",
            [],
        )
        .unwrap();
    }
    let bus = Bus::builder()
        .backend(SqliteLog::open(&path).await.unwrap())
        .build()
        .unwrap();
    let seen = Recorder::new();
    bus.subscribe("billing", seen.clone())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(9, 100, "EUR".into()))
        .await
        .unwrap();
    bus.drain().await.unwrap();
    let orders: Vec<(u64, u64)> = seen
        .of::<OrderPlaced>()
        .iter()
        .map(|o| (o.order_id, o.total_cents))
        .collect();
    assert_eq!(orders, [(7, 1250), (9, 100)]);
    bus.shutdown().await;
    drop(bus);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let reason: String = conn
        .query_row("SELECT reason FROM quarantine", [], |r| r.get(0))
        .unwrap();
    assert!(
        reason.starts_with(
            "event `invoice.sent` is stored at version 1, but this binary has version 2"
        ),
        "{reason}"
    );
}
