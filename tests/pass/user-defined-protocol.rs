use eventbus::{event, protocol, register};

#[event]
struct PasswordChanged {
    user_id: u64,
}

/// Writes a line to the audit log.
#[protocol]
pub trait Auditable {
    /// The audit line.
    fn audit(&self) -> String;
}

#[register]
impl Auditable for PasswordChanged {
    fn audit(&self) -> String {
        format!("{} changed password", self.user_id)
    }
}

fn main() {
    let line = eventbus::dispatch::<dyn Auditable>(&PasswordChanged::new(3));
    assert_eq!(line.as_deref(), Some("3 changed password"));
}
