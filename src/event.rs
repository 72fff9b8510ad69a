//! The [`Event`] routed to sessions, its [`Cursor`], and its native JSON encoding.
//!
//! An event is encoded once, when it is decoded from the slot; every session that receives it
//! writes the same shared bytes (`Utf8Bytes` is a reference-counted buffer).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::replication::pgoutput::format_unix_us;
use crate::replication::pgoutput::{Record, Relation};

/// Position of a row in the WAL: (commit LSN of its transaction, index of the row inside the
/// transaction, from 0), tagged with the WAL history it belongs to. Within one history cursors
/// are totally ordered, and the same on every relay that reads the same WAL.
///
/// Encoded for clients as 32 lowercase hex digits: 16 for the LSN, 8 for the index, 8 for the
/// history. Opaque, URL-safe, and within one history ordered the same way as strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor {
    /// Commit LSN of the transaction (the `final_lsn` of its Begin message).
    pub lsn: u64,
    /// Position of the row inside its transaction.
    pub index: u32,
    /// The WAL history ([`history_id`]): cursors of different histories are not comparable.
    pub history: u32,
}

impl Cursor {
    /// The position just before LSN `lsn`: every row of a transaction that commits at or after
    /// `lsn` is newer, every row of one that committed before it is not.
    pub fn before(lsn: u64, history: u32) -> Cursor {
        match lsn.checked_sub(1) {
            Some(lsn) => Cursor {
                lsn,
                index: u32::MAX,
                history,
            },
            None => Cursor {
                lsn: 0,
                index: 0,
                history,
            },
        }
    }
}

/// The WAL history a cursor belongs to: a 32-bit FNV-1a hash of the cluster's system
/// identifier and timeline (IDENTIFY_SYSTEM). A restore from a backup or a promotion starts a new
/// timeline, a new cluster a new system identifier: cursors of the old history are then refused
/// as incomplete instead of being compared with LSNs they have nothing to do with.
pub fn history_id(system_id: &str, timeline: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in system_id.bytes().chain(timeline.to_be_bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:08x}{:08x}", self.lsn, self.index, self.history)
    }
}

/// A string that is not a cursor this relay issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor: expected the 32 hex digits of an event's `cursor`")]
pub struct InvalidCursor;

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidCursor);
        }
        let hex32 = |part: &str| u32::from_str_radix(part, 16).map_err(|_| InvalidCursor);
        Ok(Cursor {
            lsn: u64::from_str_radix(&s[..16], 16).map_err(|_| InvalidCursor)?,
            index: hex32(&s[16..24])?,
            history: hex32(&s[24..])?,
        })
    }
}

/// The kind of change a row event carries; in `[[tables]]` `operations`, `"insert"` or
/// `"update"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// A new row.
    Insert,
    /// A changed row (`record` is the new version).
    Update,
}

impl Operation {
    /// `insert` or `update`: the native frame's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
        }
    }
}

/// One row change, ready to route.
#[derive(Debug)]
pub struct Event {
    /// Where the row stands in the WAL.
    pub cursor: Cursor,
    /// Commit timestamp of the row's transaction, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// Insert or update.
    pub operation: Operation,
    /// The table, with its columns as the last Relation message described them.
    pub relation: Arc<Relation>,
    /// Value of the table's owner column (`[[tables]]` `owner_column`, default `user_id`), when
    /// it is a UUID: the routing key.
    pub owner: Option<Uuid>,
    /// Value of `event_type`, for the sessions' optional type filter.
    pub event_type: Option<Box<str>>,
    /// The row: column name → JSON value, in column order.
    pub record: Record,
    native: Utf8Bytes,
    /// Other encodings (the Supabase frames), built on first use and shared, by key.
    encodings: Mutex<Vec<(Box<str>, Utf8Bytes)>>,
}

/// Most cached encodings per event.
const MAX_ENCODINGS: usize = 16;

#[derive(Serialize)]
struct NativeFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: &'a str,
    table: &'a str,
    cursor: String,
    commit_timestamp: String,
    record: &'a Record,
}

