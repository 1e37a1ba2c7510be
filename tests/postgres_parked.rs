//! Failed events parked in the PostgreSQL outbox until their retry is due:
//! the events behind one go on, the parked one survives its process, runs
//! once however many processes read the subscription, and `drain` waits
//! for it. Against the server on the machine.

mod common;

use common::pg::Schema;
use common::{OrderPlaced, eventually, order_ids, within};
use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, Retry, Subscription};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::time::Duration;

macro_rules! schema {
    () => {
        match Schema::fresh(module_path!()).await {
            Some(schema) => schema,
            None => return,
        }
    };
}

/// Fails order `failing` while `broken` is set, at most `times` times;
/// records every event handled, and every attempt at `failing`.
#[derive(Clone)]
struct FailsOne {
    failing: u64,
    broken: Arc<AtomicBool>,
    times: Arc<AtomicU32>,
    attempts: Arc<AtomicU32>,
    seen: Recorder,
}

impl FailsOne {
    fn new(failing: u64, times: u32) -> Self {
        FailsOne {
            failing,
            broken: Arc::new(AtomicBool::new(true)),
            times: Arc::new(AtomicU32::new(times)),
            attempts: Arc::default(),
            seen: Recorder::new(),
        }
    }

    fn fix(&self) {
        self.broken.store(false, SeqCst);
    }
}

impl Consumer for FailsOne {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let order = event.downcast_ref::<OrderPlaced>().unwrap().order_id;
        if order == self.failing {
            self.attempts.fetch_add(1, SeqCst);
            if self.broken.load(SeqCst)
                && self
                    .times
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err("search cluster unreachable".into());
            }
        }
        self.seen.handle(event).await
    }
}

