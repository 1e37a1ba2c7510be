//! Test support: record what consumers received, and check that every
//! consumer can consume every message.
//!
//! [`Recorder`] is a consumer that remembers what it handled, with
//! assertions on event types and fields; with
//! [`Bus::drain`](crate::Bus::drain) it makes integration tests
//! deterministic, with no sleeps. [`exercise`] runs sample events through every protocol registered for
//! their types and through a JSON round trip, catching panics, and fails when
//! a registered event has no sample. Adding an event without adding a sample
//! to that test is then a failing test, not a surprise in production.

mod exercise;
mod recorder;

pub use self::exercise::{Exercise, ExerciseError, Failure, assert_exercise, exercise};
pub use self::recorder::Recorder;
