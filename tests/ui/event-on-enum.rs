#[eventbus::event]
enum UserChanged {
    Created { user_id: u64 },
    Deleted { user_id: u64 },
}

fn main() {}
