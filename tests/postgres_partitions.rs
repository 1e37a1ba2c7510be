//! A subscription split into partitions that several processes share:
//! each takes its share, gives up what is over it when another joins,
//! refuses a different partition count while others run, and drains only
//! once every partition finished, whichever process holds it.
//!
//! Each bus here has its own outbox value (its own identity on the leases),
//! as separate replicas would.

mod common;

use common::pg::Schema;
use common::{Gate, OrderPlaced, eventually, order_ids, within};
use eventbus::testing::Recorder;
use eventbus::{Bus, Event, PostgresError, StartFrom, event};
use std::time::Duration;

/// Two events of one order, each starting its own correlation chain: only
/// their key keeps them together.
#[event(key = order_id)]
struct OrderPaid {
    order_id: u64,
}

#[event(key = order_id)]
struct OrderShipped {
    order_id: u64,
}

macro_rules! schema {
    () => {
        match Schema::fresh(module_path!()).await {
            Some(schema) => schema,
            None => return,
        }
    };
}

async fn replica(schema: &Schema, partitions: usize) -> Bus {
    let log = schema
        .builder()
        .partitions(partitions)
        .connect()
        .await
        .expect("connect the outbox");
    Bus::builder()
        .backend(log)
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// How many processes hold partitions of `subscription` now.
fn holders_sql(subscription: &str) -> String {
    format!(
        "SELECT count(DISTINCT owner) FROM {{schema}}.cursors
         WHERE subscription = '{subscription}' AND lease_until > now()"
    )
}

async fn holders(schema: &Schema, subscription: &str) -> i64 {
    schema.count(&holders_sql(subscription)).await
}

/// Waits until two processes hold partitions of `subscription`.
async fn split_in_two(schema: &Schema, subscription: &str) {
    schema
        .wait_for_count(
            10,
            "the second process got a share",
            &holders_sql(subscription),
            2,
        )
        .await;
}

/// A second process joins a running one: the first gives up half the
/// partitions at a committed place, the second takes them, and from then
/// on both deliver. Nothing is lost and, the hand-over being at a
/// committed place, nothing is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_joining_takes_its_share_at_a_committed_place() {
    let schema = schema!();
    let first = replica(&schema, 8).await;
    let one = Recorder::new();
    first
        .subscribe("crm", one.clone())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap();
    assert_eq!(
        schema
            .count("SELECT count(*) FROM {schema}.cursors WHERE owner IS NOT NULL")
            .await,
        8,
        "alone, the first process holds every partition"
    );
    let second = replica(&schema, 8).await;
    let two = Recorder::new();
    second
        .subscribe("crm", two.clone())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap();
    // Events keep coming while the partitions change hands.
    let mut id = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while two.is_empty() || one.len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second process never got a share"
        );
        first.notify(OrderPlaced::new(id)).await.unwrap();
        id += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..50 {
        first.notify(OrderPlaced::new(id)).await.unwrap();
        id += 1;
    }
    within(20, "both finish", first.drain()).await.unwrap();
    within(20, "both finish", second.drain()).await.unwrap();
    assert_eq!(holders(&schema, "crm").await, 2);
    let mut all = order_ids(one.events());
    all.extend(order_ids(two.events()));
    let handled = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (0..id).collect::<Vec<_>>(), "events were lost");
    assert_eq!(handled, all.len(), "a hand-over delivered events twice");
    eprintln!(
        "{id} events: the first process delivered {}, the second {}",
        one.len(),
        two.len()
    );
    first.shutdown().await;
    second.shutdown().await;
}

/// `drain` in one process waits for the partitions another process holds:
/// what it notified is finished only once every partition delivered it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_partitions_another_process_holds() {
    let schema = schema!();
    let fast = replica(&schema, 8).await;
    let slow = replica(&schema, 8).await;
    let quick = Recorder::new();
    let gate = Gate::closed();
    fast.subscribe("audit", quick.clone())
        .start()
        .await
        .unwrap();
    slow.subscribe("audit", gate.clone()).start().await.unwrap();
    split_in_two(&schema, "audit").await;
    // Events with different keys (each its own correlation chain) spread
    // over the partitions: some reach the process whose handler waits.
    for id in 0..40 {
        fast.notify(OrderPlaced::new(id)).await.unwrap();
    }
    eventually(10, "the slow process to start one", || {
        !gate.started.is_empty()
    })
    .await;
    let early = tokio::time::timeout(Duration::from_millis(800), fast.drain()).await;
    assert!(
        early.is_err(),
        "drain returned while another process had not delivered its share"
    );
    gate.permits.add_permits(1000);
    within(20, "drain once every partition delivered", fast.drain())
        .await
        .unwrap();
    let mut all = order_ids(quick.events());
    all.extend(order_ids(gate.seen.events()));
    all.sort_unstable();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    assert!(!quick.is_empty() && !gate.seen.is_empty());
    fast.shutdown().await;
    slow.shutdown().await;
}

