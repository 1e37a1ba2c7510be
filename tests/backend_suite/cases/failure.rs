//! When handling fails: retries that are counted, dead letters that keep
//! the error chain, replays from the store, and an event that no longer
//! decodes.

use crate::common::Flaky;
use crate::harness::{BusSettings, Harness};
use crate::support::*;
use eventbus::Retry;
use eventbus::dead_letter::ReplayError;
use eventbus::testing::Recorder;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

/// A failed attempt is retried, in every mode: the handler sees the same
/// event again, and the stats count the failure and the retry.
pub(crate) async fn retry_after_a_failure_counts_the_attempt(harness: &dyn Harness) {
    let bus = harness.open(BusSettings::default()).await;
    let mut consumers = Vec::new();
    for (name, mode) in MODES {
        let consumer = FailsFirst::new(1);
        let sub = mode
            .apply(bus.subscribe(name, consumer.clone()))
            .retry(quick_retry(3))
            .start()
            .await
            .unwrap();
        consumers.push((sub, consumer));
    }
    let sent: Vec<_> = (1..=3).map(credit).collect();
    for event in &sent {
        bus.notify(event.clone()).await.unwrap();
    }
    drained(&bus).await;

    for (sub, consumer) in &consumers {
        let name = sub.name();
        let attempts = consumer.attempts();
        for event in &sent {
            let of_this: Vec<_> = attempts.iter().filter(|(s, _)| *s == event.seq).collect();
            assert_eq!(
                of_this.len(),
                2,
                "{name}, event {}: {attempts:?}",
                event.seq
            );
            assert!(
                of_this.iter().all(|(_, id)| *id == event.meta.id),
                "{name}: the retry carries the same event"
            );
        }
        assert_eq!(sorted_seqs(&consumer.handled), [1, 2, 3], "{name}");
        let stats = sub.stats();
        assert_eq!(
            (
                stats.delivered,
                stats.failed,
                stats.retried,
                stats.dead_lettered
            ),
            (3, 3, 3, 0),
            "{stats:?}"
        );
    }
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
    assert!(shut_down(&bus).await.is_clean());
}

/// An event that fails every attempt becomes a dead letter of its
/// subscription, in every mode, with the attempts made and the error
/// chain; other subscriptions are not affected.
pub(crate) async fn retry_exhaustion_dead_letters(harness: &dyn Harness) {
    let bus = harness.open(BusSettings::default()).await;
    let mut failing = Vec::new();
    for (name, mode) in MODES {
        let sub = mode
            .apply(bus.subscribe(name, Declines))
            .retry(quick_retry(3))
            .start()
            .await
            .unwrap();
        failing.push(sub);
    }
    let audit = Recorder::new();
    bus.subscribe("audit", audit.clone()).start().await.unwrap();
    let sent: Vec<_> = (1..=2).map(credit).collect();
    for event in &sent {
        bus.notify(event.clone()).await.unwrap();
    }
    drained(&bus).await;

    for sub in &failing {
        let name = sub.name();
        let letters = bus.dead_letters().list_for(name).await.unwrap();
        assert_eq!(letters.len(), 2, "{letters:?}");
        for event in &sent {
            let letter = letters
                .iter()
                .find(|l| l.event.meta().id == event.meta.id)
                .unwrap_or_else(|| panic!("{name} has no dead letter for event {}", event.seq));
            assert_eq!(letter.subscription, name);
            assert_eq!(letter.attempts, 3);
            assert_eq!(letter.errors, ["charge failed", "card declined"]);
            assert_eq!(seq(&letter.event), event.seq);
            assert!(letter.first_failed_at <= letter.last_failed_at);
        }
        let stats = sub.stats();
        assert_eq!(
            (
                stats.delivered,
                stats.failed,
                stats.retried,
                stats.dead_lettered
            ),
            (0, 6, 4, 2),
            "{stats:?}"
        );
        assert_eq!(stats.lag, 0, "{name}: a dead letter finishes its event");
    }
    assert_eq!(bus.dead_letters().list().await.unwrap().len(), 6);
    assert!(
        bus.dead_letters()
            .list_for("audit")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        sorted_seqs(&audit),
        [1, 2],
        "the failures stay where they are"
    );
    assert!(shut_down(&bus).await.is_clean());
}

