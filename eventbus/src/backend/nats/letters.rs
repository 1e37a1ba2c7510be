//! The dead letters of a [`NatsLog`](super::NatsLog), kept on the same
//! server: any process lists them and marks them for replay, and one of
//! the processes reading the letter's subscription runs the replay.
//!
//! Each letter is a message of its own stream, `<STREAM>_DEAD_LETTERS`, on
//! subject `eventbus-dead-letters.<STREAM>.letter.<consumer>`; its id is
//! its sequence there, which the server never gives out twice. Messages
//! that did not decode are recorded on `...quarantine.<consumer>` in the
//! same stream. A replay asked
//! for is a message on `eventbus-replays.<STREAM>.<consumer>.<id>` in the
//! stream `<STREAM>_REPLAYS`, which keeps the last message of each subject:
//! published only if the subject holds none, so two requests mark once;
//! the process that runs the replay moves the mark from requested to taken
//! by publishing on the sequence it read, so two processes never both run
//! it.

use super::{NatsError, NatsLogBuilder, consumer_name};
use crate::backend::{DeadLetterStore, StoreError};
use crate::dead_letter::store::StoredLetter;
use crate::dead_letter::{DeadLetter, DeadLetterPage, DeadLetterQuery, Discarded, ReplayRequest};
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

/// How long a replay taken by a process may run before another process
/// may take it again, for a process that died while it ran.
const TAKEN_FOR: Duration = Duration::from_secs(300);

/// The dead-letter store of a [`NatsLog`](super::NatsLog); see the module
/// documentation of [`nats`](super) for where letters are kept.
pub struct NatsDeadLetters {
    js: jetstream::Context,
    stream: stream::Stream,
    /// The stream of replay marks, one subject per letter.
    marks: stream::Stream,
    marks_root: String,
    /// The subjects' first tokens: `eventbus-dead-letters.<STREAM>`.
    root: String,
    name: String,
}

/// A letter as stored in its message.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    subscription: String,
    name: String,
    version: i64,
    /// The event's JSON, as text.
    payload: String,
    errors: Vec<String>,
    attempts: u32,
    first_failed_at: DateTime<Utc>,
    last_failed_at: DateTime<Utc>,
}

/// A message of the events' stream that did not decode for a
/// subscription: terminated, so never delivered, and recorded here. The
/// message itself stays in the stream until the stream's limits remove it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Quarantined {
    /// Its sequence in the events' stream.
    pub sequence: u64,
    /// Its subject.
    pub subject: String,
    /// The event name it carries, as far as it says.
    pub name: String,
    /// Why it did not decode.
    pub reason: String,
    /// When it was set aside.
    pub at: DateTime<Utc>,
}

/// A replay mark's value.
#[derive(serde::Serialize, serde::Deserialize)]
struct Mark {
    /// When a process took the replay; `None` while it waits for one.
    taken_at: Option<DateTime<Utc>>,
}

