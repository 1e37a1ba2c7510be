//! Dead letters on the SQLite log: a letter leaves the store only once its
//! replay finished, a letter that cannot be stored holds its event back,
//! ids are never given out twice, and letters are read a page at a time.

use eventbus::dead_letter::DeadLetterQuery;
use eventbus::testing::Recorder;
use eventbus::{AnyEvent, BoxError, Bus, Consumer, Retry, SqliteLog, StartFrom};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

mod common;

use common::*;

async fn bus_at(path: &Path) -> Bus {
    sqlite_bus(path, Duration::from_millis(300)).await
}

/// Never returns: a handler stuck on a slow dependency.
#[derive(Clone, Default)]
struct Stuck {
    started: Recorder,
}

impl Consumer for Stuck {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        self.started.handle(event).await?;
        std::future::pending().await
    }
}

/// Three letters of `payments` in a fresh file at `path`.
async fn three_letters(path: &Path) {
    let bus = bus_at(path).await;
    bus.subscribe("payments", Broken)
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    for id in 1..=3 {
        bus.notify(OrderPlaced::new(id)).await.unwrap();
    }
    bus.drain().await.unwrap();
    assert_eq!(bus.dead_letters().count().await.unwrap(), 3);
    assert!(bus.shutdown().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_cut_short_by_shutdown_leaves_its_letters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    three_letters(&path).await;

    {
        let bus = bus_at(&path).await;
        let stuck = Stuck::default();
        bus.subscribe("payments", stuck.clone())
            .start()
            .await
            .unwrap();
        assert_eq!(bus.dead_letters().replay_all("payments").await.unwrap(), 3);
        while stuck.started.is_empty() {
            tokio::task::yield_now().await;
        }
        // Being replayed is not being done: the letters stay listed.
        let letters = bus.dead_letters().list().await.unwrap();
        assert_eq!(letters.len(), 3);
        assert!(letters.iter().all(|l| l.replaying), "{letters:?}");
        let again = bus.dead_letters().replay(letters[0].id).await.unwrap_err();
        assert!(
            matches!(again, eventbus::dead_letter::ReplayError::InProgress(id) if id == letters[0].id),
            "{again}"
        );
        // The deadline stops the replay; the report says it was not done.
        let report = bus.shutdown().await;
        assert_eq!(report.timed_out.len(), 1, "{report:?}");
        assert_eq!(report.timed_out[0].replaying, 3, "{report:?}");
    }

    // The next run still has all three, still marked: the subscription
    // replays them when it starts, without being asked again.
    let bus = bus_at(&path).await;
    assert_eq!(bus.dead_letters().count().await.unwrap(), 3);
    let healed = Recorder::new();
    bus.subscribe("payments", healed.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(bus.dead_letters().replay_all("payments").await.unwrap(), 0);
    bus.drain().await.unwrap();
    assert_eq!(order_ids(healed.events()), [1, 2, 3]);
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
    assert!(bus.shutdown().await.is_clean());
    drop(bus);

    let bus = bus_at(&path).await;
    assert_eq!(
        bus.dead_letters().count().await.unwrap(),
        0,
        "a finished replay removed its letter for good"
    );
    bus.shutdown().await;
}

#[tokio::test]
async fn a_replay_that_fails_again_leaves_one_new_letter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    three_letters(&path).await;

    let bus = bus_at(&path).await;
    bus.subscribe("payments", Broken)
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    let before = bus.dead_letters().list().await.unwrap();
    bus.dead_letters().replay(before[0].id).await.unwrap();
    bus.drain().await.unwrap();
    let after = bus.dead_letters().list().await.unwrap();
    let ids: Vec<u64> = after.iter().map(|l| l.id).collect();
    assert_eq!(ids, [before[1].id, before[2].id, before[2].id + 1]);
    assert_eq!(order_ids(after.into_iter().map(|l| l.event)), [2, 3, 1]);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_stored_holds_its_event_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let mut accepted = Vec::new();
    {
        let bus = capped_bus(&path, 256 * 1024).await;
        let flaky = Flaky::default();
        flaky.broken.store(true, SeqCst);
        let search = bus
            .subscribe("search", flaky)
            .retry(Retry::never())
            .start()
            .await
            .unwrap();
        // Fill the file: from some point on, neither events nor letters fit.
        for id in 0..100_000 {
            match bus.notify(OrderPlaced::new(id)).await {
                Ok(()) => accepted.push(id),
                Err(_) => break,
            }
        }
        let stalled = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(reason) = search.stats().stalled {
                    return reason;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the subscription says why it waits");
        assert!(
            stalled.starts_with("could not store the dead letter of order.placed"),
            "{stalled}"
        );
        assert!(
            stalled.contains("the database or disk is full"),
            "{stalled}"
        );
        bus.shutdown().await;
    }
    assert!(accepted.len() > 100, "{} accepted", accepted.len());

    // Without the cap, every accepted event is a stored letter or comes
    // again: none was released without its letter.
    let bus = bus_at(&path).await;
    let healed = Recorder::new();
    bus.subscribe("search", healed.clone())
        .start()
        .await
        .unwrap();
    bus.drain().await.unwrap();
    let letters = bus.dead_letters().list_for("search").await.unwrap();
    let covered: BTreeSet<u64> = order_ids(letters.into_iter().map(|l| l.event))
        .into_iter()
        .chain(order_ids(healed.events()))
        .collect();
    let missing: Vec<u64> = accepted
        .iter()
        .filter(|id| !covered.contains(id))
        .copied()
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    bus.shutdown().await;
}

#[tokio::test]
async fn dead_letter_ids_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    three_letters(&path).await;
    {
        // A newer version stored a letter this binary cannot decode.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO dead_letters
                (subscription, name, version, payload, errors, attempts, first_failed_at, last_failed_at)
             VALUES ('payments', 'order.refunded', 3, '{}', '[\"x\"]', 1, 0, 0);",
        )
        .unwrap();
    }

    let bus = bus_at(&path).await;
    bus.subscribe("payments", Broken)
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    let listed: Vec<u64> = bus
        .dead_letters()
        .list()
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(listed, [1, 2, 3], "the undecodable letter 4 is skipped");
    assert_eq!(bus.dead_letters().count().await.unwrap(), 4);

    bus.notify(OrderPlaced::new(10)).await.unwrap();
    bus.drain().await.unwrap();
    let newest = bus.dead_letters().list().await.unwrap().pop().unwrap();
    assert_eq!(newest.id, 5, "past the letter it cannot read");

    // Removing the newest does not free its id.
    assert!(bus.dead_letters().discard(5).await.unwrap());
    bus.notify(OrderPlaced::new(11)).await.unwrap();
    bus.drain().await.unwrap();
    let newest = bus.dead_letters().list().await.unwrap().pop().unwrap();
    assert_eq!(newest.id, 6);
    bus.shutdown().await;
    drop(bus);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let unknown: String = conn
        .query_row("SELECT name FROM dead_letters WHERE id = 4", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(unknown, "order.refunded", "left as it was");
}

#[tokio::test]
async fn a_file_of_the_first_layout_keeps_its_letters_and_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    // The layout eventbus wrote before dead-letter ids were AUTOINCREMENT,
    // with one letter at id 7.
    v1_file(&path, &[7]);
    let bus = bus_at(&path).await;
    let letter = bus.dead_letters().get(7).await.unwrap().unwrap();
    assert_eq!(order_ids([letter.event]), [70]);
    assert_eq!(letter.errors, ["card declined"]);
    bus.subscribe("payments", Broken)
        .retry(Retry::never())
        .start()
        .await
        .unwrap();
    assert!(bus.dead_letters().discard(7).await.unwrap());
    bus.notify(OrderPlaced::new(1)).await.unwrap();
    bus.drain().await.unwrap();
    let ids: Vec<u64> = bus
        .dead_letters()
        .list()
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, [8], "past the removed letter of the old layout");
    bus.shutdown().await;
}

