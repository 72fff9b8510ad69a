//! The [`Event`] routed to sessions: one row change, kept as its native JSON frame.
//!
//! An event is encoded once, when it is decoded from the slot, and then *is* that frame: the
//! routing key (`owner`), the place in the WAL and the table stay as fields, the row itself only
//! as bytes of the frame. Every session writes the same shared buffer ([`Bytes`] is reference
//! counted); a filter or a Supabase encoding reads the row back from it
//! ([`Event::record_json`], [`Event::select`], [`Event::record`]), so the replay window holds
//! about one frame per event instead of a frame plus a decoded JSON map (BENCHMARKS.md §5).

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use super::cursor::Cursor;
use super::record::{self, Span};
use super::relation::{Record, Relation};
use super::values::format_unix_us;

/// The kind of change a row event carries; in `[[tables]]` `operations`, `"insert"`,
/// `"update"` or `"delete"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// A new row.
    Insert,
    /// A changed row (`record` is the new version; `old_record` the old one when the table's
    /// replica identity sends it: PostgreSQL docs, "Logical Replication Message Formats",
    /// Update's optional `'K'`/`'O'` tuple).
    Update,
    /// A deleted row: the frame has no `record`, only `old_record`, the old tuple pgoutput sent
    /// (`'O'`: the whole row under `REPLICA IDENTITY FULL`; `'K'`: the identity's columns).
    Delete,
}

impl Operation {
    /// `insert`, `update` or `delete`: the native frame's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

/// One row change, ready to route: its native frame plus what routing and filters need.
#[derive(Debug)]
pub struct Event {
    /// Where the row stands in the WAL.
    pub cursor: Cursor,
    /// Commit timestamp of the row's transaction, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// Insert, update or delete.
    pub operation: Operation,
    /// The table, with its columns as the last Relation message described them.
    pub relation: Arc<Relation>,
    /// Value of the table's owner column (`[[tables]]` `owner_column`, default `user_id`), when
    /// it is a UUID: the routing key. A delete's is read from its old row.
    pub owner: Option<Uuid>,
    /// Which row of which table the event is about: a 64-bit hash of the schema, the table and
    /// the values of the table's key columns ([`row_key`]), `None` when the table has none or
    /// the row lacks one. A delete removes the events of its row from the replay window by it.
    pub row: Option<u64>,
    /// For an update that moved the row to another owner: the old row's owner. The frame then
    /// carries no `old_record` (the old row was someone else's), and the router removes the old
    /// owner's earlier events of the row from the replay window.
    pub moved_from: Option<Uuid>,
    /// `{"type":…,"schema":…,"table":…,"cursor":…,"commit_timestamp":…,"record":{…}}` (an
    /// update may end with `,"old_record":{…}`; a delete has `"old_record":{…}` instead of
    /// `record`), UTF-8.
    native: Bytes,
    /// The `record` object inside `native`; a delete's `old_record`.
    record: Span,
    /// An update's `old_record` object inside `native`, when the old tuple was sent.
    old_record: Option<Span>,
    /// The contents (JSON-escaped, without quotes) of the `event_type` string inside `native`.
    event_type: Option<Span>,
    /// Other encodings (the Supabase frames), built on first use and shared, by key.
    encodings: Mutex<Vec<(Box<str>, Bytes)>>,
}

/// What [`Event::from_frame`] needs beside the frame: the fields of [`Event`] of the same names.
#[derive(Debug, Clone)]
pub struct FrameMeta {
    /// [`Event::cursor`].
    pub cursor: Cursor,
    /// [`Event::commit_time_us`] (Unix µs).
    pub commit_time_us: i64,
    /// [`Event::operation`].
    pub operation: Operation,
    /// [`Event::relation`].
    pub relation: Arc<Relation>,
    /// [`Event::owner`].
    pub owner: Option<Uuid>,
    /// [`Event::row`].
    pub row: Option<u64>,
    /// [`Event::moved_from`].
    pub moved_from: Option<Uuid>,
}

/// Most cached encodings per event.
const MAX_ENCODINGS: usize = 16;

/// What an event costs beside its own block and its frame's: the `Bytes` header allocated when
/// the frame is first shared (24 bytes in a 32-byte block); the event's slots in the window's
/// and its owner's deques (8 bytes each, a deque up to twice as long as it is full); and 96
/// bytes the allocator holds beyond those blocks (fragmentation), measured: the relay's RSS
/// grew 832 bytes per event of ≈ 480-byte frames where the blocks add up to ≈ 720
/// (BENCHMARKS.md §5, "Compact events").
const SHARED_OVERHEAD: usize = 32 + 2 * 2 * 8 + 96;

/// The heap block the allocator hands out for `n` bytes (glibc malloc: an 8-byte size word,
/// rounded up to 16 bytes).
const fn block(n: usize) -> usize {
    (n + 8).next_multiple_of(16)
}

impl Event {
    /// Builds the event, routed by `owner_column`'s value, and encodes its native frame once.
    /// `record` is consumed: the event keeps its JSON, not the map. For a delete `record` is
    /// the old row (see [`Event::change`]).
    pub fn new(
        cursor: Cursor,
        commit_time_us: i64,
        operation: Operation,
        table: (Arc<Relation>, &str),
        record: Record,
    ) -> Event {
        Event::change(cursor, commit_time_us, operation, table, record, None)
    }

