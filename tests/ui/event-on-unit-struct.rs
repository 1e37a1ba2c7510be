#[eventbus::event]
struct CacheCleared;

fn main() {}
