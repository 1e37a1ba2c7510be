//! The cases, each written once against a [`Harness`], and what each needs
//! of a backend. A case runs on every backend whose declared capabilities
//! cover its needs; on the others its trial is ignored with the reason.
//!
//! Processes sharing one subscription are buses of their own on one
//! harness (`shared.rs`); a process killed mid-stream needs a real child
//! process, and is in the backend's own tests (`tests/postgres_outbox.rs`,
//! `tests/nats_faults.rs`).

mod delivery;
mod failure;
mod lifecycle;
mod shared;

use crate::harness::Harness;
use eventbus::Capabilities;
use futures_util::future::LocalBoxFuture;

/// A capability a case can need, as [`Capabilities`] declares it. The
/// other (`schedules_retries`) joins when a case needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capability {
    Durable,
    Ordered,
    Shared,
}

impl Capability {
    pub(crate) fn offered_by(self, capabilities: &Capabilities) -> bool {
        match self {
            Capability::Durable => capabilities.durable,
            Capability::Ordered => capabilities.ordered,
            Capability::Shared => capabilities.shared_subscriptions,
        }
    }

    /// As the field of [`Capabilities`] is named.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Capability::Durable => "durable",
            Capability::Ordered => "ordered",
            Capability::Shared => "shared_subscriptions",
        }
    }
}

/// Runs a case on one harness; a failed assertion panics.
pub(crate) type Run = for<'a> fn(&'a dyn Harness) -> LocalBoxFuture<'a, ()>;

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) needs: &'static [Capability],
    pub(crate) run: Run,
}

impl Case {
    /// The capabilities this case needs and `capabilities` lacks.
    pub(crate) fn missing(&self, capabilities: &Capabilities) -> Vec<Capability> {
        self.needs
            .iter()
            .copied()
            .filter(|c| !c.offered_by(capabilities))
            .collect()
    }
}

/// `case!(name)` or `case!(name, needs Durable, Ordered)`: the case is the
/// async fn `name(&dyn Harness)` in scope.
macro_rules! case {
    ($name:ident $(, needs $($need:ident),+)?) => {
        Case {
            name: stringify!($name),
            needs: &[$($(Capability::$need),+)?],
            run: |harness| Box::pin($name(harness)),
        }
    };
}

/// Every case, in the order they are listed.
pub(crate) fn all() -> Vec<Case> {
    use self::delivery::*;
    use self::failure::*;
    use self::lifecycle::*;
    use self::shared::*;
    vec![
        case!(publish_and_subscribe),
        case!(broadcast_to_every_subscription),
        case!(sequential_mode_keeps_log_order, needs Ordered),
        case!(partitioned_mode_keeps_order_per_key, needs Ordered),
        case!(concurrent_producers_each_event_handled_once),
        case!(late_subscription_from_now_gets_only_new_events),
        case!(late_subscription_from_beginning_gets_the_history, needs Durable),
        case!(retry_after_a_failure_counts_the_attempt),
        case!(retry_exhaustion_dead_letters),
        case!(a_permanent_failure_dead_letters_at_once),
        case!(retry_attempts_survive_close_and_reopen, needs Durable),
        case!(replay_from_the_dead_letter_store),
        case!(replay_after_close_and_reopen, needs Durable),
        case!(close_and_reopen_loses_nothing, needs Durable),
        case!(shutdown_mid_stream_accounts_for_every_accepted_event),
        case!(shutdowns_racing_notifies_count_every_accepted_event),
        case!(undecodable_event_is_quarantined_and_the_stream_goes_on, needs Durable),
        case!(pause_and_resume),
        case!(shutdown_while_paused_keeps_its_events, needs Durable),
        case!(a_shared_subscription_handles_each_event_once, needs Shared),
        case!(a_shared_subscription_splits_the_work, needs Shared),
        case!(a_shared_subscription_moves_on_when_its_holder_stops, needs Shared),
        case!(a_replay_of_a_shared_subscription_runs_once, needs Shared),
    ]
}