fn failed(
    doing: impl Into<String>,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> StoreError {
    let doing = doing.into();
    move |source| StoreError::from(NatsError::Request { doing, source })
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    err: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(err)
}

impl NatsDeadLetters {
    pub(super) async fn open(
        js: &jetstream::Context,
        events: &str,
        settings: &NatsLogBuilder,
    ) -> Result<Self, NatsError> {
        let name = format!("{events}_DEAD_LETTERS");
        let root = format!("eventbus-dead-letters.{events}");
        let stream = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{root}.>")],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await
            .map_err(|err| NatsError::request(format!("creating stream `{name}`"))(boxed(err)))?;
        let marks_name = format!("{events}_REPLAYS");
        let marks_root = format!("eventbus-replays.{events}");
        let marks = js
            .get_or_create_stream(stream::Config {
                name: marks_name.clone(),
                subjects: vec![format!("{marks_root}.>")],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_messages_per_subject: 1,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await
            .map_err(|err| {
                NatsError::request(format!("creating stream `{marks_name}`"))(boxed(err))
            })?;
        Ok(NatsDeadLetters {
            js: js.clone(),
            stream,
            marks,
            marks_root,
            root,
            name,
        })
    }

    fn subject(&self, subscription: &str) -> String {
        format!("{}.letter.{}", self.root, consumer_name(subscription))
    }

    fn quarantine_subject(&self, subscription: &str) -> String {
        format!("{}.quarantine.{}", self.root, consumer_name(subscription))
    }

    /// Records a message of the events' stream that did not decode for
    /// `subscription`.
    pub(super) async fn quarantine(
        &self,
        subscription: &str,
        record: &Quarantined,
    ) -> Result<(), NatsError> {
        let body = serde_json::to_vec(record).map_err(NatsError::Encode)?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(body.into())
            .message_id(format!("{subscription}/{}", record.sequence));
        self.js
            .send_publish(self.quarantine_subject(subscription), publish)
            .await
            .map_err(|err| {
                NatsError::request("recording a message that does not decode")(boxed(err))
            })?
            .await
            .map_err(|err| {
                NatsError::request("recording a message that does not decode")(boxed(err))
            })?;
        Ok(())
    }

    /// The messages of `subscription` that did not decode, oldest first.
    pub(super) async fn quarantined(
        &self,
        subscription: &str,
    ) -> Result<Vec<Quarantined>, NatsError> {
        Ok(self
            .quarantine_records(subscription)
            .await?
            .into_iter()
            .map(|(_, record)| record)
            .collect())
    }

    /// [`quarantined`](Self::quarantined), each with the sequence of its
    /// record in this stream.
    pub(super) async fn quarantine_records(
        &self,
        subscription: &str,
    ) -> Result<Vec<(u64, Quarantined)>, NatsError> {
        let mut found = Vec::new();
        let mut after = None;
        loop {
            let (read, more) = self
                .read(self.quarantine_subject(subscription), after, 1000)
                .await
                .map_err(|err| NatsError::request("listing quarantined messages")(err))?;
            for (sequence, payload) in &read {
                match serde_json::from_slice(payload) {
                    Ok(record) => found.push((*sequence, record)),
                    Err(err) => {
                        tracing::error!(sequence, error = %err, "a quarantine record does not decode")
                    }
                }
            }
            match (more, read.last()) {
                (true, Some((last, _))) => after = Some(*last),
                _ => return Ok(found),
            }
        }
    }

    /// Deletes the quarantine record at `sequence` of this stream: its
    /// message became a dead letter. `false` when another call deleted it
    /// first.
    pub(super) async fn forget_quarantined(&self, sequence: u64) -> Result<bool, NatsError> {
        match self.stream.delete_message(sequence).await {
            Ok(deleted) => Ok(deleted),
            Err(err)
                if matches!(
                    err.kind(),
                    stream::DeleteMessageErrorKind::JetStream(js)
                        if js.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
                            || js.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                ) =>
            {
                Ok(false)
            }
            Err(err) => Err(NatsError::request("deleting a quarantine record")(boxed(
                err,
            ))),
        }
    }

    /// Up to `limit` messages on `filter` after sequence `after`, with
    /// whether more follow, through a short-lived consumer.
    async fn read(
        &self,
        filter: String,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<(u64, Vec<u8>)>, bool), Box<dyn std::error::Error + Send + Sync>> {
        let start = after.map_or(1, |after| after.saturating_add(1));
        let consumer: consumer::PullConsumer = self
            .stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: consumer::AckPolicy::None,
                filter_subject: filter,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await?;
        let name = consumer.cached_info().name.clone();
        let result = async {
            let pending = consumer.cached_info().num_pending;
            let want = usize::try_from(pending).unwrap_or(usize::MAX).min(limit);
            let mut read = Vec::with_capacity(want);
            let mut left = pending;
            if want == 0 {
                return Ok((read, false));
            }
            let mut messages = consumer
                .fetch()
                .max_messages(want)
                .expires(Duration::from_secs(5))
                .messages()
                .await?;
            while let Some(message) = messages.next().await {
                let message = message?;
                let info = message.info()?;
                left = info.pending;
                read.push((info.stream_sequence, message.payload.to_vec()));
                if read.len() == want {
                    break;
                }
            }
            Ok((read, left > 0))
        }
        .await;
        // Ends by itself after its inactive threshold if this fails.
        let _ = self.stream.delete_consumer(&name).await;
        result
    }

    /// The subject of letter `id`'s replay mark.
    fn key(&self, subscription: &str, id: u64) -> String {
        format!("{}.{}.{id}", self.marks_root, consumer_name(subscription))
    }

    /// Publishes a mark on `key` if its subject's last message is still
    /// `expected` (0: none); `Ok(false)` when it is not.
    async fn put_mark(&self, key: String, mark: &Mark, expected: u64) -> Result<bool, StoreError> {
        let body = serde_json::to_vec(mark).map_err(NatsError::Encode)?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(body.into())
            .expected_last_subject_sequence(expected);
        let sent = self
            .js
            .send_publish(key, publish)
            .await
            .map_err(|err| failed("marking a dead letter for replay")(boxed(err)))?;
        match sent.await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Ok(false)
            }
            Err(err) => Err(failed("marking a dead letter for replay")(boxed(err))),
        }
    }

    /// The stored letter `id`, or `None` when there is none.
    async fn stored(&self, id: u64) -> Result<Option<Stored>, StoreError> {
        let message = match self.stream.get_raw_message(id).await {
            Ok(message) => message,
            Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                return Ok(None);
            }
            Err(err) => {
                return Err(failed(format!("reading dead letter {id}"))(boxed(err)));
            }
        };
        match serde_json::from_slice(&message.payload) {
            Ok(stored) => Ok(Some(stored)),
            Err(err) => {
                tracing::error!(
                    id,
                    stream = %self.name,
                    error = %err,
                    "a stored dead letter does not decode; it stays in its stream",
                );
                Ok(None)
            }
        }
    }

    /// Letter `key`'s mark and the sequence it was published at.
    async fn mark(&self, key: &str) -> Result<Option<(u64, Mark)>, StoreError> {
        match self.marks.get_last_raw_message_by_subject(key).await {
            Ok(message) => {
                let mark =
                    serde_json::from_slice(&message.payload).unwrap_or(Mark { taken_at: None });
                Ok(Some((message.sequence, mark)))
            }
            Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(failed("reading a replay mark")(boxed(err))),
        }
    }

    /// The ids of every letter marked, of one subscription or of all.
    async fn marked(&self, subscription: Option<&str>) -> Result<Vec<u64>, StoreError> {
        let filter = match subscription {
            Some(s) => format!("{}.{}.>", self.marks_root, consumer_name(s)),
            None => format!("{}.>", self.marks_root),
        };
        let listing = failed("listing replay marks");
        let mut subjects = match self.marks.info_with_subjects(&filter).await {
            Ok(subjects) => subjects,
            Err(err) => return Err(listing(boxed(err))),
        };
        let mut found = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _) = entry.map_err(|err| failed("listing replay marks")(boxed(err)))?;
            if let Some(id) = subject.rsplit('.').next().and_then(|id| id.parse().ok()) {
                found.push(id);
            }
        }
        Ok(found)
    }

    fn letter(id: u64, stored: Stored, replaying: bool) -> Option<DeadLetter> {
        StoredLetter {
            id,
            subscription: stored.subscription,
            name: &stored.name,
            version: stored.version,
            payload: stored.payload.as_bytes(),
            errors: serde_json::to_string(&stored.errors).unwrap_or_default(),
            attempts: stored.attempts,
            first_failed_at: stored.first_failed_at,
            last_failed_at: stored.last_failed_at,
            replaying,
        }
        .decode()
    }
}

