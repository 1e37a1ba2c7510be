/// A user signed up.
#[derive(Debug, Clone)]
#[eventbus::event]
struct UserCreated {
    user_id: u64,
}

fn main() {}
