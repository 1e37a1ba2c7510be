//! The default dead-letter store: in memory, for this process only.

use super::store::{Discarded, ReplayRequest};
use super::{DeadLetter, DeadLetterPage, DeadLetterQuery, DeadLetterStore};
use crate::backend::StoreError;
use async_trait::async_trait;
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

#[async_trait]
impl DeadLetterStore for MemoryDeadLetters {
    async fn insert(&self, letter: &DeadLetter) -> Result<u64, StoreError> {
        let mut inner = self.inner();
        inner.last_id += 1;
        let id = inner.last_id;
        let mut letter = letter.clone();
        letter.id = id;
        letter.replaying = false;
        inner.letters.insert(id, letter);
        Ok(id)
    }

    async fn get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.inner().letters.get(&id).cloned())
    }

    async fn page(&self, query: &DeadLetterQuery) -> Result<DeadLetterPage, StoreError> {
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
        Ok(DeadLetterPage::new(letters, next))
    }

    async fn count(&self, subscription: Option<&str>) -> Result<u64, StoreError> {
        let inner = self.inner();
        let count = match subscription {
            None => inner.letters.len(),
            Some(s) => inner
                .letters
                .values()
                .filter(|l| l.subscription == s)
                .count(),
        };
        Ok(count as u64)
    }

    async fn remove(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.inner().letters.remove(&id).is_some())
    }

    async fn request_replay(&self, id: u64) -> Result<ReplayRequest, StoreError> {
        Ok(match self.inner().letters.get_mut(&id) {
            None => ReplayRequest::NotFound,
            Some(letter) if letter.replaying => ReplayRequest::AlreadyRequested,
            Some(letter) => {
                letter.replaying = true;
                ReplayRequest::Requested {
                    subscription: letter.subscription.clone(),
                }
            }
        })
    }

    async fn requested(
        &self,
        subscription: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let from = after.map_or(0, |after| after.saturating_add(1));
        Ok(self
            .inner()
            .letters
            .range(from..)
            .filter(|(_, l)| l.replaying && l.subscription == subscription)
            .map(|(id, _)| *id)
            .take(limit.max(1))
            .collect())
    }

    async fn discard(&self, id: u64) -> Result<Discarded, StoreError> {
        let mut inner = self.inner();
        Ok(match inner.letters.get(&id) {
            None => Discarded::NotFound,
            Some(letter) if letter.replaying => Discarded::Replaying,
            Some(_) => {
                inner.letters.remove(&id);
                Discarded::Removed
            }
        })
    }
}
