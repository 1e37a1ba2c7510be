use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// The standard metadata every event carries, in its `meta` field.
///
/// `#[event]` adds the field and the constructor fills it; consumers read it
/// to deduplicate (`id`), order (`occurred_at`), attribute (`actor`) and trace
/// (`correlation_id`, `causation_id`) without knowing the event's type.
///
/// # Examples
///
/// ```
/// use eventbus::{event, Event};
///
/// #[event]
/// struct OrderPlaced {
///     order_id: u64,
/// }
///
/// let placed = OrderPlaced::new(1).with_actor("user:7");
/// let meta = placed.meta();
/// assert_eq!(meta.name, "order.placed");
/// assert_eq!(meta.version, 1);
/// assert_eq!(meta.actor.as_deref(), Some("user:7"));
/// // A new event starts its own correlation chain.
/// assert_eq!(meta.correlation_id, meta.id);
/// assert_eq!(meta.causation_id, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Unique and time-ordered (UUIDv7): ids created later on one thread sort
    /// after earlier ones; across threads, ids of a later millisecond sort
    /// after those of an earlier one (within one millisecond, the ids of two
    /// threads have no set order). The id's millisecond is `occurred_at`'s,
    /// unless the clock stepped back while the thread made events: its ids
    /// keep increasing and then run ahead of `occurred_at`.
    pub id: Uuid,
    /// The event's stable name, such as `user.created`.
    pub name: Cow<'static, str>,
    /// The schema version of the event's fields.
    pub version: u32,
    /// When the event was created, in UTC.
    pub occurred_at: DateTime<Utc>,
    /// Who caused it: a user, a service, a job. Free-form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The id shared by every event in one chain of cause and effect: the id
    /// of the chain's first event.
    pub correlation_id: Uuid,
    /// The id of the event that directly caused this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The Rust module that defined the event, such as `billing::events`.
    pub source: Cow<'static, str>,
}

impl Meta {
    /// Fresh metadata for a new event: a new UUIDv7 that is also the
    /// correlation id, the current time, no actor and no cause.
    ///
    /// `#[event]` constructors call this; call it yourself only when you build
    /// an event with a struct literal.
    // Inline across crates, so the metadata is built in place inside the
    // event instead of being returned and copied into it.
    #[inline]
    #[must_use]
    pub fn new(name: &'static str, version: u32, source: &'static str) -> Self {
        // One clock read serves both the id and `occurred_at`, so the time in
        // the id is the time of the event.
        let (id, occurred_at) = IDS.with(|cell| {
            let mut ids = cell.get();
            let since_epoch = ids.since_epoch();
            let id = ids.next(since_epoch);
            let occurred_at = ids.date_time(since_epoch);
            cell.set(ids);
            (id, occurred_at)
        });
        Meta {
            id,
            name: Cow::Borrowed(name),
            version,
            occurred_at,
            actor: None,
            correlation_id: id,
            causation_id: None,
            source: Cow::Borrowed(source),
        }
    }

    /// Links this event to the one that caused it: the causation id becomes
    /// the cause's id, and the correlation id is copied from the cause, so the
    /// whole chain shares one correlation id.
    pub fn link_to(&mut self, cause: &Meta) {
        self.causation_id = Some(cause.id);
        self.correlation_id = cause.correlation_id;
    }
}

thread_local! {
    // One generator per thread, not one per process: a shared one costs a
    // lock and a contended cache line per event, so making events got
    // slower as a service added threads.
    static IDS: Cell<Ids> = const { Cell::new(Ids::UNSEEDED) };
}

/// The UUIDv7 ids of one thread, built as RFC 9562 lays them out: 48 bits
/// of Unix milliseconds, the version, 42 bits of counter, the variant and
/// 32 random bits.
///
/// The counter makes the ids of a thread strictly increase even within a
/// millisecond; it starts at a random value below 2^41 each millisecond, so
/// it has room for 2^41 ids before it would carry into the time. The random
/// start and the random 32-bit tail of every id keep two threads' ids
/// apart: two ids of one millisecond collide only if both match. Nothing
/// here is a secret: the random bits come from a fast generator, seeded
/// once per thread from the operating system's (through `uuid`).
#[derive(Clone, Copy)]
struct Ids {
    /// Unix milliseconds of the last id; 0 before the first.
    millis: u64,
    counter: u64,
    /// wyrand state; 0 until seeded.
    rng: u64,
    /// The day `date` is for, as days since the Unix epoch.
    day: u64,
    /// Midnight of `day`: a `DateTime` built from it and the seconds since
    /// midnight skips chrono's calendar arithmetic, which cost as much as
    /// the clock read.
    date: NaiveDate,
    /// The last wall-clock read, and the cycle counter at that moment; `None`
    /// before the first.
    anchor: Option<(quanta::Instant, Duration)>,
    /// The last time given out.
    last: Duration,
}

/// How long the cycle counter alone dates events before the wall clock is
/// read again. Short enough that a step of the system clock (NTP, an
/// operator) shows within a millisecond, and that the counter's drift from
/// the wall clock over one stretch stays far below a millisecond.
const REANCHOR: Duration = Duration::from_millis(1);

