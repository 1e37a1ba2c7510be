#[eventbus::event(name = "User Created")]
struct UserCreated {
    user_id: u64,
}

fn main() {}
