// Every mistake is reported in one build.
#[eventbus::event(name = "User", version = 0, colour = "red")]
struct UserCreated {
    meta: u64,
}

fn main() {}
