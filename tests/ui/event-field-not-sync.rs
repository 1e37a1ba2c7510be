use std::cell::Cell;

#[eventbus::event]
struct CounterBumped {
    count: Cell<u64>,
}

fn main() {}
