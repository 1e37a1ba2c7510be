use eventbus::{Track, Trackable};

#[derive(Debug, Clone)]
struct NotAnEvent {
    user_id: u64,
}

#[eventbus::register]
impl Trackable for NotAnEvent {
    fn track(&self) -> Track {
        unimplemented!("{}", self.user_id)
    }
}

fn main() {}