    /// [`Event::new`] with an update's old row (`old`, written as `old_record` after `record`
    /// unless its owner differs from the new row's: see [`Event::moved_from`]; ignored for
    /// inserts and deletes). For a delete, `record` is the old row: it is written
    /// as `old_record`, and the owner is read from it.
    pub fn change(
        cursor: Cursor,
        commit_time_us: i64,
        operation: Operation,
        (relation, owner_column): (Arc<Relation>, &str),
        record: Record,
        old: Option<Record>,
    ) -> Event {
        let owner_of = |row: &Record| {
            row.get(owner_column)
                .and_then(|v| v.as_str())
                .and_then(|s| Uuid::parse_str(s).ok())
        };
        let owner = owner_of(&record);
        // An old row of another owner is not this owner's to see (its values were written
        // under the old owner's rights): no `old_record` then.
        let moved_from = match (operation, &old) {
            (Operation::Update, Some(old)) => owner_of(old).filter(|was| Some(*was) != owner),
            _ => None,
        };
        let old = if moved_from.is_some() { None } else { old };
        let mut frame = Vec::with_capacity(256);
        frame.extend_from_slice(b"{\"type\":\"");
        frame.extend_from_slice(operation.as_str().as_bytes());
        frame.extend_from_slice(b"\",\"schema\":");
        record::write_json(&mut frame, &relation.schema);
        frame.extend_from_slice(b",\"table\":");
        record::write_json(&mut frame, &relation.name);
        frame.extend_from_slice(b",\"cursor\":\"");
        frame.extend_from_slice(cursor.to_string().as_bytes());
        frame.extend_from_slice(b"\",\"commit_timestamp\":\"");
        frame.extend_from_slice(format_unix_us(commit_time_us).as_bytes());
        frame.extend_from_slice(match operation {
            Operation::Delete => b"\",\"old_record\":".as_slice(),
            Operation::Insert | Operation::Update => b"\",\"record\":",
        });
        let (record, event_type) = record::write_record(&mut frame, &record, "event_type");
        let old_record = match (operation, old) {
            (Operation::Update, Some(old)) => {
                frame.extend_from_slice(b",\"old_record\":");
                Some(record::write_record(&mut frame, &old, "").0)
            }
            _ => None,
        };
        frame.push(b'}');
        Event {
            cursor,
            commit_time_us,
            operation,
            relation,
            owner,
            row: None,
            moved_from,
            native: frozen(frame),
            record,
            old_record,
            event_type,
            encodings: Mutex::new(Vec::new()),
        }
    }

