//! How an event travels on JetStream: its subject, its headers and its payload, and back.
//!
//! - **Subject** `<prefix>.<schema>.<table>.<owner>`: the owner column's UUID, `_` when the row
//!   has none. A token NATS would refuse (`.`, `*`, `>`, whitespace) has those characters
//!   replaced by `_`; routing never reads the subject, only filters and purges do.
//! - **Payload**: the event's native frame, byte for byte, so every node writes the same bytes.
//! - **Headers**: `Nats-Msg-Id` = the cursor (JetStream drops a re-published event within
//!   `duplicate_window`); `Relay-Commit-Us` (Unix µs), `Relay-Op` (`insert|update|delete`),
//!   `Relay-Owner`, `Relay-Moved-From` (UUIDs), `Relay-Row` (16 hex digits) when present, and
//!   `Relay-Relation`, the table's columns as compact JSON (`{"oid":…,"schema":…,"name":…,
//!   "ri":"f","columns":[["id",2950,-1,true],…]}`), which the Supabase encoding needs.
//! - **Begin** (`<prefix>._begin`, empty payload, `Relay-History` and `Relay-Lsn`): the
//!   publisher's stream started at that LSN of that WAL history; a node whose history differs
//!   starts its window over (sessions close with 1012).
//! - **Mark** (`<prefix>._mark`, empty payload, `Relay-After`: a cursor): every event after
//!   that cursor follows the mark. The publisher sends one every few seconds while events
//!   flow; with begin messages they tell how far back the stream is whole, which erased
//!   messages (deleted rows) would otherwise hide.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Column, Cursor, Event, FrameMeta, Operation, Relation};

const COMMIT_US: &str = "Relay-Commit-Us";
const OP: &str = "Relay-Op";
const OWNER: &str = "Relay-Owner";
const MOVED_FROM: &str = "Relay-Moved-From";
const ROW: &str = "Relay-Row";
const RELATION: &str = "Relay-Relation";
const HISTORY: &str = "Relay-History";
const LSN: &str = "Relay-Lsn";
const AFTER: &str = "Relay-After";

/// The subject of `event` under `prefix`.
pub fn subject(prefix: &str, event: &Event) -> String {
    let owner = event
        .owner
        .map_or_else(|| "_".to_string(), |o| o.to_string());
    format!(
        "{prefix}.{}.{}.{owner}",
        token(&event.relation.schema),
        token(&event.relation.name)
    )
}

/// Every subject of `owner`'s events: `<prefix>.*.*.<owner>` (a filter and a purge subject).
pub fn owner_subjects(prefix: &str, owner: Uuid) -> String {
    format!("{prefix}.*.*.{owner}")
}

/// The subject of begin messages.
pub fn begin_subject(prefix: &str) -> String {
    format!("{prefix}._begin")
}

/// The subject of mark messages.
pub fn mark_subject(prefix: &str) -> String {
    format!("{prefix}._mark")
}

/// The subjects of begin and mark messages, which say from where on the stream holds every
/// event ([`Incoming::horizon`]): `<prefix>.*`.
pub fn horizon_subjects(prefix: &str) -> String {
    format!("{prefix}.*")
}

/// Every event subject (not begin or mark messages): `<prefix>.*.*.*`.
pub fn event_subjects(prefix: &str) -> String {
    format!("{prefix}.*.*.*")
}

/// Every subject of the stream: `<prefix>.>`.
pub fn all_subjects(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// The cursor of a stored event message (its `Nats-Msg-Id`); `None` for a begin message or
/// a foreign one.
pub fn message_cursor(headers: Option<&HeaderMap>) -> Option<Cursor> {
    headers?
        .get(NATS_MESSAGE_ID.as_ref())?
        .as_str()
        .parse()
        .ok()
}

/// The row (`Relay-Row`) of a stored insert or update message: what erasure removes once a
/// later delete of that row streamed. `None` for a delete, or a message without a row.
pub fn erasable_row(headers: Option<&HeaderMap>) -> Option<u64> {
    let headers = headers?;
    if headers.get(OP).map(|v| v.as_str()) == Some("delete") {
        return None;
    }
    u64::from_str_radix(headers.get(ROW)?.as_str(), 16).ok()
}

fn token(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_whitespace() || matches!(c, '.' | '*' | '>') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if clean.is_empty() {
        "_".into()
    } else {
        clean
    }
}

/// The headers of `event`, `Nats-Msg-Id` included; `relation` is the table's
/// [`encode_relation`] text.
pub fn event_headers(event: &Event, relation: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, event.cursor.to_string().as_str());
    headers.insert(COMMIT_US, event.commit_time_us.to_string().as_str());
    headers.insert(OP, event.operation.as_str());
    if let Some(owner) = event.owner {
        headers.insert(OWNER, owner.to_string().as_str());
    }
    if let Some(was) = event.moved_from {
        headers.insert(MOVED_FROM, was.to_string().as_str());
    }
    if let Some(row) = event.row {
        headers.insert(ROW, format!("{row:016x}").as_str());
    }
    headers.insert(RELATION, relation);
    headers
}

/// The `Nats-Msg-Id` and headers of a begin message.
pub fn begin_headers(history: u32, lsn: u64) -> (String, HeaderMap) {
    let id = format!("begin-{history:08x}-{lsn:016x}");
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, id.as_str());
    headers.insert(HISTORY, history.to_string().as_str());
    headers.insert(LSN, lsn.to_string().as_str());
    (id, headers)
}

/// The id and headers of a mark: every event after `after` follows it in the stream.
pub fn mark_headers(after: Cursor) -> (String, HeaderMap) {
    let id = format!("mark-{after}");
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, id.as_str());
    headers.insert(AFTER, after.to_string().as_str());
    (id, headers)
}

