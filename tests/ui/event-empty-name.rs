#[eventbus::event(name = "")]
struct UserCreated {
    user_id: u64,
}

fn main() {}