impl Event {
    /// Builds the event, routed by `owner_column`'s value, and encodes its native frame once.
    pub fn new(
        cursor: Cursor,
        commit_time_us: i64,
        operation: Operation,
        (relation, owner_column): (Arc<Relation>, &str),
        record: Record,
    ) -> Event {
        let owner = record
            .get(owner_column)
            .and_then(|v| v.as_str())
            .and_then(|s| Uuid::parse_str(s).ok());
        let event_type = record
            .get("event_type")
            .and_then(|v| v.as_str())
            .map(Box::from);
        let frame = NativeFrame {
            kind: operation.as_str(),
            schema: &relation.schema,
            table: &relation.name,
            cursor: cursor.to_string(),
            commit_timestamp: format_unix_us(commit_time_us),
            record: &record,
        };
        // Serializing a map of JSON values with string keys cannot fail.
        let native = serde_json::to_string(&frame).unwrap_or_default().into();
        Event {
            cursor,
            commit_time_us,
            operation,
            relation,
            owner,
            event_type,
            record,
            native,
            encodings: Mutex::new(Vec::new()),
        }
    }

    /// The encoding named `key`, built by `encode` the first time any session asks for it and
    /// shared afterwards: sessions that need the same bytes (same protocol version, topic,
    /// join_ref and binding ids) cost one encoding, not one each.
    pub fn encoded(&self, key: &str, encode: impl FnOnce(&Event) -> String) -> Utf8Bytes {
        if let Some(bytes) = self.cached(key) {
            return bytes;
        }
        // Encode without holding the lock: encoders may ask for other encodings of this event.
        let bytes = Utf8Bytes::from(encode(self));
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

    fn cached(&self, key: &str) -> Option<Utf8Bytes> {
        let encodings = self.encodings.lock().unwrap_or_else(|e| e.into_inner());
        encodings
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, bytes)| bytes.clone())
    }

    /// The native-protocol frame (`{"type":"insert",…}`), encoded once and shared.
    pub fn native_frame(&self) -> Utf8Bytes {
        self.native.clone()
    }

    /// Size of the encoded native frame, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.native.len()
    }

    /// Memory the event costs in the replay window, estimated in bytes as the struct plus 7 ×
    /// its native frame: the frame, the decoded row, the window's slots and allocator overhead.
    /// Calibrated against the relay's RSS growth per event at the soak harness's default rows
    /// (≈ 480-byte frames, ≈ 3.5 KB per event; BENCHMARKS.md §5). What `replay.max_bytes` caps.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Event>() + 7 * self.native.len()
    }

    /// Drops the cached Supabase encodings: once every session has written the event they are
    /// dead weight in the replay window (a late reader encodes again).
    pub fn drop_encodings(&self) {
        let mut encodings = self.encodings.lock().unwrap_or_else(|e| e.into_inner());
        *encodings = Vec::new();
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_unix_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_order_as_strings() {
        let history = history_id("7441040390381235290", 1);
        let at = |lsn, index| Cursor {
            lsn,
            index,
            history,
        };
        let (a, b, c) = (
            at(0x16B3_7A28, 2),
            at(0x16B3_7A28, 10),
            at(0x1_0000_0000, 0),
        );
        for x in [a, b, c] {
            assert_eq!(x.to_string().parse::<Cursor>(), Ok(x));
        }
        assert!(a < b && b < c);
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
        assert!("zz".parse::<Cursor>().is_err());
        assert!("g0000000000000000000000000000000"
            .parse::<Cursor>()
            .is_err());
        assert!(
            "000000000000000000000000".parse::<Cursor>().is_err(),
            "24 digits"
        );
        assert!(Cursor::before(0x100, history) < at(0x100, 0));
        assert!(Cursor::before(0x100, history) > at(0xff, 7));
        assert_ne!(history, history_id("7441040390381235290", 2));
    }

    #[test]
    fn an_encoding_is_built_once_and_may_nest() {
        let relation = Relation::fixture();
        let event = Event::new(
            Cursor::default(),
            0,
            Operation::Insert,
            (relation, "user_id"),
            Record::new(),
        );
        let mut calls = 0;
        let outer = event.encoded("outer", |e| {
            calls += 1;
            format!("[{}]", e.encoded("inner", |_| "x".into()))
        });
        assert_eq!(outer.as_str(), "[x]");
        assert_eq!(event.encoded("outer", |_| unreachable!()).as_str(), "[x]");
        assert_eq!(calls, 1);
    }

    #[test]
    fn timestamps_have_microseconds_and_z() {
        assert_eq!(
            format_unix_us(1_763_640_000_123_456),
            "2025-11-20T12:00:00.123456Z"
        );
        assert_eq!(format_unix_us(0), "1970-01-01T00:00:00.000000Z");
    }
}
