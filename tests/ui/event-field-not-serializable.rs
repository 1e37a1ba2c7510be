struct Connection;

#[eventbus::event]
struct UserCreated {
    user_id: u64,
    connection: Connection,
}

fn main() {}
