#[eventbus::event]
struct Changed<T> {
    value: T,
}

fn main() {}
