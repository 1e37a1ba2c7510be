#[eventbus::event]
struct Pinged {}

fn main() {
    let _ = Pinged::new();
}
