use eventbus::{Track, Trackable};

#[eventbus::event]
struct UserCreated {
    user_id: u64,
}

impl Trackable for UserCreated {
    fn track(&self) -> Track {
        Track::new(self, self.user_id)
    }
}

fn main() {}
