//! The registry as a committed file: its lines, and the check that keeps it
//! current.

use eventbus::registry::{self, CheckError};
use eventbus::{Notifiable, Notification, event, register};

/// An invoice was paid in full.
///
/// This second paragraph is not in the registry.
#[event(name = "invoice.paid", version = 2)]
pub struct InvoicePaid {
    pub invoice_id: u64,
    pub lines: Vec<(String, u64)>,
    pub note: Option<String>,
}

#[event]
pub struct InvoiceVoided {
    pub invoice_id: u64,
}

#[register]
impl Notifiable for InvoicePaid {
    fn notifications(&self) -> Vec<Notification> {
        Vec::new()
    }
}

#[test]
fn registry_lists_events_fields_docs_and_protocols() {
    let registry = eventbus::registry();
    let names: Vec<_> = registry
        .events()
        .iter()
        .map(|e| (e.name(), e.version()))
        .collect();
    // With the `webhooks` feature on, eventbus's own event is registered
    // too: a service can subscribe to it.
    assert_eq!(
        names,
        [
            ("invoice.paid", 2),
            ("invoice.voided", 1),
            ("webhook.endpoint_disabled", 1)
        ]
    );

    let paid = registry.event("invoice.paid", 2).unwrap();
    assert_eq!(paid.type_path(), "registry_file::InvoicePaid");
    assert_eq!(paid.file(), "tests/registry_file.rs");
    assert_eq!(paid.line(), 11);
    assert_eq!(paid.doc(), "An invoice was paid in full.");
    let fields: Vec<_> = paid.fields().iter().map(|f| (f.name(), f.ty())).collect();
    assert_eq!(
        fields,
        [
            ("invoice_id", "u64"),
            ("lines", "Vec<(String, u64)>"),
            ("note", "Option<String>")
        ]
    );
    let protocols = paid.protocols();
    assert_eq!(protocols.len(), 1);
    assert_eq!(protocols[0].protocol(), "Notifiable");
    assert_eq!(
        (protocols[0].file(), protocols[0].line()),
        ("tests/registry_file.rs", 23)
    );
    assert!(registry.event("invoice.paid", 1).is_none());
}

#[test]
fn every_line_about_an_event_names_it() {
    let text = eventbus::registry().render();
    let paid: Vec<_> = text
        .lines()
        .filter(|l| l.contains("invoice.paid"))
        .collect();
    assert_eq!(
        paid,
        [
            "event invoice.paid v2 type=registry_file::InvoicePaid at=tests/registry_file.rs:11 doc=\"An invoice was paid in full.\"",
            "field invoice.paid v2 invoice_id: u64",
            "field invoice.paid v2 lines: Vec<(String, u64)>",
            "field invoice.paid v2 note: Option<String>",
            "impl invoice.paid v2 Notifiable at=tests/registry_file.rs:23",
        ]
    );
    assert!(text.contains(
        "\nevent invoice.voided v1 type=registry_file::InvoiceVoided at=tests/registry_file.rs:18\n"
    ));
    assert!(text.contains("\nprotocol Trackable fn=track output=Track path="));
}

#[test]
fn a_missing_file_says_how_to_create_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.registry");
    let err = registry::compare(&path).unwrap_err();
    assert!(matches!(err, CheckError::Missing { .. }));
    assert!(
        err.to_string()
            .contains("does not exist; run the test with EVENTBUS_BLESS=1")
    );
}

#[test]
fn bless_writes_the_file_and_compare_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/events.registry");
    registry::bless(&path).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        eventbus::registry().render()
    );
    registry::compare(&path).unwrap();
    registry::check(&path).unwrap();
}

#[test]
fn a_stale_file_fails_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.registry");
    let stale = eventbus::registry()
        .render()
        .replace("field invoice.paid v2 note: Option<String>\n", "")
        .replace("InvoiceVoided", "InvoiceCancelled");
    std::fs::write(&path, stale).unwrap();

    let err = registry::compare(&path).unwrap_err();
    let CheckError::Stale { diff, .. } = &err else {
        panic!("expected a stale file, got {err:?}");
    };
    assert!(
        diff.contains("+field invoice.paid v2 note: Option<String>"),
        "{diff}"
    );
    assert!(
        diff.contains("-event invoice.voided v1 type=registry_file::InvoiceCancelled"),
        "{diff}"
    );
    assert!(
        diff.contains("+event invoice.voided v1 type=registry_file::InvoiceVoided"),
        "{diff}"
    );
    let message = err.to_string();
    assert!(message.contains("is stale; run the test with EVENTBUS_BLESS=1 to rewrite it"));

    let panic = std::panic::catch_unwind(|| registry::assert_fresh(&path)).unwrap_err();
    let panic = panic.downcast_ref::<String>().unwrap();
    assert!(panic.contains("+field invoice.paid v2 note"), "{panic}");
}

#[test]
fn windows_line_endings_are_not_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.registry");
    std::fs::write(&path, eventbus::registry().render().replace('\n', "\r\n")).unwrap();
    registry::compare(&path).unwrap();
}

#[test]
fn an_unreadable_path_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be.
    let err = registry::compare(dir.path()).unwrap_err();
    assert!(matches!(err, CheckError::Io { .. }), "{err:?}");
    assert!(err.to_string().starts_with("cannot access registry file"));
}
