//! Decoder for messages of the `pgoutput` logical replication output plugin,
//! protocol version 1.
//!
//! Source for every wire layout here: PostgreSQL documentation, "Frontend/Backend
//! Protocol" → "Logical Replication Message Formats"
//! (<https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>).
//! All integers are big-endian, strings are NUL-terminated.
//!
//! [`Decoder::decode`] takes one pgoutput message (the payload of one XLogData
//! message), keeps the relations described by Relation messages in a cache, and
//! turns row changes into [`Record`]s whose values come from [`text_to_json`].

//!
//! The decoded shapes ([`Relation`], [`Column`], [`Record`]) and the value conversions
//! ([`text_to_json`]) belong to the domain model, [`crate::model`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::model::{text_to_json, Column, Record, Relation};

/// One decoded pgoutput message (PostgreSQL docs, "Logical Replication Message Formats").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `'B'`: a transaction starts.
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: u64,
        /// Commit time, µs since the PostgreSQL epoch 2000-01-01 00:00:00 UTC.
        commit_time_us: i64,
        /// Transaction id.
        xid: u32,
    },
    /// `'C'`: a transaction committed (the Int8 flags field is unused and dropped).
    Commit {
        /// LSN of the commit record.
        commit_lsn: u64,
        /// End LSN of the transaction (the position to confirm as flushed).
        end_lsn: u64,
        /// Commit time, µs since the PostgreSQL epoch 2000-01-01 00:00:00 UTC.
        commit_time_us: i64,
    },
    /// `'R'`: the (new) description of a relation; it is also stored in the cache.
    Relation(Arc<Relation>),
    /// `'I'`: a row was inserted.
    Insert {
        /// The relation, as last described by a Relation message.
        relation: Arc<Relation>,
        /// The new row.
        new: Record,
    },
    /// `'U'`: a row was updated.
    Update {
        /// The relation, as last described by a Relation message.
        relation: Arc<Relation>,
        /// `None` if no old tuple was sent (key unchanged, identity not FULL); `'K'`:
        /// key columns only; `'O'`: the full old row minus unchanged TOASTed columns.
        old: Option<Record>,
        /// The new row (unchanged TOASTed columns absent).
        new: Record,
    },
    /// `'D'`: a row was deleted.
    Delete {
        /// The relation, as last described by a Relation message.
        relation: Arc<Relation>,
        /// Old row: key columns only (`'K'`) or the full row (`'O'`).
        old: Record,
    },
    /// `'T'`: relations were truncated (the CASCADE / RESTART IDENTITY option bits are dropped).
    Truncate {
        /// The truncated relations, in message order.
        relations: Vec<Arc<Relation>>,
    },
    /// A message that is skipped, carrying its tag: `b'Y'` Type, `b'O'` Origin, `b'M'` Message.
    /// Its body is not validated.
    Ignored(u8),
}

/// Why a pgoutput message could not be decoded. `message` names the message type
/// (e.g. `"Insert"`) and `field` the field being read, as in the PostgreSQL docs
/// "Logical Replication Message Formats".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload had no bytes at all.
    #[error("empty pgoutput message")]
    Empty,
    /// The first byte is not a protocol-version-1 message tag.
    #[error("unknown pgoutput message tag {}", ByteDisplay(*.0))]
    UnknownTag(u8),
    /// The message ended while reading `field`.
    #[error("truncated {message} message: missing {field}")]
    Truncated {
        /// Message type.
        message: &'static str,
        /// Field that could not be read.
        field: &'static str,
    },
    /// Bytes were left after the last field of the message.
    #[error("{count} unexpected trailing byte(s) after {message} message")]
    TrailingBytes {
        /// Message type.
        message: &'static str,
        /// Number of bytes left over.
        count: usize,
    },
    /// A count or length field was negative.
    #[error("invalid {field} {count} in {message} message")]
    InvalidCount {
        /// Message type.
        message: &'static str,
        /// The count or length field.
        field: &'static str,
        /// The value read.
        count: i64,
    },
    /// A row message referenced a relation OID no Relation message has described.
    #[error("relation OID {0} was not described by a Relation message")]
    UnknownRelation(u32),
    /// A tuple marker (`'N'`, `'K'`, `'O'`) other than the ones allowed here.
    #[error("unexpected tuple kind {} in {message} message, expected {expected}", ByteDisplay(*.found))]
    UnexpectedTupleKind {
        /// Message type.
        message: &'static str,
        /// The allowed markers.
        expected: &'static str,
        /// The byte found.
        found: u8,
    },
    /// A TupleData column kind other than `'n'`, `'u'`, `'t'`, `'b'`.
    #[error("unknown column kind {} for column {column} in {message} message", ByteDisplay(*.kind))]
    UnknownColumnKind {
        /// Message type.
        message: &'static str,
        /// Zero-based column index.
        column: usize,
        /// The byte found.
        kind: u8,
    },
    /// A TupleData column count differs from the cached relation's column count.
    #[error("relation OID {relation} has {expected} column(s) but the tuple has {found}")]
    ColumnCountMismatch {
        /// Relation OID.
        relation: u32,
        /// Columns in the cached Relation message.
        expected: usize,
        /// Columns in the TupleData.
        found: usize,
    },
    /// A name or text column value was not valid UTF-8.
    #[error("invalid UTF-8 in {field} of {message} message")]
    InvalidUtf8 {
        /// Message type.
        message: &'static str,
        /// Field (`"column value"` for text values).
        field: &'static str,
    },
}

