#[eventbus::event]
struct UserCreated(u64, String);

fn main() {}
