//! Every expansion compiles without a single warning, under the strictest
//! lints a user might set, as serde's `test_gen.rs` does for its derives.
#![deny(warnings, missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
#![allow(clippy::missing_panics_doc, reason = "tests unwrap")]

use eventbus::{Event, Track, Trackable, event, protocol, register};

/// The smallest event.
#[event]
pub struct Pinged {}

/// Every option, many fields (more than clippy's argument limit), user
/// attributes and derives.
#[event(name = "order.shipped-late_v2", version = 2)]
#[derive(PartialEq)]
pub struct OrderShipped {
    /// One.
    pub a: u64,
    /// Two.
    pub b: u64,
    /// Three.
    pub c: u64,
    /// Four.
    pub d: u64,
    /// Five.
    pub e: u64,
    /// Six.
    pub f: u64,
    /// Seven.
    pub g: u64,
    /// Eight.
    pub h: Option<String>,
}

/// A protocol of this crate's own.
#[protocol]
pub trait Auditable {
    /// The audit line.
    fn audit(&self) -> String;
}

#[register]
impl Auditable for OrderShipped {
    fn audit(&self) -> String {
        format!("shipped {}", self.a)
    }
}

#[register]
impl Trackable for Pinged {
    fn track(&self) -> Track {
        Track::new(self, "system")
    }
}

#[test]
fn expansions_compile_cleanly() {
    let shipped = OrderShipped::new(1, 2, 3, 4, 5, 6, 7, None);
    assert_eq!(shipped.meta().name, "order.shipped-late_v2");
    assert_eq!(
        eventbus::dispatch::<dyn Auditable>(&shipped).unwrap(),
        "shipped 1"
    );
    assert!(eventbus::track(&Pinged::new()).is_some());
}
