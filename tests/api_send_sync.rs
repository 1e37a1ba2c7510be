//! Public handles can be shared across tasks and threads.

fn is_send_sync_clone<T: Send + Sync + Clone>() {}
fn is_send_sync<T: Send + Sync>() {}

#[test]
fn handles_are_send_sync_and_clone() {
    is_send_sync_clone::<eventbus::Bus>();
    is_send_sync_clone::<eventbus::Subscription>();
    is_send_sync_clone::<eventbus::DeadLetters>();
    is_send_sync_clone::<eventbus::AnyEvent>();
    is_send_sync_clone::<eventbus::testing::Recorder>();
    is_send_sync_clone::<eventbus::Batcher<eventbus::Track>>();
    is_send_sync_clone::<eventbus::Retry>();
    is_send_sync_clone::<eventbus::Filter>();
    is_send_sync::<eventbus::MemoryLog>();
    is_send_sync_clone::<eventbus::SqliteLog>();
    is_send_sync::<eventbus::NotifyError>();
    is_send_sync::<eventbus::SubscribeError>();
}

#[test]
fn notify_futures_are_send() {
    fn send<F: Send>(_: F) {}
    let bus = eventbus::Bus::builder().build().unwrap();
    #[eventbus::event]
    struct Pinged {}
    send(bus.notify(Pinged::new()));
    send(bus.drain());
    send(bus.shutdown());
}
