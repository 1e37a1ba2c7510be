fn upcast(_from: u32, json: eventbus::Value) -> Result<eventbus::Value, eventbus::BoxError> {
    Ok(json)
}

#[eventbus::event(upcast = upcast)]
struct OrderPlaced {
    order_id: u64,
}

fn main() {}
