#[eventbus::event]
struct UserCreated {
    user_id: u64,
    meta: String,
}

fn main() {}
