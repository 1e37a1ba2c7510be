//! Test support: check that every consumer can consume every message.
//!
//! [`exercise`] runs sample events through every protocol registered for
//! their types and through a JSON round trip, catching panics, and fails when
//! a registered event has no sample. Adding an event without adding a sample
//! to that test is then a failing test, not a surprise in production.

mod exercise;

pub use self::exercise::{Exercise, ExerciseError, Failure, assert_exercise, exercise};