async fn bus_with(builder: eventbus::backend::PostgresLogBuilder) -> Bus {
    let log = builder.connect().await.expect("connect the outbox");
    Bus::builder()
        .backend(log)
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn every(delay_ms: u64, attempts: u32) -> Retry {
    Retry::exponential(Duration::from_millis(delay_ms))
        .without_jitter()
        .max_attempts(attempts)
}

/// Starts the subscription `search` with `consumer` and `retry`.
async fn start_search<C: Consumer>(bus: &Bus, consumer: C, retry: Retry) -> Subscription {
    bus.subscribe("search", consumer)
        .retry(retry)
        .start()
        .await
        .unwrap()
}

const PARKED: &str = "SELECT count(*) FROM {schema}.parked WHERE subscription = 'search'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_is_parked_and_the_events_behind_it_go_on() {
    let schema = schema!();
    let bus = bus_with(schema.builder()).await;
    let search = FailsOne::new(1, u32::MAX);
    let sub = start_search(&bus, search.clone(), every(200, 20)).await;
    for order in 1..=3 {
        bus.notify(OrderPlaced::new(order)).await.unwrap();
    }
    // In sequential mode: 2 and 3 are handled while 1 waits for its retry.
    eventually(10, "the events behind the failed one", || {
        search.seen.len() == 2
    })
    .await;
    assert_eq!(order_ids(search.seen.events()), [2, 3]);
    assert_eq!(schema.count(PARKED).await, 1);
    eventually(10, "the stats to count it", || sub.stats().parked == 1).await;
    // A parked event is finished for the log: its position is committed.
    eventually(10, "no lag while the event is parked", || {
        sub.stats().lag == 0
    })
    .await;

    // Fixed: `drain` waits for the parked event's retry.
    search.fix();
    within(20, "drain", bus.drain()).await.unwrap();
    assert_eq!(order_ids(search.seen.events()), [2, 3, 1]);
    assert_eq!(schema.count(PARKED).await, 0);
    let stats = sub.stats();
    assert_eq!(
        (stats.delivered, stats.dead_lettered, stats.parked),
        (3, 0, 0),
        "{stats:?}"
    );
    assert!(
        stats.failed >= 1 && stats.retried == stats.failed,
        "{stats:?}"
    );
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_parking_a_retry_holds_the_events_behind_it() {
    let schema = schema!();
    let bus = bus_with(schema.builder().park_retries(false)).await;
    let search = FailsOne::new(1, 2);
    start_search(&bus, search.clone(), every(100, 5)).await;
    for order in 1..=3 {
        bus.notify(OrderPlaced::new(order)).await.unwrap();
    }
    within(20, "drain", bus.drain()).await.unwrap();
    assert_eq!(order_ids(search.seen.events()), [1, 2, 3], "order kept");
    assert_eq!(search.attempts.load(SeqCst), 3);
    assert_eq!(schema.count(PARKED).await, 0);
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_event_outlives_its_process_and_keeps_its_attempt_count() {
    let schema = schema!();
    {
        let bus = bus_with(schema.builder()).await;
        let search = FailsOne::new(1, u32::MAX);
        start_search(&bus, search.clone(), every(500, 3)).await;
        bus.notify(OrderPlaced::new(1)).await.unwrap();
        schema
            .wait_for_count(10, "the failed event parked", PARKED, 1)
            .await;
        // Stopped while the event waits for its retry.
        assert!(bus.shutdown().await.is_clean());
        assert_eq!(search.attempts.load(SeqCst), 1);
    }
    let bus = bus_with(schema.builder()).await;
    let search = FailsOne::new(1, u32::MAX);
    let sub = start_search(&bus, search.clone(), every(500, 3)).await;
    assert_eq!(sub.stats().parked, 1, "counted at the start");
    within(20, "drain", bus.drain()).await.unwrap();
    assert_eq!(
        search.attempts.load(SeqCst),
        2,
        "the second process made only the attempts left"
    );
    let letters = bus.dead_letters().list_for("search").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(order_ids([letters[0].event.clone()]), [1]);
    assert_eq!(letters[0].errors, ["search cluster unreachable"]);
    assert_eq!(schema.count(PARKED).await, 0);
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_event_runs_once_across_processes() {
    let schema = schema!();
    // Two processes on one subscription, sharing the count of attempts at
    // order 1: it fails once, so it is parked once and retried once.
    let first = FailsOne::new(1, 1);
    let second = FailsOne {
        seen: Recorder::new(),
        ..first.clone()
    };
    let mut buses = Vec::new();
    for consumer in [&first, &second] {
        let bus = bus_with(schema.builder().partitions(4)).await;
        start_search(&bus, consumer.clone(), every(300, 5)).await;
        buses.push(bus);
    }
    for order in 1..=40 {
        buses[order as usize % 2]
            .notify(OrderPlaced::new(order))
            .await
            .unwrap();
    }
    for bus in &buses {
        within(20, "drain", bus.drain()).await.unwrap();
    }
    let mut handled = order_ids(first.seen.events());
    handled.extend(order_ids(second.seen.events()));
    handled.sort_unstable();
    assert_eq!(handled, (1..=40).collect::<Vec<_>>(), "each once");
    assert_eq!(first.attempts.load(SeqCst), 2, "one failure, one retry");
    assert_eq!(schema.count(PARKED).await, 0);
    for bus in buses {
        assert!(bus.shutdown().await.is_clean());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_park_the_store_refuses_is_retried_in_place_and_loses_nothing() {
    let schema = schema!();
    let bus = bus_with(schema.builder()).await;
    // The parked table gone behind the bus's back: parking fails.
    schema.exec("DROP TABLE {schema}.parked").await;
    let search = FailsOne::new(1, 1);
    let sub = bus
        .subscribe("search", search.clone())
        .retry(every(50, 3))
        .start()
        .await;
    // Counting what is parked fails at the start: a clear error.
    let err = sub.expect_err("the start reads the parked table");
    assert!(
        common::chain(&err).contains("counting parked events"),
        "{}",
        common::chain(&err)
    );
    // Recreated empty, then dropped again once the subscription runs.
    schema
        .exec(
            "CREATE TABLE {schema}.parked (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             subscription text NOT NULL, name text NOT NULL, version integer NOT NULL,
             payload jsonb NOT NULL, errors jsonb NOT NULL, attempts integer NOT NULL,
             first_failed_at timestamptz NOT NULL, due_at timestamptz NOT NULL,
             claimed_until timestamptz)",
        )
        .await;
    let sub = start_search(&bus, search.clone(), every(50, 3)).await;
    schema.exec("DROP TABLE {schema}.parked").await;
    for order in 1..=3 {
        bus.notify(OrderPlaced::new(order)).await.unwrap();
    }
    within(20, "drain", bus.drain()).await.unwrap();
    assert_eq!(
        order_ids(search.seen.events()),
        [1, 2, 3],
        "retried in place, in order"
    );
    assert_eq!(search.attempts.load(SeqCst), 2);
    assert_eq!(sub.stats().dead_lettered, 0);
    bus.shutdown().await;
}

/// Whether a parked event that no longer decodes ends up a dead letter,
/// with the reason, and holds nothing back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_parked_event_becomes_a_dead_letter() {
    let schema = schema!();
    let bus = bus_with(schema.builder()).await;
    schema
        .exec(
            "INSERT INTO {schema}.parked
             (subscription, name, version, payload, errors, attempts, first_failed_at, due_at)
             VALUES ('search', 'order.renamed_long_ago', 1, '{\"order_id\": 7}',
                     '[\"search cluster unreachable\"]', 1, now(), now())",
        )
        .await;
    let search = FailsOne::new(0, 0);
    start_search(&bus, search.clone(), every(50, 3)).await;
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    within(20, "drain", bus.drain()).await.unwrap();
    assert_eq!(order_ids(search.seen.events()), [1]);
    assert_eq!(schema.count(PARKED).await, 0);
    let errors: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT errors::text FROM {}.dead_letters WHERE subscription = 'search'",
        schema.name
    )))
    .fetch_all(&schema.pool)
    .await
    .unwrap();
    assert_eq!(errors.len(), 1);
    let errors: Vec<serde_json::Value> = serde_json::from_str(&errors[0]).unwrap();
    assert_eq!(errors[0], "search cluster unreachable");
    assert!(
        errors[1]
            .as_str()
            .unwrap()
            .starts_with("the parked event no longer decodes: "),
        "{errors:?}"
    );
    assert!(bus.shutdown().await.is_clean());
}