/// A [`Permanent`](eventbus::Permanent) failure, found anywhere in the
/// error's chain, skips the attempts the policy has left, in every mode:
/// one attempt, then the dead letter, with the wrapped error's own text.
pub(crate) async fn a_permanent_failure_dead_letters_at_once(harness: &dyn Harness) {
    let bus = harness.open(BusSettings::default()).await;
    let mut failing = Vec::new();
    for (name, mode) in MODES {
        let sub = mode
            .apply(bus.subscribe(name, DeclinesForGood))
            .retry(quick_retry(5))
            .start()
            .await
            .unwrap();
        failing.push(sub);
    }
    let sent: Vec<_> = (1..=2).map(credit).collect();
    for event in &sent {
        bus.notify(event.clone()).await.unwrap();
    }
    drained(&bus).await;

    for sub in &failing {
        let name = sub.name();
        let letters = bus.dead_letters().list_for(name).await.unwrap();
        assert_eq!(letters.len(), 2, "{name}: {letters:?}");
        for letter in &letters {
            assert_eq!(letter.attempts, 1, "{name}: {letter:?}");
            assert_eq!(letter.errors, ["charge failed", "card declined"]);
        }
        let stats = sub.stats();
        assert_eq!(
            (
                stats.delivered,
                stats.failed,
                stats.retried,
                stats.dead_lettered
            ),
            (0, 2, 0, 2),
            "{name}: {stats:?}"
        );
        assert_eq!(stats.lag, 0, "{name}: a dead letter finishes its event");
    }
    assert!(shut_down(&bus).await.is_clean());
}

/// A retry cut short by a shutdown goes on after a reopen, in every mode,
/// with the attempts made before it counted: the event gets only the
/// attempts it had left, then becomes a dead letter.
pub(crate) async fn retry_attempts_survive_close_and_reopen(harness: &dyn Harness) {
    // Long enough that a shutdown right after the first attempt usually
    // finds the retry waiting; if it does not, the counts below still add
    // up.
    let retry = Retry::exponential(Duration::from_millis(300))
        .without_jitter()
        .max_attempts(3);
    let first_run = {
        let bus = harness
            .open(BusSettings {
                shutdown_timeout: Duration::from_millis(100),
            })
            .await;
        let mut consumers = Vec::new();
        for (name, mode) in MODES {
            let consumer = FailsFirst::new(u32::MAX);
            mode.apply(bus.subscribe(name, consumer.clone()))
                .retry(retry.clone())
                .start()
                .await
                .unwrap();
            consumers.push(consumer);
        }
        bus.notify(credit(1)).await.unwrap();
        eventually(WAIT_SECS, "a first attempt in every mode", || {
            consumers.iter().all(|c| !c.attempts().is_empty())
        })
        .await;
        shut_down(&bus).await;
        consumers
            .iter()
            .map(|c| c.attempts().len())
            .collect::<Vec<_>>()
    };

    let bus = harness.open(BusSettings::default()).await;
    let mut consumers = Vec::new();
    for (name, mode) in MODES {
        let consumer = FailsFirst::new(u32::MAX);
        mode.apply(bus.subscribe(name, consumer.clone()))
            .retry(retry.clone())
            .start()
            .await
            .unwrap();
        consumers.push(consumer);
    }
    drained(&bus).await;
    for (((name, _), consumer), before) in MODES.iter().zip(&consumers).zip(&first_run) {
        let letters = bus.dead_letters().list_for(name).await.unwrap();
        assert_eq!(letters.len(), 1, "{name}: {letters:?}");
        assert_eq!(
            letters[0].attempts, 3,
            "{name}: attempts counted across both runs"
        );
        assert_eq!(
            before + consumer.attempts().len(),
            3,
            "{name}: the second run made only the attempts that were left"
        );
    }
    assert!(shut_down(&bus).await.is_clean());
}

