//! Pruning the PostgreSQL outbox: finished events go, by age or count,
//! and only below the slowest subscription (whole transactions before
//! every subscription's: the last one each has finished stays until a
//! later one is finished too); dead letters stay longer,
//! under their own limit; a retired subscription can be forgotten so
//! pruning moves on, but not while a process holds it.

mod common;

use common::pg::Schema;
use common::{Gate, OrderPlaced, order_ids, within};
use eventbus::backend::postgres::Retention;
use eventbus::testing::Recorder;
use eventbus::{Bus, PostgresError, PostgresLog, Retry};
use std::time::Duration;

macro_rules! schema {
    () => {
        match Schema::fresh(module_path!()).await {
            Some(schema) => schema,
            None => return,
        }
    };
}

/// Prunes nothing by itself, and everything finished when asked.
fn prune_all_by_hand() -> Retention {
    Retention {
        max_age: Duration::ZERO,
        max_events: u64::MAX,
        dead_letters_max_age: Duration::MAX,
        every: Duration::MAX,
    }
}

async fn bus_with(schema: &Schema, retention: Retention) -> (Bus, PostgresLog) {
    let log = schema
        .builder()
        .retention(retention)
        .connect()
        .await
        .unwrap();
    let bus = Bus::builder()
        .backend(log.clone())
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    (bus, log)
}