/// Displays a byte as `'X' (0x58)` when printable ASCII, else as `0x05`.
struct ByteDisplay(u8);

impl fmt::Display for ByteDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' (0x{:02x})", self.0 as char, self.0)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// Stateful pgoutput decoder: holds the relation cache (OID → [`Relation`]) fed by
/// Relation messages, which the server sends before the first row change of a
/// relation in a session and again after its schema changes.
#[derive(Debug, Default)]
pub struct Decoder {
    relations: HashMap<u32, Arc<Relation>>,
}

impl Decoder {
    /// An empty decoder (no relations known).
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode one pgoutput protocol-version-1 message: the XLogData payload, tag byte
    /// first (PostgreSQL docs, "Logical Replication Message Formats"). A Relation
    /// message replaces the cached entry for its OID and is returned. Never panics.
    ///
    /// # Errors
    /// Any [`DecodeError`]: empty payload, unknown tag (including the streaming and
    /// two-phase tags of protocol versions 2+), malformed or truncated body, or a row
    /// for a relation not in the cache or with another column count. On error the
    /// cache is unchanged.
    pub fn decode(&mut self, data: &[u8]) -> Result<Change, DecodeError> {
        let (&tag, body) = data.split_first().ok_or(DecodeError::Empty)?;
        match tag {
            b'B' => Cursor::read(body, "Begin", |c| {
                Ok(Change::Begin {
                    final_lsn: c.u64("final LSN")?,
                    commit_time_us: c.i64("commit timestamp")?,
                    xid: c.u32("xid")?,
                })
            }),
            b'C' => Cursor::read(body, "Commit", |c| {
                c.u8("flags")?;
                Ok(Change::Commit {
                    commit_lsn: c.u64("commit LSN")?,
                    end_lsn: c.u64("end LSN")?,
                    commit_time_us: c.i64("commit timestamp")?,
                })
            }),
            b'R' => self.decode_relation(body),
            b'I' => {
                let mut c = Cursor::new(body, "Insert");
                let relation = self.lookup(c.u32("relation OID")?)?;
                match c.u8("tuple kind")? {
                    b'N' => {}
                    found => return Err(c.unexpected_kind("'N'", found)),
                }
                let new = read_tuple(&mut c, &relation, false)?;
                c.finish(Change::Insert { relation, new })
            }
            b'U' => {
                let mut c = Cursor::new(body, "Update");
                let relation = self.lookup(c.u32("relation OID")?)?;
                let mut kind = c.u8("tuple kind")?;
                let old = match kind {
                    b'K' | b'O' => {
                        let old = read_tuple(&mut c, &relation, kind == b'K')?;
                        kind = c.u8("new tuple kind")?;
                        Some(old)
                    }
                    _ => None,
                };
                if kind != b'N' {
                    let expected = if old.is_some() {
                        "'N'"
                    } else {
                        "'K', 'O' or 'N'"
                    };
                    return Err(c.unexpected_kind(expected, kind));
                }
                let new = read_tuple(&mut c, &relation, false)?;
                c.finish(Change::Update { relation, old, new })
            }
            b'D' => {
                let mut c = Cursor::new(body, "Delete");
                let relation = self.lookup(c.u32("relation OID")?)?;
                let kind = c.u8("tuple kind")?;
                if kind != b'K' && kind != b'O' {
                    return Err(c.unexpected_kind("'K' or 'O'", kind));
                }
                let old = read_tuple(&mut c, &relation, kind == b'K')?;
                c.finish(Change::Delete { relation, old })
            }
            b'T' => {
                let mut c = Cursor::new(body, "Truncate");
                let count = c.i32("relation count")?;
                let count = c.count(i64::from(count), "relation count")?;
                c.u8("options")?;
                let mut relations = Vec::with_capacity(count.min(c.buf.len() / 4));
                for _ in 0..count {
                    relations.push(self.lookup(c.u32("relation OID")?)?);
                }
                c.finish(Change::Truncate { relations })
            }
            b'Y' | b'O' | b'M' => Ok(Change::Ignored(tag)),
            other => Err(DecodeError::UnknownTag(other)),
        }
    }

