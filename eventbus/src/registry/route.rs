//! Routes: which subscriptions of a bus each event reaches, for the
//! registry file.
//!
//! The events and their protocols are known at compile time, the
//! subscriptions only once a bus is wired. Each subscription describes
//! itself in a [`Wiring`] when it starts, the bus hands them over as
//! [`Routes`], and this module only renders them. The registry sits below
//! the bus and the subscriptions, which use it, so it takes what they give
//! it rather than reaching up to them.

use super::EventInfo;
use std::any::TypeId;
use std::fmt::Write as _;

/// The running subscriptions of a bus, as the registry file shows them:
/// from `Routes::from(&bus)`, or pass `&bus` to
/// [`assert_fresh_with`](super::assert_fresh_with) or
/// [`Registry::render_with`](super::Registry::render_with).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    subscriptions: Vec<Wiring>,
}

/// How one subscription was wired, as it started: its name, mode, filter
/// (its own, completed by the consumer's interest, as it is applied), its
/// consumer, and the registered events the filter lets through.
#[derive(Debug, Clone)]
pub(crate) struct Wiring {
    pub(crate) name: String,
    pub(crate) mode: String,
    pub(crate) patterns: Vec<String>,
    pub(crate) protocols: Vec<&'static str>,
    pub(crate) consumer: Option<String>,
    /// Each event type the filter passes, with the filter's protocols it
    /// implements.
    pub(crate) reaches: Vec<(TypeId, Vec<&'static str>)>,
}

impl Routes {
    pub(crate) fn new(subscriptions: impl IntoIterator<Item = Wiring>) -> Self {
        let mut subscriptions: Vec<Wiring> = subscriptions.into_iter().collect();
        subscriptions.sort_by(|a, b| a.name.cmp(&b.name));
        Routes { subscriptions }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
    }

    /// Each subscription's wiring, by name.
    #[cfg_attr(not(feature = "dashboard"), allow(dead_code))]
    pub(crate) fn wirings(&self) -> &[Wiring] {
        &self.subscriptions
    }

    /// `subscription analytics mode=sequential protocols=Trackable consumer=..`,
    /// one line per subscription.
    pub(crate) fn render_subscriptions(&self, out: &mut String) {
        for w in &self.subscriptions {
            let _ = write!(out, "subscription {} mode={}", w.name, w.mode);
            if w.patterns.is_empty() && w.protocols.is_empty() {
                out.push_str(" events=*");
            }
            if !w.patterns.is_empty() {
                let _ = write!(out, " events={}", w.patterns.join(","));
            }
            if !w.protocols.is_empty() {
                let _ = write!(out, " protocols={}", w.protocols.join(","));
            }
            if let Some(consumer) = &w.consumer {
                let _ = write!(out, " consumer={consumer}");
            }
            out.push('\n');
        }
    }

    /// `route user.created v1 -> analytics via Trackable
    /// consumer=ProtocolConsumer<Trackable>`, one line per subscription the
    /// event reaches; `via` names the protocols of the filter that let it
    /// through, `consumer` the side effect, when its consumer describes
    /// itself.
    pub(crate) fn render_routes(&self, event: &EventInfo, out: &mut String) {
        for w in &self.subscriptions {
            let Some((_, via)) = w.reaches.iter().find(|(ty, _)| *ty == event.type_id()) else {
                continue;
            };
            let _ = write!(
                out,
                "route {} v{} -> {}",
                event.name(),
                event.version(),
                w.name
            );
            if !via.is_empty() {
                let _ = write!(out, " via {}", via.join(","));
            }
            // What the event becomes there: `Webhooks`, `email::Mailer`,
            // `ProtocolConsumer<Trackable>`, when the consumer says.
            if let Some(consumer) = &w.consumer {
                let _ = write!(out, " consumer={consumer}");
            }
            out.push('\n');
        }
    }
}