    /// Rebuilds an event from a native frame that [`Event::change`] wrote (on another relay
    /// node, carried by JetStream) and what the frame does not say itself: `meta`. The frame
    /// is kept as it is, so every node writes the same bytes to its sessions.
    ///
    /// Errors: `None` when `frame` is not UTF-8 JSON with the `record` (a delete's
    /// `old_record`) object `meta.operation` implies.
    pub fn from_frame(frame: Bytes, meta: FrameMeta) -> Option<Event> {
        #[derive(Deserialize)]
        struct Parts<'a> {
            #[serde(borrow)]
            record: Option<&'a RawValue>,
            #[serde(borrow)]
            old_record: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct Typed<'a> {
            #[serde(borrow)]
            event_type: Option<&'a RawValue>,
        }
        let text = std::str::from_utf8(&frame).ok()?;
        let parts: Parts = serde_json::from_str(text).ok()?;
        let (row, old) = match meta.operation {
            Operation::Delete => (parts.old_record?, None),
            Operation::Insert | Operation::Update => (parts.record?, parts.old_record),
        };
        let record = record::span_in(text, row.get())?;
        let old_record = match old {
            Some(old) => Some(record::span_in(text, old.get())?),
            None => None,
        };
        let typed: Typed = serde_json::from_str(row.get()).ok()?;
        let event_type = typed
            .event_type
            .map(RawValue::get)
            .filter(|raw| raw.len() >= 2 && raw.starts_with('"'))
            .and_then(|raw| record::span_in(text, &raw[1..raw.len() - 1]));
        Some(Event {
            cursor: meta.cursor,
            commit_time_us: meta.commit_time_us,
            operation: meta.operation,
            relation: meta.relation,
            owner: meta.owner,
            row: meta.row,
            moved_from: meta.moved_from,
            native: frame,
            record,
            old_record,
            event_type,
            encodings: Mutex::new(Vec::new()),
        })
    }

    /// The encoding named `key`, built by `encode` the first time any session asks for it and
    /// shared afterwards: sessions that need the same bytes (same protocol version, topic,
    /// join_ref and binding ids) cost one encoding, not one each. The bytes are UTF-8.
    pub fn encoded(&self, key: &str, encode: impl FnOnce(&Event) -> String) -> Bytes {
        if let Some(bytes) = self.cached(key) {
            return bytes;
        }
        // Encode without holding the lock: encoders may ask for other encodings of this event.
        let bytes = frozen(encode(self).into_bytes());
        let mut encodings = self.encodings.lock().unwrap_or_else(|e| e.into_inner());
        match encodings.iter().find(|(k, _)| &**k == key) {
            // Another session encoded it meanwhile: keep the first, so all share one buffer.
            Some((_, first)) => first.clone(),
            // Past a few variants (many topics or join refs), sharing stops paying: the lookup
            // would grow with the number of sessions. Those get their own bytes.
            None if encodings.len() >= MAX_ENCODINGS => bytes,
            None => {
                encodings.push((Box::from(key), bytes.clone()));
                bytes
            }
        }
    }

