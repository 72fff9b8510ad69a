//! Reading the stream back: a resume whose cursor is older than a node's in-memory window is
//! answered from JetStream, and erasure finds a deleted row's earlier messages there.
//!
//! - **Where a cursor stands.** Stream order is commit order, so the first message after a
//!   cursor is found by a binary search over stream sequences, one direct get
//!   (`$JS.API.DIRECT.GET`, next message of `<prefix>.*.*.*` at or after a sequence) per step:
//!   about 20 requests for a million messages, gaps (erased messages) included.
//! - **Complete or not.** The stream holds every event after `since` when its oldest event, or
//!   its oldest begin or mark message ([`wire::Incoming::horizon`]), is at or before `since` in
//!   the same WAL history; JetStream drops only from the front (limits retention, `max_age`),
//!   besides the messages erasure removes on purpose (which the marks see past).
//! - **Reading.** An ephemeral pull consumer filtered on the owner's subjects
//!   (`<prefix>.*.*.<owner>`, every event subject for the service role) from that sequence,
//!   fetched in batches until nothing is pending.
//! - **Erasure.** As in the in-memory window (docs/RETENTION.md §4), an event of a row a
//!   later delete removed is not replayed; the delete is.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{DeleteMessageErrorKind, DirectGetErrorKind, Stream};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::Message;
use futures_util::StreamExt;
use uuid::Uuid;

use super::wire::{self, Decoder, Incoming};
use crate::filter::Interest;
use crate::model::{Cursor, Event, Operation};

/// Messages fetched per pull request.
const FETCH: usize = 1_000;
/// How long an abandoned read's consumer outlives it on the server.
const INACTIVE: Duration = Duration::from_secs(30);

/// Why the stream could not be read (the resume is then answered `complete:false`).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The node has not reached the stream yet.
    #[error("the JetStream stream is not available yet")]
    NotReady,
    /// A JetStream request failed.
    #[error("reading the JetStream stream: {0}")]
    Nats(String),
}

impl ArchiveError {
    fn nats(e: impl std::fmt::Display) -> ArchiveError {
        ArchiveError::Nats(e.to_string())
    }
}

/// The stream as a history of events, shared by the sessions of a cluster node.
pub struct Archive {
    stream: OnceLock<Stream>,
    prefix: String,
    limit: usize,
}

/// One stored event message: its stream sequence and the message.
pub struct Stored {
    /// Stream sequence.
    pub sequence: u64,
    /// Its cursor (`Nats-Msg-Id`).
    pub cursor: Cursor,
    /// The message as delivered.
    pub message: Message,
}

impl Archive {
    /// An archive of the stream under subject prefix `prefix` (available once
    /// [`Archive::attach`] gave it the stream) reading back at most `limit` events per resume
    /// (`cluster.max_resume_events`).
    pub fn new(prefix: &str, limit: usize) -> Archive {
        Archive {
            stream: OnceLock::new(),
            prefix: prefix.to_string(),
            limit,
        }
    }

    /// Gives the archive its stream (the first call wins).
    pub fn attach(&self, stream: Stream) {
        let _ = self.stream.set(stream);
    }

    fn stream(&self) -> Result<&Stream, ArchiveError> {
        self.stream.get().ok_or(ArchiveError::NotReady)
    }

    /// The events of `owner` (every owner: `None`, the service role) after `since` up to and
    /// including `upto`, oldest first, that `interest` wants, without the events of rows a
    /// later delete erased. `None` when the stream no longer reaches back to `since` (its
    /// oldest event is after it, or of another WAL history) or more than `limit` events were
    /// missed: the client must reload (`complete:false`).
    ///
    /// Errors: [`ArchiveError`] when JetStream cannot be asked.
    pub async fn replay(
        &self,
        owner: Option<Uuid>,
        interest: &Interest,
        since: Cursor,
        upto: Cursor,
    ) -> Result<Option<Vec<Arc<Event>>>, ArchiveError> {
        let Some(start) = self.start_after(since).await? else {
            return Ok(None);
        };
        let filter = match owner {
            Some(owner) => wire::owner_subjects(&self.prefix, owner),
            None => wire::event_subjects(&self.prefix),
        };
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        let mut read = |stored: Stored| {
            if stored.cursor > upto {
                return Ok(false);
            }
            let Stored { message, .. } = stored;
            if let Ok(Incoming::Event(event)) = decoder.decode(
                message.subject.as_str(),
                message.headers.as_ref(),
                message.payload.clone(),
            ) {
                if events.len() == self.limit {
                    return Err(());
                }
                events.push(event);
            }
            Ok(true)
        };
        match self.scan(&filter, start, &mut read).await? {
            Scanned::Stopped => return Ok(None),
            Scanned::Done => {}
        }
        Ok(Some(unerased(events, interest)))
    }

