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

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, Timelike};
use serde_json::{Map, Number, Value};

/// Built-in PostgreSQL type OIDs (source: the `pg_type` system catalog,
/// `src/include/catalog/pg_type.dat`; these OIDs are fixed across versions).
pub mod oid {
    /// `bool`
    pub const BOOL: u32 = 16;
    /// `bytea`
    pub const BYTEA: u32 = 17;
    /// `int8` (`bigint`)
    pub const INT8: u32 = 20;
    /// `int2` (`smallint`)
    pub const INT2: u32 = 21;
    /// `int4` (`integer`)
    pub const INT4: u32 = 23;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `json`
    pub const JSON: u32 = 114;
    /// `float4` (`real`)
    pub const FLOAT4: u32 = 700;
    /// `float8` (`double precision`)
    pub const FLOAT8: u32 = 701;
    /// `bpchar` (`character(n)`)
    pub const BPCHAR: u32 = 1042;
    /// `varchar` (`character varying(n)`)
    pub const VARCHAR: u32 = 1043;
    /// `date`
    pub const DATE: u32 = 1082;
    /// `timestamp` (without time zone)
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz` (`timestamp with time zone`)
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `numeric`
    pub const NUMERIC: u32 = 1700;
    /// `uuid`
    pub const UUID: u32 = 2950;
    /// `jsonb`
    pub const JSONB: u32 = 3802;
}

/// One column of a relation, from the Relation (`'R'`) message
/// (PostgreSQL docs, "Logical Replication Message Formats" → Relation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// OID of the column's data type (see [`oid`] and [`type_name`]).
    pub type_oid: u32,
    /// Type modifier (`pg_attribute.atttypmod`), e.g. `VARCHAR(n)` → `n + 4`; `-1` when none.
    pub type_modifier: i32,
    /// Whether the column is part of the replica identity key (flags bit `1`).
    /// With `REPLICA IDENTITY FULL` every column is flagged.
    pub is_key: bool,
}

/// A relation (table) as last described by the server in a Relation (`'R'`)
/// message (PostgreSQL docs, "Logical Replication Message Formats" → Relation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID, the key used by Insert/Update/Delete/Truncate messages.
    pub oid: u32,
    /// Schema (namespace) name; the wire's empty string is reported as `"pg_catalog"`.
    pub schema: String,
    /// Relation name.
    pub name: String,
    /// `pg_class.relreplident` as an ASCII byte: `b'd'` default (primary key),
    /// `b'n'` nothing, `b'f'` full, `b'i'` index.
    pub replica_identity: u8,
    /// Published columns, in the order used by every TupleData for this relation.
    pub columns: Vec<Column>,
}

/// A decoded row: column name → JSON value (from [`text_to_json`]), in the
/// relation's column order. Unchanged TOASTed columns (`'u'`, value not sent)
/// are absent; SQL `NULL` is `Value::Null`.
pub type Record = Map<String, Value>;

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
            b'B' => {
                let mut c = Cursor::new(body, "Begin");
                let final_lsn = c.u64("final LSN")?;
                let commit_time_us = c.i64("commit timestamp")?;
                let xid = c.u32("xid")?;
                c.finish(Change::Begin {
                    final_lsn,
                    commit_time_us,
                    xid,
                })
            }
            b'C' => {
                let mut c = Cursor::new(body, "Commit");
                c.u8("flags")?;
                let commit_lsn = c.u64("commit LSN")?;
                let end_lsn = c.u64("end LSN")?;
                let commit_time_us = c.i64("commit timestamp")?;
                c.finish(Change::Commit {
                    commit_lsn,
                    end_lsn,
                    commit_time_us,
                })
            }
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

/// Convert one text-format column value (PostgreSQL's type output function
/// format, as pgoutput sends with `binary` off) to JSON by its type OID. Never
/// panics; whenever a rule below does not apply the result is the text as a JSON
/// string.
///
/// * `bool`: `"t"` / `"f"` → `true` / `false`.
/// * `int2`, `int4`, `int8`: JSON integer.
/// * `float4`, `float8`: JSON number (the decimal text read as `f64`, so `float4`
///   `1.1` stays `1.1`); `NaN`, `Infinity`, `-Infinity` stay strings.
/// * `numeric`: JSON integer if it fits `i64`; else a JSON number if the `f64`
///   reading prints back to the same decimal value (trailing fractional zeros are
///   not significant: `"12.50"` → `12.5`); else (too many digits, `NaN`,
///   `Infinity`) a string.
/// * `json`, `jsonb`: the parsed JSON value (large numbers become `f64`).
/// * `timestamptz`: ISO output (PostgreSQL docs, "Date/Time Types" → "Date/Time
///   Output", `DateStyle` ISO) `YYYY-MM-DD HH:MM:SS[.f…][±HH[:MM[:SS]]]`, any offset
///   → RFC 3339 UTC with exactly 6 fractional digits and `Z`:
///   `"2026-11-20 17:30:00+05:30"` → `"2026-11-20T12:00:00.000000Z"`. `infinity`,
///   `-infinity`, BC dates, years outside 0000–9999 after conversion to UTC and
///   any other layout stay strings.
/// * `timestamp`: same layout without offset → `"2026-11-20T12:00:00.120000"` (no `Z`).
/// * everything else (`uuid`, `text`, `varchar`, `bpchar`, `date`, arrays, …): string.
pub fn text_to_json(type_oid: u32, text: &str) -> Value {
    let value = match type_oid {
        oid::BOOL => match text {
            "t" => Some(Value::Bool(true)),
            "f" => Some(Value::Bool(false)),
            _ => None,
        },
        oid::INT2 | oid::INT4 | oid::INT8 => text.parse::<i64>().ok().map(Value::from),
        oid::FLOAT4 | oid::FLOAT8 => text
            .parse()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number),
        oid::NUMERIC => numeric_to_json(text),
        oid::JSON | oid::JSONB => serde_json::from_str(text).ok(),
        oid::TIMESTAMPTZ => iso_timestamp(text, true).map(Value::String),
        oid::TIMESTAMP => iso_timestamp(text, false).map(Value::String),
        _ => None,
    };
    value.unwrap_or_else(|| Value::String(text.to_owned()))
}

fn numeric_to_json(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::from(i));
    }
    let f: f64 = text.parse().ok()?;
    // Rust prints the shortest decimal that round-trips, without exponent, like
    // numeric's output minus trailing fractional zeros.
    let significant = match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.'),
        false => text,
    };
    (f.to_string() == significant).then(|| Number::from_f64(f).map(Value::Number))?
}

/// Parses `YYYY-MM-DD[ T]HH:MM:SS[.f{1,6}]` followed, iff `with_tz`, by an offset
/// `±HH[:MM[:SS]]` or `Z`, and formats it as RFC 3339 (UTC + `Z` iff `with_tz`).
fn iso_timestamp(text: &str, with_tz: bool) -> Option<String> {
    let b = text.as_bytes();
    let num = |digits: &[u8]| {
        let fold = |acc: u32, &d: &u8| d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'));
        digits.iter().try_fold(0, fold)
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if b.len() < 19 || !matches!(b[10], b' ' | b'T') || separators.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(num(&b[..4])?).ok()?,
        num(&b[5..7])?,
        num(&b[8..10])?,
    )?;
    let mut rest = &b[19..];
    let mut micros = 0;
    if let [b'.', fraction @ ..] = rest {
        let n = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if !(1..=6).contains(&n) {
            return None;
        }
        micros = num(&fraction[..n])? * 10u32.pow(6 - n as u32);
        rest = &fraction[n..];
    }
    let naive =
        date.and_hms_micro_opt(num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?, micros)?;
    let utc = match (with_tz, rest) {
        (false, []) => naive,
        (true, [b'Z']) => naive,
        (true, [sign @ (b'+' | b'-'), hms @ ..]) if matches!(hms.len(), 2 | 5 | 8) => {
            if hms.iter().skip(2).step_by(3).any(|&c| c != b':') {
                return None;
            }
            let part = |i: usize| hms.get(i..i + 2).map_or(Some(0), num);
            let secs = i32::try_from(part(0)? * 3600 + part(3)? * 60 + part(6)?).ok()?;
            let offset = FixedOffset::east_opt(if *sign == b'-' { -secs } else { secs })?;
            naive.checked_sub_offset(offset)?
        }
        _ => return None,
    };
    (0..=9999)
        .contains(&utc.year())
        .then(|| rfc3339(&utc, with_tz))
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff` (+ `Z`); years outside 0000–9999 in ISO 8601
/// expanded form (`+12345`, `-0005`).
fn rfc3339(dt: &NaiveDateTime, zulu: bool) -> String {
    let (y, us) = (dt.year(), (dt.nanosecond() / 1000).min(999_999));
    let (mo, d, h, mi, s) = (dt.month(), dt.day(), dt.hour(), dt.minute(), dt.second());
    let z = if zulu { "Z" } else { "" };
    let mut out = String::with_capacity(32);
    // Writing to a String cannot fail.
    let _ = match (0..=9999).contains(&y) {
        true => write!(
            out,
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}{z}"
        ),
        false => write!(
            out,
            "{y:+05}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}{z}"
        ),
    };
    out
}

