//! The audit log's sink: stdout, standing in for an append-only store.

use eventbus::{BoxError, Sink};

/// Prints each payload with a label.
pub struct Stdout(pub &'static str);

impl<T: std::fmt::Debug + Send + Sync + 'static> Sink<T> for Stdout {
    async fn write(&self, batch: &[T]) -> Result<(), BoxError> {
        for item in batch {
            println!("  [{}] {item:?}", self.0);
        }
        Ok(())
    }
}
