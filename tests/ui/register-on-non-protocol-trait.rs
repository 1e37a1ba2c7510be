use std::fmt;

#[eventbus::event]
struct UserCreated {
    user_id: u64,
}

#[eventbus::register]
impl fmt::Display for UserCreated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user {}", self.user_id)
    }
}

fn main() {}