/// A dead letter replayed into its subscription is handled again, in every
/// mode; it leaves the store once handled, and one that fails again comes
/// back as a new letter.
pub(crate) async fn replay_from_the_dead_letter_store(harness: &dyn Harness) {
    let bus = harness.open(BusSettings::default()).await;
    let mut subscriptions = Vec::new();
    for (name, mode) in MODES {
        let consumer = Flaky::default();
        consumer.broken.store(true, SeqCst);
        let sub = mode
            .apply(bus.subscribe(name, consumer.clone()))
            .retry(Retry::never())
            .start()
            .await
            .unwrap();
        subscriptions.push((sub, consumer));
    }
    for s in 1..=3 {
        bus.notify(credit(s)).await.unwrap();
    }
    drained(&bus).await;

    for (sub, consumer) in &subscriptions {
        let name = sub.name();
        let letters = bus.dead_letters().list_for(name).await.unwrap();
        assert_eq!(letters.len(), 3, "{name}");

        // Still broken: the replay fails, and the letter comes back anew.
        let first = &letters[0];
        bus.dead_letters().replay(first.id).await.unwrap();
        drained(&bus).await;
        let after = bus.dead_letters().list_for(name).await.unwrap();
        assert_eq!(after.len(), 3, "{name}");
        assert!(
            after.iter().all(|l| l.id != first.id),
            "a new id: {after:?}"
        );
        let again = after
            .iter()
            .find(|l| l.event.meta().id == first.event.meta().id)
            .expect("the event failed again, so it is a letter again");
        assert_eq!(again.subscription, name);

        // Fixed: one replay by id, then the rest.
        consumer.broken.store(false, SeqCst);
        bus.dead_letters().replay(again.id).await.unwrap();
        drained(&bus).await;
        assert_eq!(sorted_seqs(&consumer.seen), [seq(&first.event)], "{name}");
        assert_eq!(bus.dead_letters().count_for(name).await.unwrap(), 2);
        assert!(matches!(
            bus.dead_letters().replay(again.id).await,
            Err(ReplayError::NotFound(id)) if id == again.id
        ));

        assert_eq!(bus.dead_letters().replay_all(name).await.unwrap(), 2);
        drained(&bus).await;
        assert_eq!(sorted_seqs(&consumer.seen), [1, 2, 3], "{name}");
        assert_eq!(bus.dead_letters().count_for(name).await.unwrap(), 0);
        let stats = sub.stats();
        assert_eq!((stats.delivered, stats.dead_lettered), (3, 4), "{stats:?}");
        assert_eq!(stats.replaying, 0);
    }
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
    assert!(shut_down(&bus).await.is_clean());
}