    /// The stream sequence of the first event after `since`, or `None` when the stream does
    /// not hold every event after it.
    async fn start_after(&self, since: Cursor) -> Result<Option<u64>, ArchiveError> {
        let stream = self.stream()?;
        let filter = wire::event_subjects(&self.prefix);
        let Some((first, oldest)) = self.next_event(&filter, 1).await? else {
            return Ok(None);
        };
        // Whole from the oldest event on, or from the oldest begin or mark on (which erased
        // messages cannot hide).
        let whole = match self.horizon().await? {
            Some(horizon) => horizon.min(oldest),
            None => oldest,
        };
        if whole.history != since.history || whole > since {
            return Ok(None);
        }
        let last = stream.get_info().await.map_err(ArchiveError::nats)?;
        let (mut lo, mut hi) = (first, last.state.last_sequence + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.next_event(&filter, mid).await? {
                Some((sequence, cursor)) if cursor <= since => lo = sequence + 1,
                _ => hi = mid,
            }
        }
        Ok(Some(lo))
    }

    /// The first event message of `filter` at or after `sequence`: its sequence and cursor.
    async fn next_event(
        &self,
        filter: &str,
        sequence: u64,
    ) -> Result<Option<(u64, Cursor)>, ArchiveError> {
        let stream = self.stream()?;
        match stream
            .direct_get_next_for_subject(filter, Some(sequence))
            .await
        {
            Ok(message) => {
                let cursor = wire::message_cursor(Some(&message.headers))
                    .ok_or_else(|| ArchiveError::Nats("a message without a cursor".into()))?;
                Ok(Some((message.sequence, cursor)))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(ArchiveError::nats(e)),
        }
    }

    /// The horizon ([`Incoming::horizon`]) of the oldest begin or mark message in the stream.
    async fn horizon(&self) -> Result<Option<Cursor>, ArchiveError> {
        let filter = wire::horizon_subjects(&self.prefix);
        match self
            .stream()?
            .direct_get_next_for_subject(filter, Some(1))
            .await
        {
            Ok(message) => {
                let incoming = Decoder::default().decode(
                    message.subject.as_str(),
                    Some(&message.headers),
                    message.payload,
                );
                Ok(incoming.ok().and_then(|i| i.horizon()))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(ArchiveError::nats(e)),
        }
    }

    /// Erases the message at `sequence` (JetStream overwrites it; one already gone counts as
    /// erased).
    ///
    /// Errors: [`ArchiveError`] when JetStream cannot be asked.
    pub async fn erase(&self, sequence: u64) -> Result<(), ArchiveError> {
        match self.stream()?.delete_message(sequence).await {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                DeleteMessageErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
                {
                    Ok(())
                }
                _ => Err(ArchiveError::nats(e)),
            },
        }
    }

    /// Hands `visit` each message of `filter` from stream sequence `start` on, in order, until
    /// nothing is pending or `visit` says stop (`Ok(false)`: done; `Err`: gave up).
    ///
    /// Errors: [`ArchiveError`] when JetStream cannot be asked.
    pub async fn scan(
        &self,
        filter: &str,
        start: u64,
        visit: &mut impl FnMut(Stored) -> Result<bool, ()>,
    ) -> Result<Scanned, ArchiveError> {
        let stream = self.stream()?;
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter.to_string(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: INACTIVE,
                ..Default::default()
            })
            .await
            .map_err(ArchiveError::nats)?;
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(FETCH)
                .messages()
                .await
                .map_err(ArchiveError::nats)?;
            let mut got = 0;
            let mut pending = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(ArchiveError::nats)?;
                let info = message.info().map_err(ArchiveError::nats)?;
                let (sequence, left) = (info.stream_sequence, info.pending);
                got += 1;
                pending = left;
                let Some(cursor) = wire::message_cursor(message.headers.as_ref()) else {
                    continue;
                };
                match visit(Stored {
                    sequence,
                    cursor,
                    message,
                }) {
                    Ok(true) => {}
                    Ok(false) => return Ok(Scanned::Done),
                    Err(()) => return Ok(Scanned::Stopped),
                }
            }
            if got == 0 || pending == 0 {
                return Ok(Scanned::Done);
            }
        }
    }
}

/// How a [`Archive::scan`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    /// Nothing more was pending, or the visitor had all it wanted.
    Done,
    /// The visitor gave up.
    Stopped,
}

/// `events` (oldest first) without those of a row a later delete in `events` erased, and
/// only those `interest` wants. The deletes themselves stay.
fn unerased(events: Vec<Event>, interest: &Interest) -> Vec<Arc<Event>> {
    let mut deleted: HashMap<u64, Cursor> = HashMap::new();
    for event in &events {
        if let (Operation::Delete, Some(row)) = (event.operation, event.row) {
            deleted.insert(row, event.cursor);
        }
    }
    events
        .into_iter()
        .filter(|e| {
            e.operation == Operation::Delete
                || e.row
                    .and_then(|row| deleted.get(&row))
                    .is_none_or(|delete| e.cursor > *delete)
        })
        .filter(|e| interest.matches(e))
        .map(Arc::new)
        .collect()
}