/// PostgreSQL type name (`pg_type.typname`, source: `pg_type` catalog) for a type
/// OID, as Supabase Realtime reports `columns[].type`: every OID in [`oid`] (`"uuid"`,
/// `"timestamptz"`, `"text"`, `"jsonb"`, `"bool"`, `"int4"`, …, `"bpchar"`) plus
/// `"time"`, `"timetz"`, `"interval"`, `"inet"`, `"_text"`, `"_uuid"`, `"_int4"`,
/// `"_int8"`, `"_jsonb"`. Any other OID (e.g. a user-defined enum or domain, whose name
/// only a Type message carries) → `"unknown"`.
pub fn type_name(type_oid: u32) -> &'static str {
    match type_oid {
        oid::BOOL => "bool",
        oid::BYTEA => "bytea",
        oid::INT8 => "int8",
        oid::INT2 => "int2",
        oid::INT4 => "int4",
        oid::TEXT => "text",
        oid::JSON => "json",
        oid::FLOAT4 => "float4",
        oid::FLOAT8 => "float8",
        oid::BPCHAR => "bpchar",
        oid::VARCHAR => "varchar",
        oid::DATE => "date",
        oid::TIMESTAMP => "timestamp",
        oid::TIMESTAMPTZ => "timestamptz",
        oid::NUMERIC => "numeric",
        oid::UUID => "uuid",
        oid::JSONB => "jsonb",
        869 => "inet",
        1007 => "_int4",
        1009 => "_text",
        1016 => "_int8",
        1083 => "time",
        1186 => "interval",
        1266 => "timetz",
        2951 => "_uuid",
        3807 => "_jsonb",
        _ => "unknown",
    }
}

/// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01 UTC).
const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

/// Microseconds since the PostgreSQL epoch (2000-01-01 00:00:00 UTC, the unit of
/// pgoutput Begin/Commit timestamps) → RFC 3339 UTC string with `Z` and exactly 6
/// fractional digits, e.g. `"2026-11-20T12:00:00.123456Z"`. Never panics: years
/// outside 0000–9999 use ISO 8601 expanded years (`"+12345-…"`), and values beyond
/// chrono's range (about ±262 000 years) are clamped to it.
pub fn format_pg_timestamp_us(us: i64) -> String {
    let unix = pg_epoch_to_unix_us(us);
    let dt = match DateTime::from_timestamp_micros(unix) {
        Some(dt) => dt.naive_utc(),
        None if unix < 0 => NaiveDateTime::MIN,
        None => NaiveDateTime::MAX,
    };
    rfc3339(&dt, true)
}

/// Microseconds since the PostgreSQL epoch (2000-01-01 00:00:00 UTC) → microseconds
/// since the Unix epoch (adds 946 684 800 000 000; saturates at the `i64` bounds).
pub fn pg_epoch_to_unix_us(us: i64) -> i64 {
    us.saturating_add(PG_EPOCH_UNIX_US)
}

#[cfg(test)]
#[path = "pgoutput_tests.rs"]
mod tests;