#[derive(Serialize, Deserialize)]
struct RelationWire {
    oid: u32,
    schema: String,
    name: String,
    ri: String,
    columns: Vec<(String, u32, i32, bool)>,
}

/// `relation` as the `Relay-Relation` header's compact JSON.
pub fn encode_relation(relation: &Relation) -> String {
    let wire = RelationWire {
        oid: relation.oid,
        schema: relation.schema.clone(),
        name: relation.name.clone(),
        ri: char::from(relation.replica_identity).to_string(),
        columns: relation
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.type_oid, c.type_modifier, c.is_key))
            .collect(),
    };
    serde_json::to_string(&wire).unwrap_or_default()
}

fn decode_relation(text: &str) -> Option<Relation> {
    let wire: RelationWire = serde_json::from_str(text).ok()?;
    Some(Relation {
        oid: wire.oid,
        schema: wire.schema,
        name: wire.name,
        replica_identity: wire.ri.bytes().next().unwrap_or(b'd'),
        columns: wire
            .columns
            .into_iter()
            .map(|(name, type_oid, type_modifier, is_key)| Column {
                name,
                type_oid,
                type_modifier,
                is_key,
            })
            .collect(),
    })
}

/// A message read back from the stream.
#[derive(Debug)]
pub enum Incoming {
    /// A row change.
    Event(Event),
    /// The publisher's stream began at `lsn` of WAL history `history`.
    Begin {
        /// [`crate::model::history_id`] of the WAL history.
        history: u32,
        /// Where the stream began.
        lsn: u64,
    },
    /// Every event after this cursor follows in the stream (the publisher's periodic mark).
    Mark {
        /// The last event published before the mark.
        after: Cursor,
    },
}

impl Incoming {
    /// For a begin or mark message: every event after this cursor follows it in the stream
    /// (until erased), so a resume from at or after it can be answered from the stream.
    pub fn horizon(&self) -> Option<Cursor> {
        match self {
            Incoming::Begin { history, lsn } => Some(Cursor::before(*lsn, *history)),
            Incoming::Mark { after } => Some(*after),
            Incoming::Event(_) => None,
        }
    }
}

/// Why a message could not be read back (a message of a newer or foreign writer).
#[derive(Debug, thiserror::Error)]
#[error("unreadable stream message: {0}")]
pub struct WireError(&'static str);

/// Reads messages back, sharing one [`Relation`] per distinct `Relay-Relation` header.
#[derive(Default)]
pub struct Decoder {
    relations: HashMap<String, Arc<Relation>>,
}

impl Decoder {
    /// Decodes a message of subject `subject`.
    ///
    /// Errors: [`WireError`] naming the missing or malformed header, or a payload that is not
    /// the frame its headers describe.
    pub fn decode(
        &mut self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<Incoming, WireError> {
        let headers = headers.ok_or(WireError("no headers"))?;
        let get = |name: &str| headers.get(name).map(|v| v.as_str());
        if subject.ends_with("._mark") {
            return match get(AFTER).and_then(|v| v.parse().ok()) {
                Some(after) => Ok(Incoming::Mark { after }),
                None => Err(WireError("mark without Relay-After")),
            };
        }
        if subject.ends_with("._begin") {
            let history = get(HISTORY).and_then(|v| v.parse().ok());
            let lsn = get(LSN).and_then(|v| v.parse().ok());
            return match (history, lsn) {
                (Some(history), Some(lsn)) => Ok(Incoming::Begin { history, lsn }),
                _ => Err(WireError("begin without Relay-History/Relay-Lsn")),
            };
        }
        let cursor: Cursor = get(NATS_MESSAGE_ID.as_ref())
            .and_then(|v| v.parse().ok())
            .ok_or(WireError("Nats-Msg-Id is not a cursor"))?;
        let commit_time_us = get(COMMIT_US)
            .and_then(|v| v.parse().ok())
            .ok_or(WireError("Relay-Commit-Us"))?;
        let operation = match get(OP) {
            Some("insert") => Operation::Insert,
            Some("update") => Operation::Update,
            Some("delete") => Operation::Delete,
            _ => return Err(WireError("Relay-Op")),
        };
        let uuid = |name: &str| match get(name) {
            None => Ok(None),
            Some(v) => Uuid::parse_str(v)
                .map(Some)
                .map_err(|_| WireError("a UUID header")),
        };
        let row = match get(ROW) {
            None => None,
            Some(v) => Some(u64::from_str_radix(v, 16).map_err(|_| WireError("Relay-Row"))?),
        };
        let relation = self.relation(get(RELATION).ok_or(WireError("Relay-Relation"))?)?;
        let meta = FrameMeta {
            cursor,
            commit_time_us,
            operation,
            relation,
            owner: uuid(OWNER)?,
            row,
            moved_from: uuid(MOVED_FROM)?,
        };
        Event::from_frame(payload, meta)
            .map(Incoming::Event)
            .ok_or(WireError("the payload is not the event's frame"))
    }

    fn relation(&mut self, text: &str) -> Result<Arc<Relation>, WireError> {
        if let Some(relation) = self.relations.get(text) {
            return Ok(relation.clone());
        }
        let relation = Arc::new(decode_relation(text).ok_or(WireError("Relay-Relation"))?);
        // Schema changes are rare; a bound keeps a flood of odd headers from growing it.
        if self.relations.len() >= 1024 {
            self.relations.clear();
        }
        self.relations.insert(text.to_string(), relation.clone());
        Ok(relation)
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
