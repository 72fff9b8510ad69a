//! What a table looks like to the relay: a [`Relation`] and its [`Column`]s as the server's
//! Relation (`'R'`) message last described them, and a decoded row, [`Record`].

use serde_json::{Map, Value};

/// One column of a relation, from the Relation (`'R'`) message
/// (PostgreSQL docs, "Logical Replication Message Formats" → Relation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// OID of the column's data type (see [`super::oid`] and [`super::type_name`]).
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

impl Relation {
    /// `public.engagement_events` without columns: a fixture for unit tests.
    #[cfg(test)]
    pub(crate) fn fixture() -> std::sync::Arc<Relation> {
        std::sync::Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            name: "engagement_events".into(),
            replica_identity: b'd',
            columns: Vec::new(),
        })
    }
}

/// A decoded row: column name → JSON value (from [`super::text_to_json`]), in the
/// relation's column order. Unchanged TOASTed columns (`'u'`, value not sent)
/// are absent; SQL `NULL` is `Value::Null`.
pub type Record = Map<String, Value>;