    fn cached(&self, key: &str) -> Option<Bytes> {
        let encodings = self.encodings.lock().unwrap_or_else(|e| e.into_inner());
        encodings
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, bytes)| bytes.clone())
    }

    /// The native-protocol frame (`{"type":"insert",…}`, UTF-8 JSON), encoded once and shared.
    pub fn native_frame(&self) -> Bytes {
        self.native.clone()
    }

    /// Size of the encoded native frame, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.native.len()
    }

    /// The row as JSON text, `{"column":value,…}` in column order: the very bytes of the
    /// native frame's `record`, for encoders that embed the row (the Supabase payload).
    pub fn record_json(&self) -> &str {
        record::str_at(&self.native, self.record).unwrap_or("{}")
    }

    /// An update's old row as JSON text, when the table's replica identity sent it (the whole
    /// row under `REPLICA IDENTITY FULL`, else only changed key columns); a delete's old row
    /// (the same text as [`Event::record_json`]); `None` otherwise.
    pub fn old_record_json(&self) -> Option<&str> {
        match self.operation {
            Operation::Delete => Some(self.record_json()),
            Operation::Update => record::str_at(&self.native, self.old_record?),
            Operation::Insert => None,
        }
    }

    /// The row, decoded from the frame: column name → JSON value, in column order. Allocates
    /// the whole map; to test a few columns use [`Event::select`].
    pub fn record(&self) -> Record {
        serde_json::from_str(self.record_json()).unwrap_or_default()
    }

    /// The columns of the row named in `columns` (those the row has), decoded from the frame in
    /// one pass that skips the others: what a `postgres_changes` filter compares.
    pub fn select(&self, columns: &[&str]) -> Record {
        record::select(self.record_json(), columns)
    }

    /// Value of the row's `event_type` column when it is a string (the native sessions' type
    /// filter); borrowed from the frame unless the JSON escapes a character.
    pub fn event_type(&self) -> Option<Cow<'_, str>> {
        let span = self.event_type?;
        let raw = record::str_at(&self.native, span)?;
        if !raw.contains('\\') {
            return Some(Cow::Borrowed(raw));
        }
        let quoted = record::str_at(&self.native, span.widen(1))?;
        match serde_json::from_str::<Value>(quoted) {
            Ok(Value::String(s)) => Some(Cow::Owned(s)),
            _ => None,
        }
    }

    /// Memory the event costs in the replay window, in bytes: the struct and the frame as the
    /// allocator rounds them, the `Arc` counters, the shared `Bytes` header, the deque slots and
    /// the allocator's measured slack: 816 bytes for a 480-byte frame, within ±20 % of the
    /// relay's RSS growth per event at the soak harness's rows (BENCHMARKS.md §5). What `replay.max_bytes` caps. Cached Supabase encodings are not
    /// counted: the window drops them ([`Event::drop_encodings`]).
    pub fn approx_bytes(&self) -> usize {
        // The Arc's block holds two counters and the struct.
        block(16 + std::mem::size_of::<Event>()) + block(self.native.len()) + SHARED_OVERHEAD
    }

    /// Drops the cached Supabase encodings: once every session has written the event they are
    /// dead weight in the replay window (a late reader encodes again).
    pub fn drop_encodings(&self) {
        let mut encodings = self.encodings.lock().unwrap_or_else(|e| e.into_inner());
        *encodings = Vec::new();
    }
}

/// The [`Event::row`] key of a row of `schema.table` whose key columns (in key order) have
/// the values `key`: FNV-1a (64 bits) over the names and the values' JSON text, each followed
/// by a NUL. `None` when `key` is empty or a value is missing or null.
pub fn row_key(schema: &str, table: &str, key: &[Option<&Value>]) -> Option<u64> {
    if key.is_empty() {
        return None;
    }
    let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
    hash.field(schema.as_bytes());
    hash.field(table.as_bytes());
    for value in key {
        match value {
            None | Some(Value::Null) => return None,
            Some(v) => {
                // The JSON text is hashed as serde_json writes it, never allocated.
                serde_json::to_writer(&mut hash, v).ok()?;
                hash.field(&[]);
            }
        }
    }
    Some(hash.0)
}

/// FNV-1a (64 bits), fed directly or through [`std::io::Write`].
struct Fnv(u64);

impl Fnv {
    fn eat(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// `bytes`, then the NUL that ends a field.
    fn field(&mut self, bytes: &[u8]) {
        self.eat(bytes);
        self.eat(&[0]);
    }
}

impl std::io::Write for Fnv {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.eat(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A buffer as [`Bytes`] without spare capacity, so no slack stays allocated with the event.
fn frozen(mut buf: Vec<u8>) -> Bytes {
    buf.shrink_to_fit();
    Bytes::from(buf)
}

/// Microseconds since the Unix epoch, now.
pub fn now_unix_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
