//! The slot holder's side: a [`Dispatch`] that puts every decoded event on JetStream, in commit
//! order, and lets PostgreSQL recycle WAL only once JetStream has stored it.
//!
//! - **Order.** Messages go out in batches, pipelined; each names the previous one in
//!   `Nats-Expected-Last-Msg-Id`, so JetStream stores a message only right after its
//!   predecessor. After a failure (NATS down, a timeout, a refused message) the unacknowledged
//!   tail is sent again from its oldest message, whose first send names no predecessor.
//! - **No duplicates.** `Nats-Msg-Id` is the event's cursor: JetStream drops a message it
//!   already stored within `cluster.duplicate_window` (a re-send after a lost PubAck, or a new
//!   publisher re-reading the unconfirmed tail after a takeover). JetStream checks the id
//!   before the expected predecessor, so re-sent duplicates are acknowledged as such. A
//!   duplicate stores nothing: the stream's last id stays the one before it, so the chain
//!   continues from the last message stored, and a message refused right after a duplicate
//!   (pipelined, it named the duplicate) is sent again at once, unchained, without a warning.
//! - **Confirmation.** [`Dispatch::oldest_lsn`] is the commit LSN of the oldest event not yet
//!   acknowledged, so the replication task (run with a zero replay window in cluster mode)
//!   confirms everything before it, about once a second; also when PostgreSQL shuts down
//!   ([`Dispatch::keeps_dispatched`] is false: the task leaves rather than confirm the rest).
//! - **Back-pressure.** While JetStream cannot be reached, at most [`MAX_UNACKED`] events
//!   wait in memory; then the replication task stops reading the slot (PostgreSQL keeps the
//!   WAL, as it does for anything unconfirmed) until PubAcks come again.
//! - **Marks.** Every 10 s while events flow, a mark message names the last event published
//!   before it ([`wire::mark_headers`]).
//! - **Restarts.** [`Dispatch::begin`] (the stream started again: a new connection to the slot)
//!   drops what was not acknowledged (the slot sends it again) and publishes a begin message.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::context::{Context, PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::HeaderMap;
use bytes::Bytes;
use metrics::histogram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::erasure::Erasures;
use super::wire;
use crate::metrics as m;
use crate::model::{now_unix_us, Cursor, Event, Relation};
use crate::replication::Dispatch;

/// Messages sent before their PubAcks are awaited.
const BATCH: usize = 256;
/// How often, while events flow, a mark says how far back the stream is whole
/// ([`wire::mark_headers`]), in µs.
const MARK_EVERY_US: i64 = 10_000_000;
/// Most events published but not yet acknowledged; beyond it the replication task stops
/// reading the slot ([`Dispatch::is_full`]) until JetStream acknowledges again (~1 KB each).
const MAX_UNACKED: usize = 100_000;
/// The longest wait between attempts while JetStream refuses or cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One message to publish, of the stream generation `epoch`.
struct Outgoing {
    epoch: u64,
    subject: String,
    id: String,
    headers: HeaderMap,
    payload: Bytes,
    /// Commit LSN and time (Unix µs) of an event; `None` for a begin message.
    commit: Option<(u64, i64)>,
}

/// What is published but not yet acknowledged, by generation.
#[derive(Default)]
struct Unacked {
    epoch: u64,
    /// Commit LSNs of the events not yet acknowledged, in commit order.
    lsns: VecDeque<u64>,
    /// The last event dispatched, and the one the last mark named.
    last: Option<Cursor>,
    marked: Option<Cursor>,
    /// When the last mark was sent (Unix µs).
    marked_at_us: i64,
}