/// Runs an `audit` subscription on `bus` and delivers orders `ids` to it,
/// one transaction each.
async fn audit_orders(bus: &Bus, ids: std::ops::Range<u64>) -> Recorder {
    let seen = Recorder::new();
    bus.subscribe("audit", seen.clone()).start().await.unwrap();
    for id in ids {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    within(30, "delivery", bus.drain()).await.unwrap();
    seen
}

async fn events_left(schema: &Schema) -> i64 {
    schema.count("SELECT count(*) FROM {schema}.events").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_events_every_subscription_finished_are_pruned() {
    let schema = schema!();
    let (bus, log) = bus_with(&schema, prune_all_by_hand()).await;
    let fast = Recorder::new();
    let slow = Gate::closed();
    bus.subscribe("fast", fast.clone()).start().await.unwrap();
    bus.subscribe("slow", slow.clone()).start().await.unwrap();
    for id in 0..10 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    common::eventually(10, "the fast subscription", || fast.len() == 10).await;
    // The slow one finishes three and waits inside the fourth. How much
    // of that it has committed depends on how often it commits; what it
    // has not finished is never pruned.
    slow.permits.add_permits(3);
    common::eventually(10, "three slow events", || slow.seen.len() == 3).await;
    common::eventually(10, "the fourth started", || slow.started.len() == 4).await;
    let pruned = log.prune().await.unwrap();
    assert!(pruned.events <= 3, "{pruned:?}");
    assert_eq!(events_left(&schema).await, 10 - pruned.events as i64);

    slow.permits.add_permits(100);
    within(10, "both subscriptions done", bus.drain())
        .await
        .unwrap();
    // Committed at the drain; the rest goes now, but for the last
    // transaction, which the subscriptions stand in.
    log.prune().await.unwrap();
    assert_eq!(events_left(&schema).await, 1);
    assert_eq!(order_ids(slow.seen.events()), (0..10).collect::<Vec<_>>());

    // Delivery goes on after a prune.
    bus.notify(OrderPlaced::new(10)).await.unwrap();
    within(10, "an event after the prune", bus.drain())
        .await
        .unwrap();
    assert_eq!(fast.len(), 11);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_count_limit_keeps_the_newest_finished_events() {
    let schema = schema!();
    let retention = Retention {
        max_age: Duration::MAX,
        max_events: 4,
        ..prune_all_by_hand()
    };
    let (bus, log) = bus_with(&schema, retention).await;
    audit_orders(&bus, 0..10).await;
    let pruned = log.prune().await.unwrap();
    assert_eq!(pruned.events, 6);
    let kept: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT (payload->>'order_id')::bigint FROM {}.events ORDER BY position",
        schema.name
    )))
    .fetch_all(&schema.pool)
    .await
    .unwrap();
    assert_eq!(kept, [6, 7, 8, 9]);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_age_limit_keeps_recent_finished_events() {
    let schema = schema!();
    let retention = Retention {
        max_age: Duration::from_secs(3600),
        ..prune_all_by_hand()
    };
    let (bus, log) = bus_with(&schema, retention).await;
    audit_orders(&bus, 0..5).await;
    // Two of them were appended two hours ago.
    schema
        .exec(
            "UPDATE {schema}.events SET appended_at = now() - interval '2 hours'
             WHERE position IN (SELECT position FROM {schema}.events ORDER BY position LIMIT 2)",
        )
        .await;
    assert_eq!(log.prune().await.unwrap().events, 2);
    assert_eq!(events_left(&schema).await, 3);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_outlive_their_events_and_go_by_their_own_limit() {
    let schema = schema!();
    let (bus, log) = bus_with(&schema, prune_all_by_hand()).await;
    let flaky = common::Flaky::failing();
    bus.subscribe("crm", flaky.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    for id in [1, 2] {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    within(10, "both dead-lettered", bus.drain()).await.unwrap();
    // The events are finished (dead-lettered): pruned, but for the last
    // transaction. The letters stay.
    assert_eq!(log.prune().await.unwrap().events, 1);
    assert_eq!(events_left(&schema).await, 1);
    let letters = bus.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 2);

    // A letter marked for replay is kept past its limit; the other goes.
    // Pause first, so the replay waits and stays marked.
    assert_eq!(bus.pause("crm"), Some(true));
    bus.dead_letters().replay(letters[0].id).await.unwrap();
    schema
        .exec("UPDATE {schema}.dead_letters SET last_failed_at = now() - interval '100 days'")
        .await;
    let aged = Retention {
        dead_letters_max_age: Duration::from_secs(30 * 24 * 3600),
        ..prune_all_by_hand()
    };
    let (other, other_log) = bus_with(&schema, aged).await;
    assert_eq!(other_log.prune().await.unwrap().dead_letters, 1);
    let left = other.dead_letters().list().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, letters[0].id);

    // The replay runs from the letter's own copy of the event.
    flaky.fix();
    assert_eq!(bus.resume("crm"), Some(true));
    within(10, "the replay", bus.drain()).await.unwrap();
    assert_eq!(order_ids(flaky.seen.events()), [1]);
    other.shutdown().await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_prunes_by_itself_every_period() {
    let schema = schema!();
    let retention = Retention {
        every: Duration::from_millis(100),
        ..prune_all_by_hand()
    };
    let (bus, _log) = bus_with(&schema, retention).await;
    audit_orders(&bus, 0..5).await;
    let mut left = events_left(&schema).await;
    for _ in 0..100 {
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = events_left(&schema).await;
    }
    assert_eq!(left, 1, "the background prune never ran");
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_pruning_at_once_take_turns() {
    let schema = schema!();
    let (bus, a) = bus_with(&schema, prune_all_by_hand()).await;
    let b = schema
        .builder()
        .retention(prune_all_by_hand())
        .connect()
        .await
        .unwrap();
    audit_orders(&bus, 0..200).await;
    let (x, y) = tokio::join!(a.prune(), b.prune());
    let (x, y) = (x.unwrap(), y.unwrap());
    // Whether they overlapped or not, each event went once.
    assert_eq!(x.events + y.events, 199, "{x:?} {y:?}");
    assert!(!(x.skipped && y.skipped));
    assert_eq!(events_left(&schema).await, 1);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_subscription_holds_pruning_back_until_forgotten() {
    let schema = schema!();
    // The old release still runs `legacy`, stuck in its handler; the new
    // one runs only `audit`.
    let old_log = schema
        .builder()
        .retention(prune_all_by_hand())
        .connect()
        .await
        .unwrap();
    let old = Bus::builder()
        .backend(old_log.clone())
        .shutdown_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let legacy = Gate::closed();
    old.subscribe("legacy", legacy.clone())
        .start()
        .await
        .unwrap();
    let (bus, log) = bus_with(&schema, prune_all_by_hand()).await;
    audit_orders(&bus, 1..2).await;
    common::eventually(10, "legacy took its event", || legacy.started.len() == 1).await;

    // Held by the old process: refused, nothing deleted.
    let err = log.forget_subscription("legacy").await.unwrap_err();
    assert!(
        matches!(err, PostgresError::Held(ref s) if s == "legacy"),
        "{err}"
    );
    assert!(err.to_string().contains("legacy"), "{err}");
    assert_eq!(
        schema
            .count("SELECT count(DISTINCT subscription) FROM {schema}.cursors WHERE subscription = 'legacy'")
            .await,
        1
    );

    // The old release is stopped at its deadline, its event unfinished:
    // the position stays behind it, and so does the event.
    let report = old.shutdown().await;
    assert!(!report.is_clean());
    drop(old_log);
    log.prune().await.unwrap();
    assert_eq!(events_left(&schema).await, 1);

    // Its lease runs out (2 s in these tests); then it can be forgotten.
    let mut forgotten = log.forget_subscription("legacy").await;
    for _ in 0..50 {
        if !matches!(forgotten, Err(PostgresError::Held(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        forgotten = log.forget_subscription("legacy").await;
    }
    assert!(forgotten.unwrap().position);
    // One more event moves `audit` past the first one's transaction.
    bus.notify(OrderPlaced::new(2)).await.unwrap();
    within(10, "audit done", bus.drain()).await.unwrap();
    assert_eq!(log.prune().await.unwrap().events, 1);
    assert_eq!(events_left(&schema).await, 1);
    // Forgetting a name the outbox does not know is not an error.
    let nothing = log.forget_subscription("never-was").await.unwrap();
    assert!(!nothing.position);
    bus.shutdown().await;
}

/// A subscription forgotten while a process stood by for it (after its
/// holder's lease ran out): the standby says clearly what happened instead
/// of reading from nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_forgotten_under_a_standby_says_so() {
    let schema = schema!();
    let (holder, _holder_log) = bus_with(&schema, prune_all_by_hand()).await;
    holder
        .subscribe("mailer", Recorder::new())
        .start()
        .await
        .unwrap();
    let (standby, _log) = bus_with(&schema, prune_all_by_hand()).await;
    let seen = Recorder::new();
    standby
        .subscribe("mailer", seen.clone())
        .start()
        .await
        .unwrap();
    // Its row goes, as a forget does once the holder's lease has run out
    // (here the holder is still alive, and loses its claim too).
    schema
        .exec("DELETE FROM {schema}.cursors WHERE subscription = 'mailer'")
        .await;
    standby.notify(OrderPlaced::new(1)).await.unwrap();
    let err = within(10, "the standby's drain gives up", standby.drain())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("forget_subscription"), "{err}");
    assert!(seen.is_empty());
    standby.shutdown().await;
    holder.shutdown().await;
}

/// A caller that gives up on `prune` (a timeout) does not leave the prune
/// lock behind: the next prune, from this process or another, runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_given_up_on_leaves_no_lock_behind() {
    let schema = schema!();
    let (bus, log) = bus_with(&schema, prune_all_by_hand()).await;
    audit_orders(&bus, 0..20).await;
    // Cut short at a range of moments, some between taking the lock and
    // giving it back.
    for micros in (0..2_000).step_by(100) {
        let _ = tokio::time::timeout(Duration::from_micros(micros), log.prune()).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = schema
        .builder()
        .retention(prune_all_by_hand())
        .connect()
        .await
        .unwrap();
    assert!(
        !other.prune().await.unwrap().skipped,
        "the lock stayed taken"
    );
    assert!(!log.prune().await.unwrap().skipped, "the lock stayed taken");
    assert_eq!(events_left(&schema).await, 1);
    bus.shutdown().await;
}
