#[eventbus::protocol]
trait Auditable {
    fn audit(&self);
}

fn main() {}
