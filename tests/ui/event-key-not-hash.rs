use eventbus::event;

#[event(key = amount)]
pub struct OrderPaid {
    pub order_id: u64,
    pub amount: f64,
}

fn main() {}