const COUNTER_BITS: u32 = 42;
const COUNTER_MAX: u64 = (1 << COUNTER_BITS) - 1;

impl Ids {
    const UNSEEDED: Ids = Ids {
        millis: 0,
        counter: 0,
        rng: 0,
        day: u64::MAX,
        date: NaiveDate::MIN,
        anchor: None,
        last: Duration::ZERO,
    };

    /// The time since the Unix epoch. A wall-clock read costs about twice an
    /// event's other work, so it happens once per [`REANCHOR`] per thread;
    /// in between, the processor's cycle counter (through `quanta`, which
    /// falls back to the monotonic clock where the counter is unreliable)
    /// measures how far the thread is past its last read.
    ///
    /// The counter runs a little fast or slow against the wall clock, so a
    /// fresh read can land a few microseconds before the last time given
    /// out; the thread's times then hold still until the clock passes it,
    /// rather than go back. A step back of the wall clock itself (a
    /// millisecond or more) is followed.
    fn since_epoch(&mut self) -> Duration {
        let now = quanta::Instant::now();
        let time = match self.anchor {
            Some((at, wall)) if now.saturating_duration_since(at) < REANCHOR => {
                wall + now.saturating_duration_since(at)
            }
            _ => {
                let wall = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                self.anchor = Some((now, wall));
                wall
            }
        };
        let time = if time < self.last && self.last - time < REANCHOR {
            self.last
        } else {
            time
        };
        self.last = time;
        time
    }

    fn next(&mut self, since_epoch: Duration) -> Uuid {
        let now = since_epoch.as_secs() * 1000 + u64::from(since_epoch.subsec_millis());
        // One draw serves both: its high half is the id's random tail, its
        // low 41 bits a new millisecond's counter start.
        let random = self.random();
        if now > self.millis {
            self.millis = now;
            self.counter = random & (COUNTER_MAX >> 1);
        } else if self.counter < COUNTER_MAX {
            // The same millisecond, or the clock stepped back: count on from
            // the last id, so this thread's ids still increase.
            self.counter += 1;
        } else {
            // Unreachable within one real millisecond; if it happens, the
            // id's time runs ahead of the clock rather than repeat an id.
            self.millis += 1;
            self.counter = 0;
        }
        let high = (self.millis & 0xFFFF_FFFF_FFFF) << 16 | 0x7 << 12 | self.counter >> 30;
        let low = 0b10 << 62 | (self.counter & 0x3FFF_FFFF) << 32 | random >> 32;
        Uuid::from_u64_pair(high, low)
    }

    /// wyrand: a few instructions per number, good enough for ids that must
    /// differ, not for secrets.
    fn random(&mut self) -> u64 {
        if self.rng == 0 {
            // The low half of uuid's own v7 id: random bits from a
            // generator the operating system seeds.
            self.rng = Uuid::now_v7().as_u64_pair().1 | 1;
        }
        self.rng = self.rng.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.rng) * u128::from(self.rng ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    }

    fn date_time(&mut self, since_epoch: Duration) -> DateTime<Utc> {
        const DAY: u64 = 86_400;
        let secs = since_epoch.as_secs();
        let day = secs / DAY;
        if day != self.day {
            let Some(midnight) = DateTime::from_timestamp((day * DAY) as i64, 0) else {
                return DateTime::from_timestamp(secs as i64, since_epoch.subsec_nanos())
                    .unwrap_or_default();
            };
            self.date = midnight.date_naive();
            self.day = day;
        }
        let time = NaiveTime::from_num_seconds_from_midnight_opt(
            (secs % DAY) as u32,
            since_epoch.subsec_nanos(),
        )
        .unwrap_or_default();
        NaiveDateTime::new(self.date, time).and_utc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached midnight must give what chrono's own conversion gives,
    /// across day boundaries and in either direction.
    #[test]
    fn date_time_matches_chrono_across_days() {
        let mut ids = Ids::UNSEEDED;
        for secs in [
            0,
            86_399,
            86_400,
            1_700_000_000,
            1_699_999_999,
            4_102_444_800,
        ] {
            for nanos in [0, 999_999_999] {
                let since_epoch = Duration::new(secs, nanos);
                assert_eq!(
                    ids.date_time(since_epoch),
                    DateTime::from_timestamp(secs as i64, nanos).unwrap()
                );
            }
        }
    }

    /// Events dated by the cycle counter carry the wall-clock time: each one
    /// lies between clock reads taken just before and just after it, within
    /// a millisecond for the counter's drift, also after the thread slept
    /// past the re-anchoring interval.
    #[test]
    fn occurred_at_follows_the_wall_clock() {
        let slack = chrono::Duration::milliseconds(1);
        for round in 0..20 {
            let before = Utc::now();
            let metas: Vec<Meta> = (0..1000).map(|_| Meta::new("t", 1, "t")).collect();
            let after = Utc::now();
            for meta in &metas {
                assert!(
                    meta.occurred_at >= before - slack && meta.occurred_at <= after + slack,
                    "round {round}: {} not within {before}..{after}",
                    meta.occurred_at
                );
            }
            assert!(metas.windows(2).all(|w| w[0].id < w[1].id));
            std::thread::sleep(Duration::from_millis(round % 3));
        }
    }
}
