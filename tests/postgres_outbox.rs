//! The PostgreSQL outbox against the server on the machine: events commit
//! and roll back with the caller's transaction, late commits are never
//! skipped, one process holds a subscription at a time and another takes
//! over, and bad input gets a clear error.

mod common;

use common::pg::Schema;
use common::{OrderPlaced, eventually, order_ids, within};
use eventbus::testing::Recorder;
use eventbus::{Bus, Event, PostgresError, Retry, StartFrom};
use std::collections::BTreeMap;
use std::time::Duration;

macro_rules! schema {
    () => {
        match Schema::fresh(module_path!()).await {
            Some(schema) => schema,
            None => return,
        }
    };
}

/// Stores, behind the bus's back, two rows no event of this binary
/// decodes: a name nothing registers and one spelled the old way.
async fn store_undecodable_rows(schema: &Schema) {
    for name in ["order.renamed_long_ago", "order_placed"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {}.events (event_id, name, version, payload)
             VALUES (gen_random_uuid(), $1, 1, '{{\"order_id\": \"seven\"}}')",
            schema.name
        )))
        .bind(name)
        .execute(&schema.pool)
        .await
        .expect("store a row behind the bus's back");
    }
}

async fn bus_on(schema: &Schema) -> (Bus, eventbus::PostgresLog) {
    bus_with(schema.builder()).await
}

/// A bus whose subscriptions are one partition each: one process delivers
/// a subscription, the others stand by.
async fn standby_bus_on(schema: &Schema) -> (Bus, eventbus::PostgresLog) {
    bus_with(schema.builder().partitions(1)).await
}

