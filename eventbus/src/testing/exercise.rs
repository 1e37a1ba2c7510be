use crate::event::AnyEvent;
use std::collections::BTreeSet;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What [`exercise`] ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Exercise {
    /// Samples run.
    pub samples: usize,
    /// Protocol calls made, one per sample and registered impl.
    pub calls: usize,
    /// Sample and protocol pairs with no impl: the no-op fallback.
    pub noops: usize,
}

/// One thing [`exercise`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// A registered event had no sample.
    NoSample {
        /// The event's name.
        name: String,
        /// Its version.
        version: u32,
    },
    /// A protocol panicked on a sample.
    Panicked {
        /// The event's name.
        event: String,
        /// The protocol's name.
        protocol: String,
        /// The panic message.
        message: String,
    },
    /// A sample did not survive a JSON round trip unchanged.
    RoundTrip {
        /// The event's name.
        event: String,
        /// What went wrong.
        reason: String,
    },
    /// Two event types share a name and version.
    Duplicate(crate::registry::DuplicateEvent),
    /// A sample's type is not in the registry.
    Unregistered {
        /// The sample's Rust type.
        type_name: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoSample { name, version } => write!(
                f,
                "event `{name}` v{version} has no sample; add one to the samples passed to `exercise`"
            ),
            Failure::Panicked {
                event,
                protocol,
                message,
            } => write!(f, "`{protocol}` panicked on `{event}`: {message}"),
            Failure::RoundTrip { event, reason } => {
                write!(f, "`{event}` does not survive a JSON round trip: {reason}")
            }
            Failure::Duplicate(dup) => dup.fmt(f),
            Failure::Unregistered { type_name } => {
                write!(f, "sample of type `{type_name}` is not a registered event")
            }
        }
    }
}

/// Returned by [`exercise`]: everything that failed, not only the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s) running every protocol on every event:\n{}", failures.len(), list(failures))]
pub struct ExerciseError {
    /// Every failure found.
    pub failures: Vec<Failure>,
    /// What ran, failures included.
    pub ran: Exercise,
}

fn list(failures: &[Failure]) -> String {
    failures
        .iter()
        .map(|f| format!("  - {f}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs every sample through a JSON round trip and through every protocol
/// registered for its type, and requires a sample for every registered event
/// (but those eventbus itself defines, which its own tests exercise).
///
/// Panics inside protocol methods are caught and reported, so one run lists
/// every broken pair.
///
/// # Errors
///
/// [`ExerciseError`] listing every [`Failure`].
///
/// # Examples
///
/// ```standalone_crate
/// use eventbus::{event, register, Track, Trackable};
///
/// #[event]
/// struct Signup {
///     user_id: u64,
/// }
///
/// #[register]
/// impl Trackable for Signup {
///     fn track(&self) -> Track {
///         Track::new(self, self.user_id)
///     }
/// }
///
/// let ran = eventbus::testing::exercise([Signup::new(1).into()]).unwrap();
/// assert_eq!(ran.calls, 1);
/// ```
pub fn exercise(samples: impl IntoIterator<Item = AnyEvent>) -> Result<Exercise, ExerciseError> {
    let registry = crate::registry::registry();
    let protocols = registry.protocols();
    let mut ran = Exercise::default();
    let mut failures = Vec::new();
    if let Err(dup) = registry.validate() {
        failures.push(Failure::Duplicate(dup));
    }
    let mut seen = BTreeSet::new();

    for sample in samples {
        ran.samples += 1;
        let Some(info) = registry.event_of_type(sample.event_type_id()) else {
            failures.push(Failure::Unregistered {
                type_name: sample.type_name().to_owned(),
            });
            continue;
        };
        seen.insert((info.name(), info.version()));

        match round_trip(&sample, info) {
            Ok(()) => {}
            Err(reason) => failures.push(Failure::RoundTrip {
                event: info.name().to_owned(),
                reason,
            }),
        }

        for imp in info.protocols() {
            ran.calls += 1;
            let entry = imp.entry();
            let any = sample.as_any();
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| entry.probe(any))) {
                failures.push(Failure::Panicked {
                    event: info.name().to_owned(),
                    protocol: imp.protocol().to_owned(),
                    message: crate::failure::panic_message(&*panic),
                });
            }
        }
        ran.noops += protocols.len().saturating_sub(info.protocols().len());
    }

    // Events of eventbus's own (such as `webhook.endpoint_disabled`) are
    // exercised by its own tests: a service's samples need not cover them.
    for info in registry.events() {
        let own = info.type_path().starts_with("eventbus::");
        if !own && !seen.contains(&(info.name(), info.version())) {
            failures.push(Failure::NoSample {
                name: info.name().to_owned(),
                version: info.version(),
            });
        }
    }

    if failures.is_empty() {
        Ok(ran)
    } else {
        Err(ExerciseError { failures, ran })
    }
}

/// [`exercise`] for a test: panics with every failure listed.
///
/// # Panics
///
/// Whenever [`exercise`] returns an error.
#[track_caller]
pub fn assert_exercise(samples: impl IntoIterator<Item = AnyEvent>) -> Exercise {
    match exercise(samples) {
        Ok(ran) => ran,
        Err(err) => panic!("{err}"),
    }
}

fn round_trip(sample: &AnyEvent, info: &crate::registry::EventInfo) -> Result<(), String> {
    let bytes = sample.to_json_bytes().map_err(|e| e.to_string())?;
    let back = info
        .decode(&bytes)
        .map_err(|e| crate::failure::error_chain(&e).join(": "))?;
    let before = sample.to_json().map_err(|e| e.to_string())?;
    let after = back.to_json().map_err(|e| e.to_string())?;
    if before == after {
        Ok(())
    } else {
        Err(format!("wrote {before}, read back {after}"))
    }
}
