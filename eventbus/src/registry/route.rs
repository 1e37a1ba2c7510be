//! Routes: which subscriptions of a bus each event reaches, for the
//! registry file. The events and their protocols are known at compile time;
//! the subscriptions only once a bus is wired, so each subscription records
//! how it was wired when it starts, and [`Registry::render_with`] reads it
//! back.

use super::{EventInfo, Registry};
use crate::bus::Bus;
use crate::consumer::Consumer;
use crate::subscription::{Filter, Mode};
use std::fmt::Write as _;

/// How a subscription was wired: recorded by
/// [`SubscriptionBuilder::start`](crate::SubscriptionBuilder::start), so the
/// registry can tell which events reach it and through what.
#[derive(Debug, Clone)]
pub(crate) struct Wiring {
    /// The filter in effect: the subscription's own, completed by the
    /// consumer's interest, as the runner applies it.
    filter: Filter,
    mode: String,
    consumer: Option<String>,
}

impl Wiring {
    pub(crate) fn new(filter: &Filter, consumer: &impl Consumer, mode: &Mode) -> Self {
        let mode = match mode {
            Mode::Sequential => "sequential".to_owned(),
            Mode::Concurrent(n) => format!("concurrent({n})"),
            Mode::Partitioned { lanes, .. } => format!("partitioned({lanes})"),
        };
        Wiring {
            filter: filter.clone().or_interest(consumer.interest()),
            mode,
            consumer: consumer.describe(),
        }
    }
}

/// One running subscription, by name.
pub(crate) struct Wired {
    pub(crate) name: String,
    pub(crate) wiring: Wiring,
}

impl Wired {
    pub(crate) fn of(bus: &Bus) -> Vec<Wired> {
        bus.wirings()
            .into_iter()
            .map(|(name, wiring)| Wired { name, wiring })
            .collect()
    }

    /// `subscription analytics mode=sequential protocols=Trackable consumer=..`
    pub(crate) fn render(&self, out: &mut String) {
        let Wiring {
            filter,
            mode,
            consumer,
        } = &self.wiring;
        let _ = write!(out, "subscription {} mode={mode}", self.name);
        let patterns = filter.patterns();
        let protocols: Vec<&str> = filter.protocols().iter().map(|(_, n)| *n).collect();
        if patterns.is_empty() && protocols.is_empty() {
            out.push_str(" events=*");
        }
        if !patterns.is_empty() {
            let _ = write!(out, " events={}", patterns.join(","));
        }
        if !protocols.is_empty() {
            let _ = write!(out, " protocols={}", protocols.join(","));
        }
        if let Some(consumer) = consumer {
            let _ = write!(out, " consumer={consumer}");
        }
        out.push('\n');
    }

    /// `route user.created v1 -> analytics via Trackable`, if the event
    /// reaches this subscription: `via` names the protocols of the filter
    /// that let it through.
    pub(crate) fn render_route(&self, registry: &Registry, event: &EventInfo, out: &mut String) {
        let filter = &self.wiring.filter;
        if !filter.passes(event.name(), event.type_id()) {
            return;
        }
        let _ = write!(
            out,
            "route {} v{} -> {}",
            event.name(),
            event.version(),
            self.name
        );
        let via: Vec<&str> = filter
            .protocols()
            .iter()
            .filter(|(protocol, _)| registry.impl_of(*protocol, event.type_id()).is_some())
            .map(|(_, name)| *name)
            .collect();
        if !via.is_empty() {
            let _ = write!(out, " via {}", via.join(","));
        }
        out.push('\n');
    }
}