/// Always asks for an hour.
struct RateLimited;

impl Consumer for RateLimited {
    async fn handle(&self, _event: &AnyEvent) -> Result<(), BoxError> {
        Err(eventbus::RetryAfter::new(Duration::from_secs(3600), "429 Too Many Requests").into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_retry_is_due_no_sooner_than_the_failure_asked() {
    let schema = schema!();
    let bus = bus_with(schema.builder()).await;
    start_search(&bus, RateLimited, every(10, 3)).await;
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    schema
        .wait_for_count(10, "the failed event parked", PARKED, 1)
        .await;
    assert_eq!(
        schema
            .count(
                "SELECT count(*) FROM {schema}.parked
                 WHERE due_at > now() + interval '50 minutes' AND attempts = 1"
            )
            .await,
        1,
        "due in an hour, not in the policy's 10 ms"
    );
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_returns_in_every_process_that_shares_the_subscription() {
    let schema = schema!();
    // Every event fails its first attempt; two processes split two
    // partitions, so parks happen in both, and only one of them holds the
    // partition that runs the parked events.
    let attempts = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let mut buses = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..2 {
        let bus = bus_with(schema.builder().partitions(2)).await;
        let sub = start_search(
            &bus,
            FirstFails(Arc::clone(&attempts), Recorder::new()),
            every(100, 5),
        )
        .await;
        buses.push(bus);
        subs.push(sub);
    }
    schema
        .wait_for_count(
            10,
            "both processes holding a partition",
            "SELECT count(DISTINCT owner) FROM {schema}.cursors WHERE lease_until > now()",
            2,
        )
        .await;
    for order in 1..=20 {
        buses[order as usize % 2]
            .notify(OrderPlaced::new(order))
            .await
            .unwrap();
    }
    for bus in &buses {
        within(20, "drain in each process", bus.drain())
            .await
            .unwrap();
    }
    assert_eq!(schema.count(PARKED).await, 0);
    for sub in &subs {
        assert_eq!(sub.stats().parked, 0, "{:?}", sub.stats());
    }
    for bus in buses {
        assert!(bus.shutdown().await.is_clean());
    }
}

/// Fails the first attempt at every order, then records it.
#[derive(Clone)]
struct FirstFails(
    Arc<std::sync::Mutex<std::collections::HashSet<u64>>>,
    Recorder,
);

impl Consumer for FirstFails {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let order = event.downcast_ref::<OrderPlaced>().unwrap().order_id;
        if self.0.lock().unwrap().insert(order) {
            return Err("search cluster unreachable".into());
        }
        self.1.handle(event).await
    }
}

/// Fails every attempt; the second waits for the test to let it go.
#[derive(Clone)]
struct HeldSecond {
    attempts: Arc<AtomicU32>,
    second_started: Arc<tokio::sync::Notify>,
    let_go: Arc<tokio::sync::Semaphore>,
}

impl Default for HeldSecond {
    fn default() -> Self {
        HeldSecond {
            attempts: Arc::default(),
            second_started: Arc::default(),
            let_go: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

impl Consumer for HeldSecond {
    async fn handle(&self, _event: &AnyEvent) -> Result<(), BoxError> {
        if self.attempts.fetch_add(1, SeqCst) == 1 {
            self.second_started.notify_one();
            self.let_go.acquire().await.unwrap().forget();
        }
        Err("search cluster unreachable".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_whose_claim_ran_out_changes_nothing() {
    let schema = schema!();
    let bus = bus_with(schema.builder()).await;
    let search = HeldSecond::default();
    start_search(&bus, search.clone(), every(100, 5)).await;
    let second = search.second_started.notified();
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    within(10, "the parked event's retry", second).await;
    // Meanwhile its claim ran out and another process ran it and parked it
    // again, with one attempt more and an hour to wait.
    schema
        .exec(
            "UPDATE {schema}.parked SET attempts = 3, claim = claim + 1, claimed_until = NULL,
             due_at = now() + interval '1 hour'",
        )
        .await;
    search.let_go.add_permits(1);
    eventually(10, "the held attempt to fail", || {
        search.attempts.load(SeqCst) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        schema
            .count(
                "SELECT count(*) FROM {schema}.parked
                 WHERE attempts = 3 AND due_at > now() + interval '50 minutes'"
            )
            .await,
        1,
        "the late process did not write its older count back"
    );
    assert!(bus.dead_letters().list().await.unwrap().is_empty());
    bus.shutdown().await;
}

/// Records every event, slowly.
#[derive(Clone)]
struct Slow(Recorder);

impl Consumer for Slow {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.0.handle(event).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_stops_parked_events_too_and_gives_their_claims_back() {
    let schema = schema!();
    // Twenty events parked behind the bus's back, all due now.
    let bus = bus_with(schema.builder()).await;
    for order in 1..=20 {
        let payload = serde_json::to_string(&OrderPlaced::new(order)).unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {}.parked
             (subscription, name, version, payload, errors, attempts, first_failed_at, due_at)
             VALUES ('search', 'order.placed', 1, $1::jsonb, '[\"down\"]', 1, now(), now())",
            schema.name
        )))
        .bind(payload)
        .execute(&schema.pool)
        .await
        .unwrap();
    }
    let seen = Slow(Recorder::new());
    let sub = start_search(&bus, seen.clone(), every(100, 5)).await;
    eventually(10, "the first retry", || !seen.0.is_empty()).await;
    sub.pause();
    let at_pause = seen.0.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        seen.0.len() <= at_pause + 1,
        "{} handled after the pause",
        seen.0.len() - at_pause
    );
    schema
        .wait_for_count(
            10,
            "the claims given back",
            "SELECT count(*) FROM {schema}.parked WHERE claimed_until IS NULL",
            schema.count(PARKED).await,
        )
        .await;
    sub.resume();
    within(30, "drain", bus.drain()).await.unwrap();
    let mut handled = order_ids(seen.0.events());
    handled.sort_unstable();
    assert_eq!(handled, (1..=20).collect::<Vec<_>>());
    assert_eq!(schema.count(PARKED).await, 0);
    assert!(bus.shutdown().await.is_clean());
}
