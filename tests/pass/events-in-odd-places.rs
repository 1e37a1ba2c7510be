//! Events where users put them: inside a function, in a private module with
//! restricted visibility, with raw identifiers, with serde derived by hand,
//! and with fields serde handles itself.

mod private {
    #[eventbus::event]
    pub(crate) struct Archived {
        pub(crate) id: u64,
    }
}

#[eventbus::event]
#[derive(serde::Serialize, serde::Deserialize)]
struct SerdeByHand {
    id: u64,
}

struct NotSerializable;

impl Clone for NotSerializable {
    fn clone(&self) -> Self {
        NotSerializable
    }
}

impl std::fmt::Debug for NotSerializable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NotSerializable")
    }
}

impl Default for NotSerializable {
    fn default() -> Self {
        NotSerializable
    }
}

#[eventbus::event]
struct WithSkippedField {
    id: u64,
    #[serde(skip)]
    cache: NotSerializable,
}

#[eventbus::event]
struct r#Match {
    r#type: String,
}

fn main() {
    #[eventbus::event]
    struct LocalEvent {
        n: u32,
    }
    let _ = LocalEvent::new(1);
    let _ = private::Archived::new(1);
    let _ = SerdeByHand::new(1);
    let _ = WithSkippedField::new(1, NotSerializable);
    let m = r#Match::new("x".into());
    assert_eq!(m.meta.name, "match");
    let paths: Vec<_> = eventbus::registry().events().iter().map(|e| e.type_path()).collect();
    assert!(paths.iter().any(|p| p.ends_with("::Match")), "{paths:?}");
}