/// The [`Dispatch`] of the node that holds the slot in cluster mode.
pub struct Publisher {
    prefix: String,
    unacked: Mutex<Unacked>,
    /// `Relay-Relation` texts of the relations seen, encoded once each (the decoder keeps one
    /// `Arc` per relation until its schema changes).
    relations: Mutex<Vec<(Arc<Relation>, Arc<str>)>>,
    /// Deletes, noted for erasure from the stream.
    erasures: Erasures,
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl Publisher {
    /// A publisher on `js` under subject prefix `prefix`, and the task that sends its messages
    /// (spawn it; it runs until `stop`).
    /// Each delete it publishes is noted in `erasures`.
    pub fn new(
        js: Context,
        prefix: &str,
        erasures: Erasures,
        stop: CancellationToken,
    ) -> (Arc<Publisher>, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let publisher = Arc::new(Publisher {
            prefix: prefix.to_string(),
            unacked: Mutex::new(Unacked::default()),
            relations: Mutex::default(),
            erasures,
            tx,
        });
        let task = run(js, publisher.clone(), rx, stop);
        (publisher, task)
    }

    fn unacked(&self) -> MutexGuard<'_, Unacked> {
        self.unacked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn epoch(&self) -> u64 {
        self.unacked().epoch
    }

    /// Marks the oldest unacknowledged event of `epoch` acknowledged.
    fn acked(&self, epoch: u64) {
        let mut unacked = self.unacked();
        if unacked.epoch == epoch {
            unacked.lsns.pop_front();
        }
    }

    /// The `Relay-Relation` text of `relation`, encoded at its first event only.
    fn relation_header(&self, relation: &Arc<Relation>) -> Arc<str> {
        let mut relations = self.relations.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, text)) = relations.iter().find(|(r, _)| Arc::ptr_eq(r, relation)) {
            return text.clone();
        }
        // Schema changes replace relations; a bound keeps the old ones from piling up.
        if relations.len() >= 256 {
            relations.clear();
        }
        let text: Arc<str> = wire::encode_relation(relation).into();
        relations.push((relation.clone(), text.clone()));
        text
    }

    fn send(&self, message: Outgoing) {
        // The task ends only at shutdown, after the replication task: nothing is lost here.
        let _ = self.tx.send(message);
    }
}

impl Dispatch for Publisher {
    fn begin(&self, history: u32, lsn: u64) {
        let epoch = {
            let mut unacked = self.unacked();
            unacked.epoch += 1;
            unacked.lsns.clear();
            unacked.last = None;
            unacked.marked = None;
            unacked.epoch
        };
        let (id, headers) = wire::begin_headers(history, lsn);
        self.send(Outgoing {
            epoch,
            subject: wire::begin_subject(&self.prefix),
            id,
            headers,
            payload: Bytes::new(),
            commit: None,
        });
    }

    fn dispatch(&self, event: Arc<Event>) {
        let epoch = {
            let mut unacked = self.unacked();
            unacked.lsns.push_back(event.cursor.lsn);
            unacked.last = Some(event.cursor);
            unacked.epoch
        };
        let relation = self.relation_header(&event.relation);
        let subject = wire::subject(&self.prefix, &event);
        self.erasures.note(&subject, &event);
        self.send(Outgoing {
            epoch,
            subject,
            id: event.cursor.to_string(),
            headers: wire::event_headers(&event, &relation),
            payload: event.native_frame(),
            commit: Some((event.cursor.lsn, event.commit_time_us)),
        });
    }

    fn note_wal_end(&self, _lsn: u64) {}

    fn maintain(&self, now_us: i64) {
        let (epoch, after) = {
            let mut unacked = self.unacked();
            if now_us - unacked.marked_at_us < MARK_EVERY_US || unacked.last == unacked.marked {
                return;
            }
            unacked.marked = unacked.last;
            unacked.marked_at_us = now_us;
            match unacked.last {
                Some(after) => (unacked.epoch, after),
                None => return,
            }
        };
        let (id, headers) = wire::mark_headers(after);
        self.send(Outgoing {
            epoch,
            subject: wire::mark_subject(&self.prefix),
            id,
            headers,
            payload: Bytes::new(),
            commit: None,
        });
    }

    fn oldest_lsn(&self) -> Option<u64> {
        self.unacked().lsns.front().copied()
    }

    fn evicted_lsn(&self) -> u64 {
        0
    }

    fn is_full(&self) -> bool {
        self.unacked().lsns.len() >= MAX_UNACKED
    }

    /// JetStream has not stored what is unacknowledged: a database shutdown must not confirm it.
    fn keeps_dispatched(&self) -> bool {
        false
    }
}