/// A process configured with another partition count than the running
/// ones refuses to start the subscription, naming both counts; once they
/// have stopped, it re-bases the subscription and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_partition_count_is_refused_while_others_run_then_rebased() {
    let schema = schema!();
    let running = replica(&schema, 8).await;
    let seen = Recorder::new();
    running
        .subscribe("billing", seen.clone())
        .start()
        .await
        .unwrap();
    running.notify(OrderPlaced::new(1)).await.unwrap();
    within(10, "delivered", running.drain()).await.unwrap();

    let other = replica(&schema, 3).await;
    let later = Recorder::new();
    let err = other
        .subscribe("billing", later.clone())
        .start()
        .await
        .unwrap_err();
    let text = common::chain(&err);
    assert!(text.contains("billing"), "{text}");
    assert!(
        text.contains("8 partitions") && text.contains("configured with 3"),
        "{text}"
    );

    // Accepted while nothing can deliver it: the re-based subscription
    // must not skip it.
    running.shutdown().await;
    other.notify(OrderPlaced::new(2)).await.unwrap();
    other
        .subscribe("billing", later.clone())
        .start()
        .await
        .expect("re-based once the others stopped");
    other.notify(OrderPlaced::new(3)).await.unwrap();
    within(10, "delivered after the re-base", other.drain())
        .await
        .unwrap();
    assert_eq!(order_ids(later.events()), [2, 3]);
    assert_eq!(
        schema
            .count("SELECT count(*) FROM {schema}.cursors WHERE subscription = 'billing'")
            .await,
        3
    );
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_partition_count_is_refused_at_connect() {
    let schema = schema!();
    for count in [0, 1025] {
        let err = schema
            .builder()
            .partitions(count)
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(err, PostgresError::PartitionCount(c) if c == count),
            "{err}"
        );
        assert!(err.to_string().contains("1 to 1024"), "{err}");
    }
}

/// Events of one order, keyed by `#[event(key = order_id)]` but in
/// separate correlation chains, go to one partition: across two processes
/// (one of them running lanes by the same key) each order's events are
/// handled by one of them, paid before shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_with_one_key_stay_in_one_process_in_order() {
    let schema = schema!();
    let one = replica(&schema, 8).await;
    let two = replica(&schema, 8).await;
    let (a, b) = (Recorder::new(), Recorder::new());
    one.subscribe("fulfilment", a.clone())
        .start()
        .await
        .unwrap();
    // The second runs different keys in parallel lanes; each key still
    // goes to one lane, in order.
    two.subscribe("fulfilment", b.clone())
        .partitioned(4, |e| e.order_key())
        .start()
        .await
        .unwrap();
    split_in_two(&schema, "fulfilment").await;
    let orders = 30u64;
    for order in 0..orders {
        let paid = OrderPaid::new(order);
        let shipped = OrderShipped::new(order);
        assert_ne!(paid.meta().correlation_id, shipped.meta().correlation_id);
        assert_eq!(paid.order_key(), shipped.order_key());
        one.notify(paid).await.unwrap();
        one.notify(shipped).await.unwrap();
    }
    within(20, "both delivered", one.drain()).await.unwrap();
    // Per process: (order, was it the shipment) in the order handled.
    let handled = |r: &Recorder| -> Vec<(u64, bool)> {
        r.events()
            .iter()
            .map(|e| match e.downcast_ref::<OrderPaid>() {
                Some(paid) => (paid.order_id, false),
                None => (e.downcast_ref::<OrderShipped>().unwrap().order_id, true),
            })
            .collect()
    };
    let (by_a, by_b) = (handled(&a), handled(&b));
    assert_eq!(by_a.len() + by_b.len(), 2 * orders as usize);
    assert!(!by_a.is_empty() && !by_b.is_empty(), "one process did all");
    for events in [&by_a, &by_b] {
        for order in 0..orders {
            let mine: Vec<bool> = events
                .iter()
                .filter(|(o, _)| *o == order)
                .map(|(_, shipped)| *shipped)
                .collect();
            assert!(
                mine.is_empty() || mine == [false, true],
                "order {order}: {mine:?} in one process"
            );
        }
    }
    one.shutdown().await;
    two.shutdown().await;
}

