use crate::backend::Interest;
use crate::event::AnyEvent;
use crate::protocol::Protocol;
use crate::registry::{Wiring, registry};
use std::any::TypeId;
use std::fmt;

/// Which events a subscription receives. Events it filters out never count
/// against its demand.
///
/// A filter with event patterns passes events whose name matches one of
/// them; a filter with protocols passes events that implement one of them;
/// with both, an event must pass both. The empty filter passes everything.
#[derive(Clone, Default)]
pub struct Filter {
    patterns: Vec<Pattern>,
    protocols: Vec<(TypeId, &'static str)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
}

/// Returned when an event pattern has a `*` anywhere but at its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "event pattern `{0}` is not supported; use an exact name like `user.created`, a prefix like `user.*`, or `*`"
)]
pub struct PatternError(pub String);

impl Filter {
    /// Passes every event.
    pub fn all() -> Self {
        Filter::default()
    }

    /// Also passes events whose name matches `pattern`: an exact name
    /// (`user.created`), a prefix ending in `*` (`user.*`), or `*`.
    ///
    /// # Errors
    ///
    /// [`PatternError`] for a `*` anywhere but at the end.
    pub fn event(mut self, pattern: &str) -> Result<Self, PatternError> {
        let parsed = match pattern.find('*') {
            None => Pattern::Exact(pattern.to_owned()),
            Some(i) if i + 1 == pattern.len() => {
                if i == 0 {
                    Pattern::Any
                } else {
                    Pattern::Prefix(pattern[..i].to_owned())
                }
            }
            Some(_) => return Err(PatternError(pattern.to_owned())),
        };
        if pattern.is_empty() {
            return Err(PatternError(String::new()));
        }
        self.patterns.push(parsed);
        Ok(self)
    }

    /// Also passes events that implement protocol `P`.
    #[must_use]
    pub fn protocol<P: ?Sized + Protocol>(mut self) -> Self {
        self.protocols.push((P::type_id(), P::NAME));
        self
    }

    /// Whether the filter passes `event`.
    pub fn matches(&self, event: &AnyEvent) -> bool {
        self.matches_name(event.name()) && self.matches_type(event.event_type_id())
    }

    fn matches_name(&self, name: &str) -> bool {
        self.patterns.is_empty()
            || self.patterns.iter().any(|p| match p {
                Pattern::Any => true,
                Pattern::Exact(n) => n == name,
                Pattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
            })
    }

    fn matches_type(&self, event: TypeId) -> bool {
        self.protocols.is_empty()
            || self
                .protocols
                .iter()
                .any(|(protocol, _)| registry().impl_of(*protocol, event).is_some())
    }

    /// How a subscription with this filter is wired, for the registry's
    /// route lines: with the registered events it passes, found now, since
    /// every event registers before `main`.
    pub(crate) fn wiring(
        &self,
        name: &str,
        mode: &impl fmt::Display,
        consumer: Option<String>,
    ) -> Wiring {
        let reaches = registry()
            .events()
            .iter()
            .filter(|e| self.matches_name(e.name()) && self.matches_type(e.type_id()))
            .map(|e| {
                let via = self
                    .protocols
                    .iter()
                    .filter(|(protocol, _)| registry().impl_of(*protocol, e.type_id()).is_some());
                (e.type_id(), via.map(|(_, n)| *n).collect())
            })
            .collect();
        Wiring {
            name: name.to_owned(),
            mode: mode.to_string(),
            patterns: self.patterns(),
            protocols: self.protocols.iter().map(|(_, n)| *n).collect(),
            consumer,
            reaches,
        }
    }

    /// The event patterns as written: `user.created`, `user.*`, `*`.
    fn patterns(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| match p {
                Pattern::Any => "*".to_owned(),
                Pattern::Exact(n) => n.clone(),
                Pattern::Prefix(p) => format!("{p}*"),
            })
            .collect()
    }

    /// The events this filter passes, as a backend can filter them on its
    /// side: by name, with protocols resolved to the registered events
    /// that implement them. Coarser than the filter where names cannot
    /// say it (a prefix that does not end at a `.`).
    pub(crate) fn interest(&self) -> Interest {
        if self.is_all() {
            return Interest::All;
        }
        let mut names: Vec<String> = if self.protocols.is_empty() {
            let mut names = Vec::with_capacity(self.patterns.len());
            for pattern in &self.patterns {
                match pattern {
                    Pattern::Exact(name) => names.push(name.clone()),
                    Pattern::Prefix(prefix) if prefix.ends_with('.') => {
                        names.push(format!("{prefix}*"));
                    }
                    Pattern::Any | Pattern::Prefix(_) => return Interest::All,
                }
            }
            names
        } else {
            registry()
                .events()
                .iter()
                .filter(|e| self.matches_name(e.name()) && self.matches_type(e.type_id()))
                .map(|e| e.name().to_owned())
                .collect()
        };
        names.sort();
        names.dedup();
        Interest::Names(names)
    }

    pub(crate) fn is_all(&self) -> bool {
        self.patterns.is_empty() && self.protocols.is_empty()
    }

    /// Fills in what the user's filter leaves open from the consumer's own
    /// interest: a protocol consumer wants only events of its protocol.
    pub(crate) fn or_interest(mut self, interest: Filter) -> Filter {
        if self.patterns.is_empty() {
            self.patterns = interest.patterns;
        }
        if self.protocols.is_empty() {
            self.protocols = interest.protocols;
        }
        self
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let patterns = self.patterns();
        let protocols: Vec<&str> = self.protocols.iter().map(|(_, n)| *n).collect();
        f.debug_struct("Filter")
            .field("events", &patterns)
            .field("protocols", &protocols)
            .finish()
    }
}

/// A filter with its protocol answers remembered per event type, so the
/// runner pays for a registry lookup once per type, not once per event.
/// Names are matched per event: `meta.name` belongs to each event.
pub(crate) struct CachedFilter {
    filter: Filter,
    seen: Vec<(TypeId, bool)>,
}

impl CachedFilter {
    pub(crate) fn new(filter: Filter) -> Self {
        CachedFilter {
            filter,
            seen: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn matches(&mut self, event: &AnyEvent) -> bool {
        if self.filter.is_all() {
            return true;
        }
        if !self.filter.matches_name(event.name()) {
            return false;
        }
        let ty = event.event_type_id();
        if let Some((_, pass)) = self.seen.iter().find(|(t, _)| *t == ty) {
            return *pass;
        }
        let pass = self.filter.matches_type(ty);
        self.seen.push((ty, pass));
        pass
    }
}
