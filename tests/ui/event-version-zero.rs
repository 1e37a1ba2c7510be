#[eventbus::event(version = 0)]
struct UserCreated {
    user_id: u64,
}

fn main() {}
