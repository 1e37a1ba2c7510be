#[eventbus::event]
struct UserCreated {
    user_id: u64,
}

#[eventbus::register]
impl UserCreated {
    fn id(&self) -> u64 {
        self.user_id
    }
}

fn main() {}