/// Sends what `rx` brings, in order, until `stop`.
async fn run(
    js: Context,
    publisher: Arc<Publisher>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
) {
    let latency = histogram!(m::CLUSTER_PUBLISH_SECONDS);
    // Sent but not acknowledged, oldest first: retried from the front after a failure.
    let mut pending: VecDeque<Outgoing> = VecDeque::new();
    // The id of the last message JetStream stored in this run (a duplicate stores nothing, so
    // the stream's last id stays the one before it); `None` after a failure.
    let mut last_id: Option<String> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        if pending.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                next = rx.recv() => match next {
                    Some(message) => pending.push_back(message),
                    None => return,
                },
            }
        }
        while pending.len() < BATCH {
            match rx.try_recv() {
                Ok(message) => pending.push_back(message),
                Err(_) => break,
            }
        }
        // A new generation voids the older ones: the slot sends those events again.
        let epoch = publisher.epoch();
        pending.retain(|m| m.epoch == epoch);
        let batch = pending.len().min(BATCH);
        let outcome = send_batch(&js, &pending, batch, last_id.as_deref()).await;
        if let Some(i) = outcome.last_stored {
            last_id = Some(pending[i].id.clone());
        }
        for message in pending.drain(..outcome.acked) {
            if let Some((_, commit_us)) = message.commit {
                publisher.acked(message.epoch);
                latency.record((now_unix_us() - commit_us).max(0) as f64 / 1e6);
            }
        }
        let Some(e) = outcome.failure else {
            backoff = Duration::from_millis(50);
            continue;
        };
        // Which message is stored last is unknown now: the next send names none.
        last_id = None;
        if outcome.after_duplicate && e.kind() == PublishErrorKind::WrongLastMessageId {
            // Expected after a takeover or a retry: the re-sent head of the tail was already
            // stored (a duplicate), so the stream's last id is not the one the next message
            // named. Sent again at once from the refused one, unchained.
            debug!("JetStream refused a message chained to a duplicate; sending again");
            continue;
        }
        warn!("publishing to JetStream failed ({e}); retrying in {backoff:?}");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What became of a batch.
#[derive(Default)]
struct Outcome {
    /// How many messages, from the first, JetStream acknowledged (stored, or dropped as
    /// duplicates) before the first failure.
    acked: usize,
    /// The index of the last acknowledged message JetStream stored (not a duplicate).
    last_stored: Option<usize>,
    /// Whether the last acknowledged message was a duplicate.
    after_duplicate: bool,
    /// The first failure, if any.
    failure: Option<PublishError>,
}

/// Sends the first `n` of `pending`, chained by `Nats-Expected-Last-Msg-Id` (the first after
/// `last_id`, or unchained), and awaits their PubAcks in order.
async fn send_batch(
    js: &Context,
    pending: &VecDeque<Outgoing>,
    n: usize,
    last_id: Option<&str>,
) -> Outcome {
    let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(n);
    let mut previous = last_id.map(str::to_string);
    for message in pending.iter().take(n) {
        let mut publish = PublishMessage::build()
            .payload(message.payload.clone())
            .headers(message.headers.clone());
        if let Some(previous) = &previous {
            publish = publish.expected_last_message_id(previous);
        }
        match js.send_publish(message.subject.clone(), publish).await {
            Ok(ack) => acks.push(ack),
            Err(e) => {
                // What was sent before this one may still be stored: count what was.
                let mut outcome = await_acks(acks).await;
                outcome.failure.get_or_insert(e);
                return outcome;
            }
        }
        previous = Some(message.id.clone());
    }
    await_acks(acks).await
}

/// Awaits `acks` in order, up to the first failure.
async fn await_acks(acks: Vec<PublishAckFuture>) -> Outcome {
    let mut outcome = Outcome::default();
    for ack in acks {
        match ack.await {
            Ok(ack) => {
                if ack.duplicate {
                    debug!(sequence = ack.sequence, "JetStream already had this event");
                } else {
                    outcome.last_stored = Some(outcome.acked);
                }
                outcome.after_duplicate = ack.duplicate;
                outcome.acked += 1;
            }
            Err(e) => {
                outcome.failure = Some(e);
                break;
            }
        }
    }
    outcome
}