    /// The cached relation for `oid`, if a Relation message has described it.
    pub fn relation(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&oid)
    }

    fn lookup(&self, oid: u32) -> Result<Arc<Relation>, DecodeError> {
        self.relations
            .get(&oid)
            .cloned()
            .ok_or(DecodeError::UnknownRelation(oid))
    }

    fn decode_relation(&mut self, body: &[u8]) -> Result<Change, DecodeError> {
        let mut c = Cursor::new(body, "Relation");
        let oid = c.u32("relation OID")?;
        let schema = match c.cstr("namespace")? {
            "" => "pg_catalog",
            s => s,
        };
        let schema = schema.to_owned();
        let name = c.cstr("relation name")?.to_owned();
        let replica_identity = c.u8("replica identity")?;
        let n = c.i16("column count")?;
        let n = c.count(i64::from(n), "column count")?;
        // Each column takes at least 10 bytes; don't trust the count for the capacity.
        let mut columns = Vec::with_capacity(n.min(c.buf.len() / 10));
        for _ in 0..n {
            let flags = c.u8("column flags")?;
            let name = c.cstr("column name")?.to_owned();
            let type_oid = c.u32("column type OID")?;
            let type_modifier = c.i32("column type modifier")?;
            let is_key = flags & 1 != 0;
            columns.push(Column {
                name,
                type_oid,
                type_modifier,
                is_key,
            });
        }
        let relation = Arc::new(Relation {
            oid,
            schema,
            name,
            replica_identity,
            columns,
        });
        let change = c.finish(Change::Relation(Arc::clone(&relation)))?;
        self.relations.insert(oid, relation);
        Ok(change)
    }
}

/// Reads one TupleData. With `key_only` (a `'K'` old tuple) the NULL placeholders
/// the server sends for non-key columns are left out.
fn read_tuple(c: &mut Cursor<'_>, rel: &Relation, key_only: bool) -> Result<Record, DecodeError> {
    let n = c.i16("tuple column count")?;
    let n = c.count(i64::from(n), "tuple column count")?;
    if n != rel.columns.len() {
        return Err(DecodeError::ColumnCountMismatch {
            relation: rel.oid,
            expected: rel.columns.len(),
            found: n,
        });
    }
    let mut record = Map::with_capacity(n);
    for (index, col) in rel.columns.iter().enumerate() {
        let value = match c.u8("column kind")? {
            b'n' if key_only && !col.is_key => continue,
            b'n' => Value::Null,
            b'u' => continue,
            b't' => {
                let bytes = c.value_bytes()?;
                let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 {
                    message: c.message,
                    field: "column value",
                })?;
                text_to_json(col.type_oid, text)
            }
            b'b' => Value::String(bytea_hex(c.value_bytes()?)),
            kind => {
                let message = c.message;
                return Err(DecodeError::UnknownColumnKind {
                    message,
                    column: index,
                    kind,
                });
            }
        };
        record.insert(col.name.clone(), value);
    }
    Ok(record)
}

/// `\x` + lowercase hex, PostgreSQL's `bytea_output = hex` text form.
fn bytea_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    for &b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Defines `fn $t(&mut self, field) -> Result<$t, DecodeError>` big-endian readers.
macro_rules! be_readers {
    ($($t:ident),*) => {$(
        fn $t(&mut self, field: &'static str) -> Result<$t, DecodeError> {
            self.array(field).map($t::from_be_bytes)
        }
    )*};
}

/// Bounds-checked big-endian reader over one message body.
struct Cursor<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Self { buf, message }
    }

    /// Reads the whole body of `message` with `fields` (struct fields are evaluated in the
    /// order written, which is the wire order) and refuses trailing bytes.
    fn read(
        buf: &'a [u8],
        message: &'static str,
        fields: impl FnOnce(&mut Self) -> Result<Change, DecodeError>,
    ) -> Result<Change, DecodeError> {
        let mut c = Self::new(buf, message);
        let change = fields(&mut c)?;
        c.finish(change)
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    be_readers!(u8, i16, i32, u32, i64, u64);

    fn cstr(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let message = self.message;
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated { message, field })?;
        let s = std::str::from_utf8(&self.buf[..nul])
            .map_err(|_| DecodeError::InvalidUtf8 { message, field })?;
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    fn count(&self, count: i64, field: &'static str) -> Result<usize, DecodeError> {
        let message = self.message;
        usize::try_from(count).map_err(|_| DecodeError::InvalidCount {
            message,
            field,
            count,
        })
    }

    /// Int32 length + that many bytes (TupleData `'t'` / `'b'`).
    fn value_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.i32("value length")?;
        let len = self.count(i64::from(len), "value length")?;
        self.take(len, "column value")
    }

    fn unexpected_kind(&self, expected: &'static str, found: u8) -> DecodeError {
        DecodeError::UnexpectedTupleKind {
            message: self.message,
            expected,
            found,
        }
    }

    fn finish(self, change: Change) -> Result<Change, DecodeError> {
        match self.buf.len() {
            0 => Ok(change),
            count => Err(DecodeError::TrailingBytes {
                message: self.message,
                count,
            }),
        }
    }
}

#[cfg(test)]
#[path = "pgoutput_tests.rs"]
mod tests;
