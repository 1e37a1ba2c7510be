//! Two event types under one name and version are an error that names both
//! definitions: stored events could no longer be read back unambiguously.

use eventbus::registry::CheckError;

mod billing {
    #[eventbus::event(name = "payment.received")]
    pub struct PaymentReceived {
        pub cents: u64,
    }
}

mod ledger {
    #[eventbus::event(name = "payment.received")]
    pub struct PaymentReceived {
        pub amount: u64,
    }

    /// A later version under the same name is fine.
    #[eventbus::event(name = "payment.received", version = 2)]
    pub struct PaymentReceivedV2 {
        pub amount: u64,
    }
}

#[test]
fn duplicates_name_every_location() {
    let dup = eventbus::registry().validate().unwrap_err();
    assert_eq!(dup.name, "payment.received");
    assert_eq!(dup.version, 1);
    assert_eq!(
        dup.locations,
        [
            "tests/registry_duplicates.rs:8",
            "tests/registry_duplicates.rs:15"
        ]
    );
    assert_eq!(
        dup.to_string(),
        "event `payment.received` v1 is defined more than once, at tests/registry_duplicates.rs:8 \
         and tests/registry_duplicates.rs:15; give each type its own `#[event(name = \"...\")]` or version"
    );
}

#[test]
fn the_file_check_refuses_to_bless_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.registry");
    let err = eventbus::registry::bless(&path).unwrap_err();
    assert!(matches!(err, CheckError::Duplicate(_)));
    assert!(!path.exists(), "nothing is written");
    let _ = (
        billing::PaymentReceived::new(1),
        ledger::PaymentReceived::new(1),
        ledger::PaymentReceivedV2::new(1),
    );
}
