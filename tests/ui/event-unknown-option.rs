#[eventbus::event(name = "user.created", topic = "users")]
struct UserCreated {
    user_id: u64,
}

fn main() {}
