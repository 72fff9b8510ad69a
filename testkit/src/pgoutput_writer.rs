//! Writes pgoutput protocol-v1 messages: the inverse of the relay's decoder
//! (`engagement_relay::replication::pgoutput`), for tests, benchmarks and tools that need
//! byte-exact messages without a server. Integers are big-endian, strings NUL-terminated
//! (PostgreSQL docs, "Logical Replication Message Formats").

/// Marks an unchanged TOASTed value in [`MessageWriter::tuple`] (written as `'u'`).
pub const UNCHANGED_TOAST: &str = "\u{0}u";

/// Builds one message field by field: `MessageWriter::new(b'I').u32(oid).u8(b'N')…build()`.
#[derive(Debug, Clone)]
pub struct MessageWriter(Vec<u8>);

impl MessageWriter {
    /// A message starting with its type byte.
    pub fn new(tag: u8) -> Self {
        MessageWriter(vec![tag])
    }
    /// Int8 / Byte1.
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    /// Int16.
    pub fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Int32.
    pub fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Int32 holding an OID.
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Int64.
    pub fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Int64 holding an LSN.
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// String (NUL-terminated).
    pub fn cstr(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    /// Bytes as they are.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    /// TupleData: Int16 column count, then per value `'n'` (`None`), `'u'`
    /// ([`UNCHANGED_TOAST`]) or `'t'` + Int32 length + text.
    pub fn tuple(mut self, values: &[Option<&str>]) -> Self {
        self = self.i16(values.len() as i16);
        for v in values {
            self = match v {
                None => self.u8(b'n'),
                Some(UNCHANGED_TOAST) => self.u8(b'u'),
                Some(text) => self.u8(b't').i32(text.len() as i32).raw(text.as_bytes()),
            };
        }
        self
    }
    /// The message bytes.
    pub fn build(self) -> Vec<u8> {
        self.0
    }
}

/// A Relation (`'R'`) message: `columns` are (name, type OID, part of the key); replica
/// identity default, type modifiers -1.
pub fn relation(oid: u32, schema: &str, name: &str, columns: &[(&str, u32, bool)]) -> Vec<u8> {
    let mut m = MessageWriter::new(b'R')
        .u32(oid)
        .cstr(schema)
        .cstr(name)
        .u8(b'd')
        .i16(columns.len() as i16);
    for &(column, type_oid, key) in columns {
        m = m.u8(u8::from(key)).cstr(column).u32(type_oid).i32(-1);
    }
    m.build()
}

/// An Insert (`'I'`) message of relation `oid` with the new tuple `values`.
pub fn insert(oid: u32, values: &[Option<&str>]) -> Vec<u8> {
    MessageWriter::new(b'I')
        .u32(oid)
        .u8(b'N')
        .tuple(values)
        .build()
}
