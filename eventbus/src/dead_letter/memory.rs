//! The default dead-letter store: in memory, for this process only.

use super::{DeadLetter, DeadLetterPage, DeadLetterQuery, DeadLetterStore};
use crate::log::error::LogError;
use futures_util::future::{BoxFuture, ready};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub(crate) struct MemoryDeadLetters {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last_id: u64,
    letters: BTreeMap<u64, DeadLetter>,
}

impl MemoryDeadLetters {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("dead letters lock")
    }
}

impl DeadLetterStore for MemoryDeadLetters {
    fn insert<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<u64, LogError>> {
        let mut inner = self.inner();
        inner.last_id += 1;
        let id = inner.last_id;
        let mut letter = letter.clone();
        letter.id = id;
        inner.letters.insert(id, letter);
        Box::pin(ready(Ok(id)))
    }

    fn get(&self, id: u64) -> BoxFuture<'_, Result<Option<DeadLetter>, LogError>> {
        Box::pin(ready(Ok(self.inner().letters.get(&id).cloned())))
    }

    fn page<'a>(
        &'a self,
        query: &'a DeadLetterQuery,
    ) -> BoxFuture<'a, Result<DeadLetterPage, LogError>> {
        let inner = self.inner();
        let from = query.after.map_or(0, |after| after.saturating_add(1));
        let letters: Vec<DeadLetter> = inner
            .letters
            .range(from..)
            .map(|(_, letter)| letter)
            .filter(|l| {
                query
                    .subscription
                    .as_ref()
                    .is_none_or(|s| *s == l.subscription)
            })
            .take(query.limit.max(1))
            .cloned()
            .collect();
        let next = letters
            .last()
            .map(|l| l.id)
            .filter(|_| letters.len() >= query.limit.max(1));
        Box::pin(ready(Ok(DeadLetterPage::new(letters, next))))
    }

    fn count<'a>(&'a self, subscription: Option<&'a str>) -> BoxFuture<'a, Result<u64, LogError>> {
        let inner = self.inner();
        let count = match subscription {
            None => inner.letters.len(),
            Some(s) => inner
                .letters
                .values()
                .filter(|l| l.subscription == s)
                .count(),
        };
        Box::pin(ready(Ok(count as u64)))
    }

    fn remove(&self, id: u64) -> BoxFuture<'_, Result<bool, LogError>> {
        Box::pin(ready(Ok(self.inner().letters.remove(&id).is_some())))
    }
}