/// Dead letters outlive the bus on a durable backend: after a reopen they
/// are listed as they were, replay in every mode, and leave the store for
/// good.
pub(crate) async fn replay_after_close_and_reopen(harness: &dyn Harness) {
    let letters = {
        let bus = harness.open(BusSettings::default()).await;
        for (name, mode) in MODES {
            mode.apply(bus.subscribe(name, Declines))
                .retry(quick_retry(2))
                .start()
                .await
                .unwrap();
        }
        for s in 1..=2 {
            bus.notify(credit(s)).await.unwrap();
        }
        drained(&bus).await;
        let letters = bus.dead_letters().list().await.unwrap();
        assert_eq!(letters.len(), 6);
        assert!(shut_down(&bus).await.is_clean());
        letters
    };

    {
        let bus = harness.open(BusSettings::default()).await;
        let kept = bus.dead_letters().list().await.unwrap();
        let summary = |l: &eventbus::DeadLetter| {
            (
                l.id,
                l.subscription.clone(),
                l.event.meta().id,
                l.attempts,
                l.errors.clone(),
            )
        };
        assert_eq!(
            kept.iter().map(summary).collect::<Vec<_>>(),
            letters.iter().map(summary).collect::<Vec<_>>(),
            "the letters as they were stored"
        );
        let mut healed = Vec::new();
        for (name, mode) in MODES {
            let recorder = Recorder::new();
            mode.apply(bus.subscribe(name, recorder.clone()))
                .start()
                .await
                .unwrap();
            assert_eq!(bus.dead_letters().replay_all(name).await.unwrap(), 2);
            healed.push((name, recorder));
        }
        drained(&bus).await;
        for (name, recorder) in &healed {
            assert_eq!(
                sorted_seqs(recorder),
                [1, 2],
                "{name}: each replayed once, and nothing else"
            );
        }
        assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
        assert!(shut_down(&bus).await.is_clean());
    }

    let bus = harness.open(BusSettings::default()).await;
    assert_eq!(
        bus.dead_letters().count().await.unwrap(),
        0,
        "a finished replay removed its letter for good"
    );
    let mut reopened = Vec::new();
    for (name, mode) in MODES {
        let recorder = Recorder::new();
        mode.apply(bus.subscribe(name, recorder.clone()))
            .start()
            .await
            .unwrap();
        reopened.push((name, recorder));
    }
    drained(&bus).await;
    for (name, recorder) in &reopened {
        assert!(
            recorder.is_empty(),
            "{name}: nothing comes twice: {:?}",
            seqs(recorder.events())
        );
    }
    assert!(shut_down(&bus).await.is_clean());
}

/// An event stored by something this binary cannot read is set aside with
/// the reason, for every subscription whatever its mode, and each goes on
/// to the next event.
pub(crate) async fn undecodable_event_is_quarantined_and_the_stream_goes_on(harness: &dyn Harness) {
    let tamper = harness
        .tamper()
        .expect("a durable backend's harness provides `Harness::tamper`");
    {
        let bus = harness.open(BusSettings::default()).await;
        let mut subscriptions = Vec::new();
        for (name, mode) in MODES {
            let recorder = Recorder::new();
            let sub = mode
                .apply(bus.subscribe(name, recorder.clone()))
                .start()
                .await
                .unwrap();
            subscriptions.push((sub, recorder));
        }
        bus.notify(credit(1)).await.unwrap();
        drained(&bus).await;

        tamper.store_undecodable("account.closed").await;
        bus.notify(credit(2)).await.unwrap();
        drained(&bus).await;

        for (sub, recorder) in &subscriptions {
            let name = sub.name();
            assert_eq!(sorted_seqs(recorder), [1, 2], "{name}: the stream went on");
            let quarantined = tamper.quarantined(name).await;
            assert_eq!(quarantined.len(), 1, "{name}: {quarantined:?}");
            assert_eq!(quarantined[0].name, "account.closed");
            assert!(
                quarantined[0].reason.contains("account.closed"),
                "the reason names what did not decode: {:?}",
                quarantined[0].reason
            );
            let stats = sub.stats();
            assert_eq!(
                (stats.delivered, stats.failed, stats.lag),
                (2, 0, 0),
                "{stats:?}"
            );
            assert_eq!(stats.stalled, None);
        }
        assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
        assert!(shut_down(&bus).await.is_clean());
    }

    // Set aside is not lost: it is not delivered after a reopen either,
    // and stays listed.
    let bus = harness.open(BusSettings::default()).await;
    let mut reopened = Vec::new();
    for (name, mode) in MODES {
        let recorder = Recorder::new();
        mode.apply(bus.subscribe(name, recorder.clone()))
            .start()
            .await
            .unwrap();
        reopened.push((name, recorder));
    }
    drained(&bus).await;
    for (name, recorder) in &reopened {
        assert!(recorder.is_empty(), "{name}: {:?}", recorder.names());
        assert_eq!(tamper.quarantined(name).await.len(), 1);
    }
    assert!(shut_down(&bus).await.is_clean());
}
