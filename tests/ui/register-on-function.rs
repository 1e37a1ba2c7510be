#[eventbus::register]
fn track() {}

fn main() {}
