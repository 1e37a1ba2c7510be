//! `#[event]` from the outside: metadata, constructors, links between
//! events, and the JSON form.

use eventbus::{AnyEvent, Event, event};
use std::collections::BTreeMap;

/// A user signed up.
#[event(name = "user.created", version = 3)]
#[derive(PartialEq)]
pub struct UserCreated {
    pub user_id: u64,
    /// The address they signed up with.
    pub email: String,
}

#[event]
pub struct HTTPRequestSent {
    pub url: String,
    pub headers: BTreeMap<String, String>,
}

#[event]
pub struct CacheCleared {}

#[test]
fn constructor_fills_the_metadata() {
    let before = chrono::Utc::now();
    let e = UserCreated::new(7, "a@example.com".into());
    let after = chrono::Utc::now();
    let meta = e.meta();
    assert_eq!(meta.name, "user.created");
    assert_eq!(meta.version, 3);
    assert!(before <= meta.occurred_at && meta.occurred_at <= after);
    assert_eq!(meta.actor, None);
    assert_eq!(meta.correlation_id, meta.id);
    assert_eq!(meta.causation_id, None);
    assert_eq!(meta.source, module_path!());
    assert_eq!(meta.id.get_version_num(), 7, "ids are UUIDv7");
    assert_eq!((e.user_id, e.email.as_str()), (7, "a@example.com"));
}

#[test]
fn default_name_is_the_type_name_dotted() {
    assert_eq!(HTTPRequestSent::NAME, "http.request.sent");
    assert_eq!(HTTPRequestSent::VERSION, 1);
    assert_eq!(CacheCleared::new().meta().name, "cache.cleared");
}

#[test]
fn ids_are_unique_and_ordered_by_time() {
    let ids: Vec<_> = (0..10_000).map(|_| CacheCleared::new().meta().id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids sort in creation order"
    );
}

/// Makes `per_thread` events on each of `threads` threads at once and
/// returns each thread's metadata in creation order.
fn made_at_once(threads: usize, per_thread: usize) -> Vec<Vec<eventbus::Meta>> {
    let start = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let start = std::sync::Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                (0..per_thread)
                    .map(|_| CacheCleared::new().meta().clone())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Each thread makes its own ids: they increase on every thread, even
/// within one millisecond, and no two threads make the same one.
#[test]
fn ids_increase_per_thread_and_never_repeat_across_threads() {
    let made = made_at_once(4, 50_000);
    for (thread, metas) in made.iter().enumerate() {
        assert!(
            metas.windows(2).all(|w| w[0].id < w[1].id),
            "thread {thread}: ids sort in creation order"
        );
    }
    let all: std::collections::HashSet<_> = made.iter().flatten().map(|m| m.id).collect();
    assert_eq!(all.len(), 4 * 50_000, "no id is made twice");
    for meta in made.iter().flatten() {
        assert_eq!(meta.id.get_version_num(), 7, "{meta:?}");
        assert_eq!(
            meta.id.get_variant(),
            eventbus::Uuid::now_v7().get_variant(),
            "RFC 9562 variant: {meta:?}"
        );
    }
}

/// Several threads create events at once, as producers do; each id's
/// millisecond is its event's `occurred_at`, read from the same clock
/// read.
#[test]
fn the_id_carries_the_time_of_the_event() {
    for meta in made_at_once(4, 20_000).iter().flatten() {
        let (secs, nanos) = meta.id.get_timestamp().expect("a v7 id").to_unix();
        let id_millis = secs * 1000 + u64::from(nanos / 1_000_000);
        assert_eq!(
            id_millis,
            u64::try_from(meta.occurred_at.timestamp_millis()).unwrap(),
            "{meta:?}"
        );
    }
}

/// Across threads, ids sort by their millisecond: sorted by id, the events
/// of several threads are sorted by `occurred_at`'s millisecond.
#[test]
fn ids_from_later_milliseconds_sort_after_earlier_ones() {
    let made = made_at_once(2, 20_000);
    let mut all: Vec<_> = made.into_iter().flatten().collect();
    all.sort_by_key(|m| m.id);
    assert!(
        all.windows(2)
            .all(|w| w[0].occurred_at.timestamp_millis() <= w[1].occurred_at.timestamp_millis()),
        "sorting by id sorts by millisecond"
    );
}

#[test]
fn caused_by_links_a_chain() {
    let root = UserCreated::new(1, "a@example.com".into()).with_actor("user:1");
    let child = CacheCleared::new().caused_by(&root);
    let grandchild = CacheCleared::new().caused_by(&AnyEvent::new(child.clone()));

    assert_eq!(child.meta().causation_id, Some(root.meta().id));
    assert_eq!(child.meta().correlation_id, root.meta().id);
    assert_eq!(
        child.meta().actor.as_deref(),
        Some("user:1"),
        "actor is inherited"
    );
    assert_eq!(grandchild.meta().causation_id, Some(child.meta().id));
    assert_eq!(grandchild.meta().correlation_id, root.meta().id);

    let request = eventbus::Uuid::now_v7();
    let joined = CacheCleared::new().correlated_with(request);
    assert_eq!(joined.meta().correlation_id, request);
}

#[test]
fn own_actor_wins_over_the_causes() {
    let root = UserCreated::new(1, "a@example.com".into()).with_actor("user:1");
    let child = CacheCleared::new()
        .with_actor("job:nightly")
        .caused_by(&root);
    assert_eq!(child.meta().actor.as_deref(), Some("job:nightly"));
}

#[test]
fn json_round_trip_keeps_fields_and_meta() {
    let e = UserCreated::new(7, "a@example.com".into()).with_actor("admin");
    let json = serde_json::to_string(&e).unwrap();
    let back: UserCreated = serde_json::from_str(&json).unwrap();
    assert_eq!(back, e);
    assert_eq!(back.meta(), e.meta());

    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["user_id"], 7);
    assert_eq!(value["meta"]["name"], "user.created");
    assert_eq!(value["meta"]["version"], 3);
    assert_eq!(value["meta"]["actor"], "admin");
}

#[test]
fn erased_events_round_trip_through_the_registry() {
    let e = HTTPRequestSent::new(
        "https://example.com".into(),
        BTreeMap::from([("accept".into(), "json".into())]),
    );
    let any = AnyEvent::new(e.clone());
    let bytes = any.to_json_bytes().unwrap();
    let back = eventbus::registry()
        .decode(any.name(), any.version(), &bytes)
        .unwrap();
    let back = back.downcast_ref::<HTTPRequestSent>().unwrap();
    assert_eq!(back.url, e.url);
    assert_eq!(back.meta(), e.meta());
}

#[test]
fn decoding_unknown_or_broken_json_is_a_clear_error() {
    let err = eventbus::registry()
        .decode("no.such.event", 1, b"{}")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no event named `no.such.event` at version 1 is registered in this binary"
    );

    let err = eventbus::registry()
        .decode("user.created", 3, br#"{"user_id":"seven"}"#)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "event `user.created` v3 does not match its fields"
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("invalid type"), "{source}");
}

#[test]
fn erased_view_exposes_the_event() {
    let any = AnyEvent::new(UserCreated::new(7, "a@example.com".into()));
    assert_eq!(any.name(), "user.created");
    assert_eq!(any.version(), 3);
    assert!(any.is::<UserCreated>());
    assert!(!any.is::<CacheCleared>());
    assert!(any.downcast_ref::<CacheCleared>().is_none());
    assert!(any.type_name().ends_with("UserCreated"));
    assert!(format!("{any:?}").contains("a@example.com"));
    let clone = any.clone();
    assert_eq!(clone.meta().id, any.meta().id);
}
