use eventbus::event;

#[event(key = order)]
pub struct OrderPaid {
    pub order_id: u64,
}

fn main() {}
