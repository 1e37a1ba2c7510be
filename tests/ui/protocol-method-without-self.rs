#[eventbus::protocol]
trait Auditable {
    fn audit(line: &str) -> String;
}

fn main() {}
