//! Where the side effects go in this example: JSON-lines files standing in
//! for an analytics API and customers' webhook endpoints, and stdout
//! standing in for an email provider and the audit log.

use eventbus::{BoxError, Sink};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// Appends each payload as one JSON line to a file.
pub struct JsonLines {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl JsonLines {
    pub fn create(path: PathBuf) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(JsonLines {
            path,
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl<T: Serialize + Send + Sync + 'static> Sink<T> for JsonLines {
    async fn write(&self, batch: &[T]) -> Result<(), BoxError> {
        let mut out = Vec::new();
        for item in batch {
            serde_json::to_writer(&mut out, item)?;
            out.push(b'\n');
        }
        let mut file = self.file.lock().map_err(|_| "file lock poisoned")?;
        file.write_all(&out)?;
        file.flush()?;
        println!(
            "  [{}] wrote a batch of {}",
            self.path.display(),
            batch.len()
        );
        Ok(())
    }
}

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

/// Prints each email, push or text message as a provider would send it.
pub struct Outbox;

impl Sink<Vec<eventbus::Notification>> for Outbox {
    async fn write(&self, batch: &[Vec<eventbus::Notification>]) -> Result<(), BoxError> {
        for note in batch.iter().flatten() {
            println!(
                "  [{}] to {}: {}",
                note.channel, note.recipient, note.template
            );
        }
        Ok(())
    }
}

/// A customer endpoint that takes its time to answer.
pub struct SlowEndpoint {
    inner: JsonLines,
    delay: std::time::Duration,
}

impl SlowEndpoint {
    pub fn new(inner: JsonLines, delay: std::time::Duration) -> Self {
        SlowEndpoint { inner, delay }
    }

    pub fn path(&self) -> &std::path::Path {
        self.inner.path()
    }
}

impl<T: Serialize + Send + Sync + 'static> Sink<T> for SlowEndpoint {
    async fn write(&self, batch: &[T]) -> Result<(), BoxError> {
        tokio::time::sleep(self.delay).await;
        self.inner.write(batch).await
    }
}
