use eventbus::Event;

/// Every option, and the user's own attributes, derives and field docs.
#[eventbus::event(name = "user.profile_updated-v2", version = 7)]
#[derive(PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProfileUpdated {
    /// The user.
    pub user_id: u64,
    #[serde(default)]
    pub display_name: Option<String>,
    r#type: String,
}

fn main() {
    let e = ProfileUpdated::new(1, None, "x".into());
    assert_eq!(ProfileUpdated::NAME, "user.profile_updated-v2");
    assert_eq!(e.meta().version, 7);
    assert_eq!(e.r#type, "x");
    let json = serde_json::to_value(&e).unwrap();
    assert!(json.get("userId").is_some());
}
