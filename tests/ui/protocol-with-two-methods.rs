#[eventbus::protocol]
trait Auditable {
    fn audit(&self) -> String;
    fn severity(&self) -> u8;
}

fn main() {}