/// A process whose leases may have run out hands nothing more out until a
/// renewal says they are still its own. Here its role loses the right to
/// renew (its reads still work) while it waits for events; another process
/// takes the partitions over once the leases run out. Events notified then
/// reach only the new holder: the old one, finding its renewal refused,
/// does not read them, and says why in its stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_cannot_renew_hands_nothing_out_past_its_lease() {
    let schema = schema!();
    let role = format!("{}_renewer", schema.name);
    schema
        .exec(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN"
        ))
        .await;
    // The schema's tables exist once an outbox connected as the owner.
    drop(schema.log().await);
    schema
        .exec(&format!(
            "GRANT USAGE ON SCHEMA {{schema}} TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {{schema}} TO {role};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA {{schema}} TO {role};"
        ))
        .await;
    let url = common::pg::url().replacen("postgres@", &format!("{role}@"), 1);
    let log = eventbus::PostgresLog::builder()
        .url(url)
        .schema(&schema.name)
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let old = Bus::builder()
        .backend(log)
        .shutdown_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let stale = Recorder::new();
    let sub = old.subscribe("mail", stale.clone()).start().await.unwrap();
    assert_eq!(holders(&schema, "mail").await, 1);

    schema
        .exec(&format!("REVOKE UPDATE ON {{schema}}.cursors FROM {role}"))
        .await;
    // Its leases run out; another process takes every partition.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let new = replica(&schema, 8).await;
    let fresh = Recorder::new();
    new.subscribe("mail", fresh.clone()).start().await.unwrap();
    schema
        .wait_for_count(
            10,
            "the new process took every partition over",
            "SELECT count(*) FROM {schema}.cursors WHERE subscription = 'mail' AND lease_until > now()",
            8,
        )
        .await;
    for id in 0..20 {
        new.notify(OrderPlaced::new(id)).await.unwrap();
    }
    within(10, "the new holder delivers", new.drain())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(order_ids(fresh.events()), (0..20).collect::<Vec<_>>());
    assert!(
        stale.is_empty(),
        "a process whose leases ran out handed out {:?}",
        order_ids(stale.events())
    );
    let stalled = sub.stats().stalled.unwrap_or_default();
    assert!(
        stalled.contains("renewing the subscription's leases"),
        "{stalled}"
    );
    assert!(stalled.contains("permission denied"), "{stalled}");

    new.shutdown().await;
    drop(tokio::time::timeout(Duration::from_secs(5), old.shutdown()).await);
    schema
        .exec(&format!("DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}"))
        .await;
}

/// A process takes over partitions another left behind while nothing new
/// is written: what it delivers from the older place is committed, so
/// `drain` returns, instead of waiting for an event that would carry the
/// commit past the place it had already read to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_taken_over_in_a_quiet_moment_are_committed() {
    let schema = schema!();
    let keeper = replica(&schema, 8).await;
    let leaver = Bus::builder()
        .backend(schema.builder().connect().await.unwrap())
        .shutdown_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let kept = Recorder::new();
    let stuck = Gate::closed();
    keeper
        .subscribe("ledger", kept.clone())
        .start()
        .await
        .unwrap();
    leaver
        .subscribe("ledger", stuck.clone())
        .start()
        .await
        .unwrap();
    split_in_two(&schema, "ledger").await;
    for id in 0..40 {
        keeper.notify(OrderPlaced::new(id)).await.unwrap();
    }
    eventually(10, "the leaver to take one of its share", || {
        !stuck.started.is_empty()
    })
    .await;
    // Its share stays unfinished: it stops at its deadline, gives its
    // partitions up at their committed places, and nothing new comes.
    leaver.shutdown().await;
    within(
        20,
        "drain once the keeper delivered the leaver's share",
        keeper.drain(),
    )
    .await
    .unwrap();
    let mut all = order_ids(kept.events());
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    keeper.shutdown().await;
}

/// A process waiting for a share when another re-bases the subscription
/// onto another partition count: the re-base is refused while it runs;
/// one done behind its back (by hand) stops it with an error naming both
/// counts instead of splitting by the old count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_process_stops_a_rebase_or_refuses_to_read_after_one() {
    let schema = schema!();
    let holder = replica(&schema, 1).await;
    let waiting = replica(&schema, 1).await;
    let (held, waited) = (Recorder::new(), Recorder::new());
    holder.subscribe("crm", held.clone()).start().await.unwrap();
    let sub = waiting
        .subscribe("crm", waited.clone())
        .start()
        .await
        .unwrap();
    holder.shutdown().await;
    // `waiting` takes the only partition over; a process configured with
    // 3 is refused while it runs, holding or not.
    let other = replica(&schema, 3).await;
    let err = other
        .subscribe("crm", Recorder::new())
        .start()
        .await
        .unwrap_err();
    assert!(
        common::chain(&err).contains("configured with 3"),
        "{}",
        common::chain(&err)
    );
    // Re-based behind its back: it says so and reads nothing.
    schema
        .exec(
            "DELETE FROM {schema}.cursors WHERE subscription = 'crm';
             INSERT INTO {schema}.cursors (subscription, partition, tx_id, position)
             SELECT 'crm', p, '0', 0 FROM generate_series(0, 2) AS p",
        )
        .await;
    other.notify(OrderPlaced::new(1)).await.unwrap();
    eventually(10, "the waiting process to stop reading", || {
        sub.stats()
            .stalled
            .is_some_and(|s| s.contains("split into 3 partitions") || s.contains("lost its claim"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        waited.is_empty(),
        "read by the old count: {:?}",
        order_ids(waited.events())
    );
    drop(tokio::time::timeout(Duration::from_secs(5), waiting.shutdown()).await);
}