#[tokio::test]
async fn dead_letters_are_read_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    drop(SqliteLog::open(&path).await.unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for id in 0..2_500u64 {
            let (subscription, name) = match id {
                // A letter written by a newer version, in the middle.
                1_000 => ("search", "order.refunded"),
                _ if id % 2 == 0 => ("search", "order.placed"),
                _ => ("webhooks", "order.placed"),
            };
            tx.execute(
                "INSERT INTO dead_letters
                    (subscription, name, version, payload, errors, attempts, first_failed_at, last_failed_at)
                 VALUES (?1, ?2, 1, ?3, '[\"down\"]', 5, 0, 0)",
                rusqlite::params![subscription, name, stored(id)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    let bus = bus_at(&path).await;
    assert_eq!(bus.dead_letters().count().await.unwrap(), 2_500);
    assert_eq!(
        bus.dead_letters().count_for("webhooks").await.unwrap(),
        1_250
    );

    let mut query = DeadLetterQuery::new().subscription("search").limit(100);
    let mut pages = 0;
    let mut seen = Vec::new();
    loop {
        let page = bus.dead_letters().page(&query).await.unwrap();
        assert!(page.letters.len() <= 100);
        pages += 1;
        seen.extend(page.letters.iter().map(|l| l.id));
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    assert_eq!(pages, 13, "1,250 letters of `search`, 100 a page");
    assert_eq!(seen.len(), 1_249, "all but the one that does not decode");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "oldest first, once each"
    );

    let webhooks = bus.dead_letters().list_for("webhooks").await.unwrap();
    assert_eq!(webhooks.len(), 1_250);
    assert!(webhooks.iter().all(|l| l.subscription == "webhooks"));
    assert_eq!(bus.dead_letters().list().await.unwrap().len(), 2_499);
    bus.shutdown().await;
}

#[tokio::test]
async fn a_subscription_that_starts_from_the_beginning_is_unaffected_by_letters() {
    // Dead letters are read on demand: opening a file with many of them
    // leaves delivery as it was.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    three_letters(&path).await;
    let bus = bus_at(&path).await;
    let all = Recorder::new();
    bus.subscribe("history", all.clone())
        .start_from(StartFrom::Beginning)
        .start()
        .await
        .unwrap();
    bus.drain().await.unwrap();
    assert_eq!(order_ids(all.events()), [1, 2, 3]);
    bus.shutdown().await;
}

/// A replay asked for is kept with the letter: a process that dies before
/// running it (here, the subscription stuck, then the process gone without
/// a shutdown) leaves the letter marked, and the next start replays it
/// without being asked again; `drain` waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_asked_before_a_crash_runs_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    three_letters(&path).await;
    // The first process: its own runtime, dropped with everything on it
    // (the stuck replay included) and no shutdown, as a crash leaves it.
    let first_run = path.clone();
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let bus = bus_at(&first_run).await;
            let stuck = Stuck::default();
            bus.subscribe("payments", stuck.clone())
                .start()
                .await
                .unwrap();
            let first = bus.dead_letters().list().await.unwrap()[0].id;
            bus.dead_letters().replay(first).await.unwrap();
            eventually(5, "the replay started", || !stuck.started.is_empty()).await;
        });
        drop(runtime);
    })
    .await
    .unwrap();
    // The file is free once the old writer thread let go of its lock.
    let bus = within(10, "reopen", async {
        loop {
            match SqliteLog::open(&path).await {
                Ok(log) => break Bus::builder().backend(log).build().unwrap(),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    let marked: Vec<u64> = bus
        .dead_letters()
        .list()
        .await
        .unwrap()
        .iter()
        .filter(|l| l.replaying)
        .map(|l| l.id)
        .collect();
    assert_eq!(marked.len(), 1, "the request survived");
    let healed = Recorder::new();
    bus.subscribe("payments", healed.clone())
        .start()
        .await
        .unwrap();
    within(10, "drain", bus.drain()).await.unwrap();
    assert_eq!(order_ids(healed.events()), [1], "replayed without asking");
    assert_eq!(bus.dead_letters().count().await.unwrap(), 2);
    assert!(bus.dead_letters().get(marked[0]).await.unwrap().is_none());
    bus.shutdown().await;
}

/// A replay of a letter whose subscription runs nowhere is refused and
/// marks nothing; a letter left marked by a stopped subscription can be
/// discarded, since no replay of it can be under way.
#[tokio::test]
async fn a_replay_with_no_subscription_marks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    three_letters(&path).await;
    let bus = bus_at(&path).await;
    let letters = bus.dead_letters().list().await.unwrap();
    let refused = bus.dead_letters().replay(letters[0].id).await.unwrap_err();
    assert!(
        matches!(&refused, eventbus::dead_letter::ReplayError::NoSubscription(s) if s == "payments"),
        "{refused}"
    );
    assert!(
        !bus.dead_letters()
            .is_replaying(letters[0].id)
            .await
            .unwrap()
    );

    // Marked while paused, then stopped: the mark stays, the letter can go.
    let sub = bus
        .subscribe("payments", Recorder::new())
        .start()
        .await
        .unwrap();
    sub.pause();
    bus.dead_letters().replay(letters[1].id).await.unwrap();
    assert!(matches!(
        bus.dead_letters().discard(letters[1].id).await,
        Err(eventbus::dead_letter::DiscardError::InProgress(_))
    ));
    within(5, "stop", sub.stop()).await;
    assert!(
        bus.dead_letters()
            .is_replaying(letters[1].id)
            .await
            .unwrap()
    );
    assert!(bus.dead_letters().discard(letters[1].id).await.unwrap());
    assert_eq!(bus.dead_letters().count().await.unwrap(), 2);
    bus.shutdown().await;
}

/// A file of layout version 2 (before replays were kept with their
/// letters) opens, keeps its letters, and replays them.
#[tokio::test]
async fn a_file_of_the_second_layout_keeps_its_letters_and_replays_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    three_letters(&path).await;
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "ALTER TABLE dead_letters DROP COLUMN replay_requested_at; PRAGMA user_version = 2;",
        )
        .unwrap();
    let bus = bus_at(&path).await;
    let letters = bus.dead_letters().list().await.unwrap();
    assert_eq!(letters.len(), 3);
    assert!(letters.iter().all(|l| !l.replaying));
    let healed = Recorder::new();
    bus.subscribe("payments", healed.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(bus.dead_letters().replay_all("payments").await.unwrap(), 3);
    within(10, "drain", bus.drain()).await.unwrap();
    assert_eq!(order_ids(healed.events()), [1, 2, 3]);
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
    bus.shutdown().await;
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
}