async fn bus_with(builder: eventbus::backend::PostgresLogBuilder) -> (Bus, eventbus::PostgresLog) {
    let log = builder.connect().await.expect("connect the outbox");
    let bus = Bus::builder()
        .backend(log.clone())
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    (bus, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_transaction_emits_and_a_rolled_back_one_does_not() {
    let schema = schema!();
    let (bus, log) = bus_on(&schema).await;
    let seen = Recorder::new();
    bus.subscribe("audit", seen.clone()).start().await.unwrap();
    schema
        .exec("CREATE TABLE {schema}.orders (id bigint PRIMARY KEY)")
        .await;

    let mut tx = schema.pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {}.orders VALUES (1)",
        schema.name
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    log.notify_in(&mut tx, OrderPlaced::new(1)).await.unwrap();
    // Not visible before the commit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(seen.is_empty(), "an uncommitted event was delivered");
    tx.commit().await.unwrap();

    let mut tx = schema.pool.begin().await.unwrap();
    log.notify_in(&mut tx, OrderPlaced::new(2)).await.unwrap();
    tx.rollback().await.unwrap();
    // A later event, so the rolled-back one had every chance to show.
    bus.notify(OrderPlaced::new(3)).await.unwrap();
    within(10, "delivery of the committed events", bus.drain())
        .await
        .unwrap();
    assert_eq!(order_ids(seen.events()), [1, 3]);
    assert_eq!(
        schema.count("SELECT count(*) FROM {schema}.orders").await,
        1
    );
    bus.shutdown().await;
}

/// Sixteen transactions insert in one order and commit in the reverse
/// one, then many more commit in random orders while the subscriptions
/// read: every event reaches every subscription, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commits_are_never_skipped() {
    if std::env::var_os("EVENTBUS_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_test_writer()
            .try_init();
    }
    let schema = schema!();
    let (bus, log) = bus_on(&schema).await;
    let a = Recorder::new();
    let b = Recorder::new();
    bus.subscribe("a", a.clone()).start().await.unwrap();
    bus.subscribe("b", b.clone())
        .concurrent(8)
        .start()
        .await
        .unwrap();

    // Reversed: positions 0..16 are taken in order, and commit 15 first.
    let mut open = Vec::new();
    for id in 0..16 {
        let mut tx = schema.pool.begin().await.unwrap();
        log.notify_in(&mut tx, OrderPlaced::new(id)).await.unwrap();
        open.push(tx);
    }
    while let Some(tx) = open.pop() {
        tx.commit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Random: 16 connections, each holding its transaction open for a
    // random while after the insert.
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..16u64 {
        let pool = schema.pool.clone();
        let log = log.clone();
        writers.spawn(async move {
            for n in 0..25u64 {
                let id = 1000 + writer * 100 + n;
                let mut tx = pool.begin().await.unwrap();
                log.notify_in(&mut tx, OrderPlaced::new(id)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..15))).await;
                if fastrand::u8(..) < 20 {
                    // Some roll back: their positions are gaps for good.
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let committed: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT (payload->>'order_id')::bigint FROM {}.events ORDER BY 1",
        schema.name
    )))
    .fetch_all(&schema.pool)
    .await
    .unwrap();
    assert!(committed.len() > 300, "{} committed", committed.len());
    let mut distinct = committed.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), committed.len(), "an event was stored twice");
    let wanted: Vec<u64> = committed.iter().map(|&id| id as u64).collect();
    for (name, seen) in [("a", &a), ("b", &b)] {
        eventually(20, "every committed event delivered", || {
            seen.len() >= wanted.len()
        })
        .await;
        let mut got = order_ids(seen.events());
        got.sort_unstable();
        let mut counts = BTreeMap::new();
        for id in &got {
            *counts.entry(*id).or_insert(0) += 1;
        }
        let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            duplicates.is_empty(),
            "{name} got duplicates: {duplicates:?}"
        );
        got.dedup();
        assert_eq!(got, wanted, "{name} missed or invented events");
    }
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_takes_over_a_subscription_the_first_gave_up() {
    let schema = schema!();
    let (first, _) = standby_bus_on(&schema).await;
    let (second, _) = standby_bus_on(&schema).await;
    let one = Recorder::new();
    let two = Recorder::new();
    first
        .subscribe("billing", one.clone())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap();
    second
        .subscribe("billing", two.clone())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap();
    for id in 0..20 {
        first.notify(OrderPlaced::new(id)).await.unwrap();
    }
    eventually(10, "the first 20 handled", || one.len() + two.len() >= 20).await;
    // One process held the subscription; the other stood by.
    let (holder, standby, held, stood) = if one.len() >= two.len() {
        (first, second, one, two)
    } else {
        (second, first, two, one)
    };
    assert_eq!(held.len(), 20);
    assert!(
        stood.is_empty(),
        "both processes delivered the same subscription"
    );
    holder.shutdown().await;
    for id in 20..30 {
        standby.notify(OrderPlaced::new(id)).await.unwrap();
    }
    eventually(10, "the standby to take over", || stood.len() >= 10).await;
    let mut all = order_ids(held.events());
    all.extend(order_ids(stood.events()));
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (0..30).collect::<Vec<_>>());
    standby.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_whose_lease_was_taken_stops_without_committing() {
    let schema = schema!();
    let (bus, _) = bus_on(&schema).await;
    let seen = Recorder::new();
    bus.subscribe("mail", seen.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    within(10, "the first event", bus.drain()).await.unwrap();
    let committed = schema
        .count("SELECT max(position) FROM {schema}.cursors WHERE subscription = 'mail'")
        .await;
    // Another process takes the subscription, as one would after this
    // process's lease ran out.
    schema
        .exec("UPDATE {schema}.cursors SET owner = gen_random_uuid(), lease_until = now() + interval '1 hour'")
        .await;
    bus.notify(OrderPlaced::new(2)).await.unwrap();
    eventually(10, "the subscription to notice", || {
        bus.stats().iter().any(|s| {
            s.stalled
                .as_deref()
                .is_some_and(|r| r.contains("lost its claim"))
        })
    })
    .await;
    assert_eq!(
        schema
            .count("SELECT max(position) FROM {schema}.cursors WHERE subscription = 'mail'")
            .await,
        committed,
        "a process that lost its lease committed"
    );
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_stored_in_the_database_and_replayed() {
    let schema = schema!();
    let (bus, log) = bus_on(&schema).await;
    let flaky = common::Flaky::failing();
    bus.subscribe("crm", flaky.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(7)).await.unwrap();
    within(10, "the event handled", bus.drain()).await.unwrap();
    assert_eq!(
        schema
            .count("SELECT count(*) FROM {schema}.dead_letters")
            .await,
        1
    );
    // Another process lists it from the same table.
    let other = Bus::builder().backend(schema.log().await).build().unwrap();
    let letters = other.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(order_ids([letters[0].event.clone()]), [7]);
    drop(log);
    // The owning process replays it; the consumer succeeds now.
    flaky.fix();
    bus.dead_letters().replay(letters[0].id).await.unwrap();
    eventually(10, "the replay", || flaky.seen.len() == 1).await;
    for _ in 0..100 {
        if other.dead_letters().count().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        other.dead_letters().count().await.unwrap(),
        0,
        "the replayed letter stayed"
    );
    other.shutdown().await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_no_longer_decodes_is_quarantined_and_the_stream_goes_on() {
    let schema = schema!();
    let (bus, _) = bus_on(&schema).await;
    let seen = Recorder::new();
    bus.subscribe("search", seen.clone()).start().await.unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    store_undecodable_rows(&schema).await;
    bus.notify(OrderPlaced::new(2)).await.unwrap();
    within(10, "delivery past the bad rows", bus.drain())
        .await
        .unwrap();
    assert_eq!(order_ids(seen.events()), [1, 2]);
    assert_eq!(
        schema
            .count("SELECT count(*) FROM {schema}.quarantine WHERE subscription = 'search'")
            .await,
        2
    );
    bus.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error_without_the_password() {
    let err = eventbus::PostgresLog::builder()
        .url("postgres://app:hunter2@127.0.0.1:1/app")
        .connect()
        .await
        .unwrap_err();
    let text = common::chain(&err);
    assert!(matches!(err, PostgresError::Connect { .. }), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
}

#[tokio::test]
async fn a_bad_schema_name_is_refused_before_connecting() {
    let err = eventbus::PostgresLog::builder()
        .url("postgres://app@127.0.0.1:1/app")
        .schema("events; DROP TABLE users")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, PostgresError::SchemaName(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_another_shape_is_a_clear_error() {
    let schema = schema!();
    schema
        .exec("CREATE SCHEMA {schema}; CREATE TABLE {schema}.events (id serial, body text)")
        .await;
    let err = schema.builder().connect().await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            PostgresError::Shape {
                table: "events",
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("position"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_cluster_refuses_to_start_with_the_way_to_rebase() {
    let schema = schema!();
    drop(schema.log().await);
    schema
        .exec("UPDATE {schema}.cluster SET system_identifier = '12345'")
        .await;
    let err = schema.builder().connect().await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, PostgresError::ClusterChanged { .. }),
        "{text}"
    );
    assert!(text.contains("12345") && text.contains("UPDATE"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_starting_at_once_migrate_once() {
    let schema = schema!();
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let builder = schema.builder();
        starting.spawn(async move { builder.connect().await.map(drop) });
    }
    while let Some(started) = starting.join_next().await {
        started.unwrap().expect("every process starts");
    }
    assert_eq!(
        schema
            .count("SELECT count(*) FROM {schema}.migrations")
            .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_permissions_are_a_clear_error() {
    let schema = schema!();
    let role = format!("{}_reader", schema.name);
    schema
        .exec(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; REVOKE CREATE ON DATABASE test FROM {role}"
        ))
        .await;
    let url = common::pg::url().replacen("postgres@", &format!("{role}@"), 1);
    let err = eventbus::PostgresLog::builder()
        .url(url)
        .schema(&schema.name)
        .connect()
        .await
        .unwrap_err();
    let text = common::chain(&err);
    schema.exec(&format!("DROP ROLE IF EXISTS {role}")).await;
    assert!(matches!(err, PostgresError::Query { .. }), "{text}");
    assert!(text.contains("permission denied"), "{text}");
}

/// Set in a child process: the schema it works on as one replica.
const WORKER_SCHEMA: &str = "EVENTBUS_PG_WORKER_SCHEMA";

/// Not a test of its own: the body of a replica that the test below runs
/// as a child process (this same binary). It holds or waits for the
/// `shared` subscription's partitions, records every event it handles in
/// the `handled` table with its process id, and runs until it is killed,
/// or for at most a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the body of a child process of replicas_split_a_subscription_and_one_killed_mid_stream_loses_nothing"]
async fn replica_child_process() {
    let Ok(schema) = std::env::var(WORKER_SCHEMA) else {
        return;
    };
    let log = eventbus::PostgresLog::builder()
        .url(common::pg::url())
        .schema(&schema)
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let bus = Bus::builder().backend(log.clone()).build().unwrap();
    let pool = log.pool().clone();
    let insert = format!("INSERT INTO {schema}.handled (order_id, pid) VALUES ($1, $2)");
    bus.subscribe(
        "shared",
        eventbus::consumer_fn(move |event: eventbus::AnyEvent| {
            let pool = pool.clone();
            let insert = insert.clone();
            async move {
                let id = event.downcast_ref::<OrderPlaced>().unwrap().order_id;
                sqlx::query(sqlx::AssertSqlSafe(insert))
                    .bind(id as i64)
                    .bind(std::process::id() as i64)
                    .execute(&pool)
                    .await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<(), eventbus::BoxError>(())
            }
        }),
    )
    .start_from(StartFrom::Beginning)
    .start()
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Kills a child process that stops every child it started, even when the
/// test fails.
struct Replica(std::process::Child);

impl Replica {
    fn start(schema: &str) -> Replica {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "replica_child_process",
                "--ignored",
                "--nocapture",
            ])
            .env(WORKER_SCHEMA, schema)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a replica");
        Replica(child)
    }

    fn pid(&self) -> i64 {
        i64::from(self.0.id())
    }

    /// SIGKILL: no shutdown, no lease given up, nothing flushed.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two replicas share a subscription, each delivering its share of the
/// partitions; one is killed with SIGKILL mid-stream. The other takes its
/// partitions over after the lease time and nothing accepted is lost;
/// events the killed one handled but had not committed come again, and are
/// counted. Events of one key (a chain of cause and effect) are handled in
/// order throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_split_a_subscription_and_one_killed_mid_stream_loses_nothing() {
    let schema = schema!();
    let log = schema.log().await;
    schema
        .exec("CREATE TABLE {schema}.handled (seq bigserial, order_id bigint NOT NULL, pid bigint NOT NULL)")
        .await;
    let bus = Bus::builder().backend(log).build().unwrap();
    let mut first = Replica::start(&schema.name);
    let second = Replica::start(&schema.name);
    schema
        .wait_for_count(
            20,
            "the replicas split the partitions",
            "SELECT count(DISTINCT owner) FROM {schema}.cursors WHERE lease_until > now()",
            2,
        )
        .await;
    // 40 chains of 10: each event after the first is caused by the
    // chain's first, so the chain shares one key. Order id = chain * 100
    // + place in the chain.
    let (chains, length) = (40u64, 10u64);
    let total = chains * length;
    let roots: Vec<OrderPlaced> = (0..chains).map(|c| OrderPlaced::new(c * 100)).collect();
    let notify_step = |step: u64| {
        let bus = bus.clone();
        let roots = roots.clone();
        async move {
            for (c, root) in roots.iter().enumerate() {
                let event = if step == 0 {
                    root.clone()
                } else {
                    OrderPlaced::new(c as u64 * 100 + step).caused_by(root)
                };
                bus.notify(event).await.unwrap();
            }
        }
    };
    for step in 0..length / 2 {
        notify_step(step).await;
    }
    // Mid-stream: both replicas have handled some, not all.
    for (sql, n) in [
        ("SELECT count(DISTINCT pid) FROM {schema}.handled", 2),
        ("SELECT count(*) FROM {schema}.handled", 40),
    ] {
        schema
            .wait_for_count(20, "both replicas delivered", sql, n)
            .await;
    }
    first.kill();
    let before = schema
        .count(&format!(
            "SELECT count(*) FROM {{schema}}.handled WHERE pid = {}",
            first.pid()
        ))
        .await;
    for step in length / 2..length {
        notify_step(step).await;
    }
    schema
        .wait_for_count(
            30,
            "every accepted event handled after the kill",
            "SELECT count(DISTINCT order_id) FROM {schema}.handled",
            total as i64,
        )
        .await;
    let duplicates = schema
        .count("SELECT count(*) - count(DISTINCT order_id) FROM {schema}.handled")
        .await;
    let by_second = schema
        .count(&format!(
            "SELECT count(*) FROM {{schema}}.handled WHERE pid = {}",
            second.pid()
        ))
        .await;
    eprintln!(
        "{total} accepted; the killed replica handled {before}, the other {by_second}; {duplicates} handled twice"
    );
    assert!(before > 0 && by_second > 0);
    // Each chain in order: the first time each event was handled, in the
    // order of handling, follows the chain. A second delivery after the
    // takeover repeats a tail, and is left out.
    let handled: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT order_id FROM {}.handled ORDER BY seq",
        schema.name
    )))
    .fetch_all(&schema.pool)
    .await
    .unwrap();
    let mut next_in_chain = vec![0i64; chains as usize];
    for (order_id,) in handled {
        let (chain, step) = ((order_id / 100) as usize, order_id % 100);
        assert!(
            step <= next_in_chain[chain],
            "chain {chain}: event {step} handled before {}",
            next_in_chain[chain]
        );
        if step == next_in_chain[chain] {
            next_in_chain[chain] += 1;
        }
    }
    assert!(next_in_chain.iter().all(|&n| n == length as i64));
    // Only what the killed replica handled and had not committed comes
    // again: the survivor, reading again from the older place of the
    // partitions it took over, skips the rows of its own partitions it
    // had finished.
    let survivors_twice = schema
        .count(&format!(
            "SELECT count(*) FROM (SELECT order_id FROM {{schema}}.handled GROUP BY order_id
             HAVING count(*) > 1 AND bool_and(pid <> {})) AS twice",
            first.pid()
        ))
        .await;
    assert_eq!(
        survivors_twice, 0,
        "the survivor delivered its own events twice"
    );
    assert!(duplicates < 200, "{duplicates} duplicates");
    bus.shutdown().await;
}

/// A replica standing by can notify and drain: drain returns once the
/// replica holding the subscription has delivered what it notified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_drains_what_it_notified_once_the_holder_delivered_it() {
    let schema = schema!();
    let (holder, _) = standby_bus_on(&schema).await;
    let (standby, _) = standby_bus_on(&schema).await;
    let held = Recorder::new();
    holder
        .subscribe("audit", held.clone())
        .start()
        .await
        .unwrap();
    holder.notify(OrderPlaced::new(0)).await.unwrap();
    within(10, "the holder's drain", holder.drain())
        .await
        .unwrap();
    let stood = Recorder::new();
    standby
        .subscribe("audit", stood.clone())
        .start()
        .await
        .unwrap();
    for id in 1..=5 {
        standby.notify(OrderPlaced::new(id)).await.unwrap();
    }
    within(10, "the standby's drain", standby.drain())
        .await
        .unwrap();
    assert_eq!(order_ids(held.events()), [0, 1, 2, 3, 4, 5]);
    assert!(stood.is_empty(), "the standby delivered too");
    standby.shutdown().await;
    holder.shutdown().await;
}

/// Two buses on one outbox value (clones) are two claimants: one of them
/// delivers the subscription, not both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_buses_on_one_outbox_do_not_share_a_claim() {
    let schema = schema!();
    let log = schema.log().await;
    let one = Bus::builder().backend(log.clone()).build().unwrap();
    let two = Bus::builder().backend(log.clone()).build().unwrap();
    let (a, b) = (Recorder::new(), Recorder::new());
    one.subscribe("crm", a.clone()).start().await.unwrap();
    two.subscribe("crm", b.clone()).start().await.unwrap();
    for id in 0..10 {
        one.notify(OrderPlaced::new(id)).await.unwrap();
    }
    eventually(10, "delivery", || a.len() + b.len() >= 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a.len() + b.len(),
        10,
        "both buses delivered the subscription"
    );
    one.shutdown().await;
    two.shutdown().await;
}

#[test]
fn the_builder_and_errors_do_not_show_a_password() {
    let builder = eventbus::PostgresLog::builder().url("postgres://app:hunter2@db.internal/app");
    let shown = format!("{builder:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("app:***@db.internal"), "{shown}");
}

/// A replay asked for in a process that does not run the subscription
/// reaches the process that holds it, which runs it once; a standby told
/// of a replay in its own process leaves it to the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_asked_for_anywhere_run_once_in_the_holder() {
    let schema = schema!();
    let (holder, _) = bus_on(&schema).await;
    let flaky = common::Flaky::failing();
    holder
        .subscribe("crm", flaky.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    for id in [1, 2] {
        holder.notify(OrderPlaced::new(id)).await.unwrap();
    }
    within(10, "both dead-lettered", holder.drain())
        .await
        .unwrap();
    // A standby for the same subscription, whose consumer would record a
    // replay it ran.
    let (standby, _) = bus_on(&schema).await;
    let stood = Recorder::new();
    standby
        .subscribe("crm", stood.clone())
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    // An operator's process that runs no subscription at all.
    let (operator, _) = bus_on(&schema).await;
    flaky.fix();
    let letters = operator.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 2);
    operator.dead_letters().replay(letters[0].id).await.unwrap();
    standby.dead_letters().replay(letters[1].id).await.unwrap();
    eventually(10, "both replays in the holder", || flaky.seen.len() == 2).await;
    // Several more looks at the store: nothing runs twice.
    for _ in 0..50 {
        if operator.dead_letters().count().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(operator.dead_letters().count().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut replayed = order_ids(flaky.seen.events());
    replayed.sort_unstable();
    assert_eq!(replayed, [1, 2], "each letter replayed once");
    assert!(stood.is_empty(), "the standby ran a replay");
    assert_eq!(standby.stats()[0].replaying, 0);
    within(10, "the standby's drain", standby.drain())
        .await
        .unwrap();
    operator.shutdown().await;
    standby.shutdown().await;
    holder.shutdown().await;
}

/// A transaction left open elsewhere holds delivery back (the outbox reads
/// only below the oldest running transaction): the subscription names the
/// session in its stats, and delivers once the transaction ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_transaction_holding_events_back_is_named_in_the_stats() {
    let schema = schema!();
    // The horizon lag is a metric too. Each test runs in a process of its
    // own under nextest; under `cargo test` the tests of this file share
    // one, so the subscription's name is one no other test uses.
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let metrics_on = metrics::set_global_recorder(recorder).is_ok();
    // Both gauges from one snapshot, which resets them: the reader sets
    // them again at each look, every 2 s while it waits.
    let horizon = move || {
        let gauges = snapshotter.snapshot().into_vec();
        let gauge = |name: &str| {
            gauges.iter().find_map(|(key, _, _, value)| {
                let key = key.key();
                let ours = key.name() == name
                    && key
                        .labels()
                        .any(|l| l.key() == "subscription" && l.value() == "held_back");
                match value {
                    metrics_util::debugging::DebugValue::Gauge(v) if ours => Some(v.into_inner()),
                    _ => None,
                }
            })
        };
        (
            gauge("eventbus_postgres_horizon_waiting"),
            gauge("eventbus_postgres_horizon_age_seconds"),
        )
    };
    let (bus, _log) = bus_on(&schema).await;
    let seen = Recorder::new();
    let sub = bus
        .subscribe("held_back", seen.clone())
        .start()
        .await
        .unwrap();
    // A session that took a transaction id and then went idle.
    let mut blocker = schema.pool.begin().await.unwrap();
    let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *blocker)
        .await
        .unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *blocker)
        .await
        .unwrap();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    let named = |s: &eventbus::SubscriptionStats| {
        s.stalled
            .as_deref()
            .is_some_and(|r| r.contains(&format!("session {pid}")))
    };
    eventually(30, "the stats to name the idle session", || {
        named(&sub.stats())
    })
    .await;
    let reason = sub.stats().stalled.unwrap();
    assert!(reason.contains("idle in transaction"), "{reason}");
    assert!(reason.contains("1 committed events wait"), "{reason}");
    assert!(seen.is_empty(), "delivered past the horizon");
    if metrics_on {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (waiting, age) = horizon();
        assert_eq!(waiting, Some(1.0));
        assert!(age.is_some_and(|age| age >= 5.0), "held for {age:?} s");
    }

    blocker.commit().await.unwrap();
    within(10, "delivery once the transaction ended", bus.drain())
        .await
        .unwrap();
    assert_eq!(order_ids(seen.events()), [1]);
    eventually(10, "the stall to clear", || sub.stats().stalled.is_none()).await;
    if metrics_on {
        // Set again within 2 s by a reader that still saw the hold.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(horizon().0, Some(0.0));
    }
    bus.shutdown().await;
}

/// Sixteen producers notify at once: their events share transactions
/// (group commit), and each producer's events still arrive in the order it
/// notified them, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_notifies_share_commits_and_keep_each_producers_order() {
    let schema = schema!();
    let (bus, _log) = bus_on(&schema).await;
    let seen = Recorder::new();
    bus.subscribe("audit", seen.clone()).start().await.unwrap();
    let producers: Vec<_> = (0..16u64)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for n in 0..100u64 {
                    bus.notify(OrderPlaced::new(p * 1000 + n)).await.unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    within(30, "delivery", bus.drain()).await.unwrap();
    let ids = order_ids(seen.events());
    assert_eq!(ids.len(), 1600, "each once");
    for p in 0..16u64 {
        let mine: Vec<u64> = ids.iter().copied().filter(|id| id / 1000 == p).collect();
        assert_eq!(mine, (0..100).map(|n| p * 1000 + n).collect::<Vec<_>>());
    }
    let transactions = schema
        .count("SELECT count(DISTINCT tx_id::text) FROM {schema}.events")
        .await;
    eprintln!("1600 events in {transactions} transactions");
    assert!(transactions <= 1600);
    bus.shutdown().await;
}

/// An event the database refuses is refused alone: the others written
/// with it in one batch are written again without it. The refusal says
/// why, and nothing refused is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_database_refuses_does_not_fail_its_batch() {
    let schema = schema!();
    let (bus, log) = bus_on(&schema).await;
    let seen = Recorder::new();
    bus.subscribe("audit", seen.clone()).start().await.unwrap();
    schema
        .exec(
            "ALTER TABLE {schema}.events ADD CONSTRAINT no_13
             CHECK ((payload->>'order_id')::bigint <> 13)",
        )
        .await;
    let results: Vec<_> = futures_util::future::join_all((1..=40u64).map(|id| {
        let bus = bus.clone();
        async move { (id, bus.notify(OrderPlaced::new(id)).await) }
    }))
    .await;
    within(30, "delivery", bus.drain()).await.unwrap();
    let delivered = order_ids(seen.events());
    let mut refused = Vec::new();
    for (id, result) in &results {
        match result {
            Ok(()) => assert!(delivered.contains(id), "{id} accepted, never delivered"),
            Err(err) => {
                assert!(!delivered.contains(id), "{id} refused, yet delivered");
                let text = common::chain(err);
                assert!(text.contains("no_13"), "{id}: {text}");
                refused.push(*id);
            }
        }
    }
    // Refused alone: the other events of its batch are written without it.
    assert_eq!(refused, [13]);
    assert_eq!(delivered.len() + refused.len(), 40);
    let stored = schema.count("SELECT count(*) FROM {schema}.events").await;
    assert_eq!(stored as usize, delivered.len());
    drop(log);
    bus.shutdown().await;
}

/// Quarantined rows are listed with the reason; once the binary decodes
/// one (here: its payload fixed by hand, as a roll-forward would), a
/// requeue moves it to the dead letters, once even when two processes
/// requeue at the same time, and a replay delivers it. A row that still
/// does not decode stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_rows_are_listed_and_requeued_once_they_decode() {
    let schema = schema!();
    let (bus, log) = bus_on(&schema).await;
    let seen = Recorder::new();
    bus.subscribe("search", seen.clone()).start().await.unwrap();
    store_undecodable_rows(&schema).await;
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    within(10, "delivery past the bad rows", bus.drain())
        .await
        .unwrap();
    let rows = log.quarantined("search").await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].name, "order.renamed_long_ago");
    assert!(!rows[1].reason.is_empty(), "{rows:?}");

    // The fix: the second row decodes now (the name and whole stored
    // event of an order, as a roll-forward that knows the old shape would
    // read it).
    schema
        .exec(
            "UPDATE {schema}.quarantine SET
                 name = (SELECT name FROM {schema}.events WHERE payload->>'order_id' = '1'),
                 payload = jsonb_set(
                     (SELECT payload FROM {schema}.events WHERE payload->>'order_id' = '1'),
                     '{order_id}', '7')
             WHERE name = 'order_placed'",
        )
        .await;
    let other = schema.log().await;
    let (a, b) = tokio::join!(
        log.requeue_quarantined("search"),
        other.requeue_quarantined("search")
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.requeued + b.requeued, 1, "{a:?} {b:?}");
    assert_eq!(a.still_quarantined, 1);
    assert_eq!(log.quarantined("search").await.unwrap().len(), 1);
    let letters = bus.dead_letters().list_for("search").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].errors[0].starts_with("quarantined: "),
        "{letters:?}"
    );
    bus.dead_letters().replay_all("search").await.unwrap();
    within(10, "the replay", bus.drain()).await.unwrap();
    assert_eq!(order_ids(seen.events()), [1, 7]);
    bus.shutdown().await;
}