impl fmt::Debug for NatsDeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsDeadLetters")
            .field("stream", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl DeadLetterStore for NatsDeadLetters {
    async fn insert(&self, letter: &DeadLetter) -> Result<u64, StoreError> {
        let payload = letter.event.to_json_bytes().map_err(NatsError::Encode)?;
        let stored = Stored {
            subscription: letter.subscription.clone(),
            name: letter.event.name().to_owned(),
            version: i64::from(letter.event.version()),
            payload: String::from_utf8(payload).expect("serde_json writes UTF-8"),
            errors: letter.errors.clone(),
            attempts: letter.attempts,
            first_failed_at: letter.first_failed_at,
            last_failed_at: letter.last_failed_at,
        };
        let body = serde_json::to_vec(&stored).map_err(NatsError::Encode)?;
        // Sent again after a lost acknowledgement, the same id stores it
        // once.
        let id = format!(
            "{}/{}/{}",
            letter.subscription,
            letter.event.meta().id,
            letter
                .last_failed_at
                .timestamp_nanos_opt()
                .unwrap_or_default()
        );
        let publish = jetstream::message::PublishMessage::build()
            .payload(body.into())
            .message_id(id);
        let ack = self
            .js
            .send_publish(self.subject(&letter.subscription), publish)
            .await
            .map_err(|err| failed("storing a dead letter")(boxed(err)))?
            .await
            .map_err(|err| failed("storing a dead letter")(boxed(err)))?;
        Ok(ack.sequence)
    }

    async fn get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        let Some(stored) = self.stored(id).await? else {
            return Ok(None);
        };
        let replaying = self
            .mark(&self.key(&stored.subscription, id))
            .await?
            .is_some();
        Ok(Self::letter(id, stored, replaying))
    }

    /// Reads the page through a short-lived consumer of the letters'
    /// stream, from the letter after `after` on.
    async fn page(&self, query: &DeadLetterQuery) -> Result<DeadLetterPage, StoreError> {
        let filter = match &query.subscription {
            Some(subscription) => self.subject(subscription),
            None => format!("{}.letter.>", self.root),
        };
        let (read, more) = self
            .read(filter, query.after, query.limit)
            .await
            .map_err(failed("listing dead letters"))?;
        if read.is_empty() {
            return Ok(DeadLetterPage::new(Vec::new(), None));
        }
        let marked: HashSet<u64> = self
            .marked(query.subscription.as_deref())
            .await?
            .into_iter()
            .collect();
        let next = read.last().map(|(id, _)| *id).filter(|_| more);
        let mut letters = Vec::with_capacity(read.len());
        for (id, payload) in read {
            match serde_json::from_slice::<Stored>(&payload) {
                Ok(stored) => letters.extend(Self::letter(id, stored, marked.contains(&id))),
                Err(err) => tracing::error!(
                    id,
                    stream = %self.name,
                    error = %err,
                    "a stored dead letter does not decode; it stays in its stream",
                ),
            }
        }
        Ok(DeadLetterPage::new(letters, next))
    }

    async fn count(&self, subscription: Option<&str>) -> Result<u64, StoreError> {
        let counting = failed("counting dead letters");
        let subject = match subscription {
            Some(subscription) => self.subject(subscription),
            None => format!("{}.letter.>", self.root),
        };
        let mut subjects = self
            .stream
            .info_with_subjects(&subject)
            .await
            .map_err(|err| counting(boxed(err)))?;
        let mut count = 0;
        while let Some(entry) = subjects.next().await {
            let (_, n) = entry.map_err(|err| failed("counting dead letters")(boxed(err)))?;
            count += n as u64;
        }
        Ok(count)
    }

    async fn remove(&self, id: u64) -> Result<bool, StoreError> {
        let Some(stored) = self.stored(id).await? else {
            return Ok(false);
        };
        let removed = match self.stream.delete_message(id).await {
            Ok(removed) => removed,
            Err(err)
                if matches!(err.kind(), stream::DeleteMessageErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND) =>
            {
                false
            }
            Err(err) => return Err(failed(format!("removing dead letter {id}"))(boxed(err))),
        };
        self.marks
            .purge()
            .filter(self.key(&stored.subscription, id))
            .await
            .map_err(|err| failed("removing a replay mark")(boxed(err)))?;
        Ok(removed)
    }

    async fn request_replay(&self, id: u64) -> Result<ReplayRequest, StoreError> {
        let Some(stored) = self.stored(id).await? else {
            return Ok(ReplayRequest::NotFound);
        };
        let key = self.key(&stored.subscription, id);
        if self.put_mark(key, &Mark { taken_at: None }, 0).await? {
            Ok(ReplayRequest::Requested {
                subscription: stored.subscription,
            })
        } else {
            Ok(ReplayRequest::AlreadyRequested)
        }
    }

    async fn requested(
        &self,
        subscription: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let mut ids: Vec<u64> = self
            .marked(Some(subscription))
            .await?
            .into_iter()
            .filter(|id| after.is_none_or(|after| *id > after))
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        Ok(ids)
    }

    async fn discard(&self, id: u64) -> Result<Discarded, StoreError> {
        let Some(stored) = self.stored(id).await? else {
            return Ok(Discarded::NotFound);
        };
        if self
            .mark(&self.key(&stored.subscription, id))
            .await?
            .is_some()
        {
            return Ok(Discarded::Replaying);
        }
        match self.stream.delete_message(id).await {
            Ok(true) => Ok(Discarded::Removed),
            Ok(false) => Ok(Discarded::NotFound),
            Err(err)
                if matches!(err.kind(), stream::DeleteMessageErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND) =>
            {
                Ok(Discarded::NotFound)
            }
            Err(err) => Err(failed(format!("discarding dead letter {id}"))(boxed(err))),
        }
    }

    /// Moves the mark from requested to taken on the revision read, so of
    /// two processes only one runs the replay; a replay taken longer ago
    /// than five minutes (its process died) may be taken again.
    async fn claim_replay(&self, id: u64) -> Result<bool, StoreError> {
        let Some(stored) = self.stored(id).await? else {
            return Ok(false);
        };
        let key = self.key(&stored.subscription, id);
        let Some((sequence, mark)) = self.mark(&key).await? else {
            return Ok(false);
        };
        let stale = chrono::Duration::from_std(TAKEN_FOR).unwrap_or_default();
        if mark.taken_at.is_some_and(|at| Utc::now() - at < stale) {
            return Ok(false);
        }
        let taken = Mark {
            taken_at: Some(Utc::now()),
        };
        self.put_mark(key, &taken, sequence).await
    }

    fn is_shared(&self) -> bool {
        true
    }
}
