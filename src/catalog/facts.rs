//! What the catalog says, as plain data: the output of [`super::query`] and the input of
//! [`super::evaluate`]. Built by hand in unit tests.

/// `pg_publication`'s operation flags and the tables the publication carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publication {
    /// `pubinsert`.
    pub insert: bool,
    /// `pubupdate`.
    pub update: bool,
    /// `pubdelete`.
    pub delete: bool,
    /// `pubtruncate`.
    pub truncate: bool,
    /// One entry per row of `pg_publication_tables` for the publication.
    pub tables: Vec<Published>,
}

impl Publication {
    /// The entry for `schema.table`, if the publication carries it.
    pub fn table(&self, schema: &str, table: &str) -> Option<&Published> {
        self.tables
            .iter()
            .find(|t| t.schema == schema && t.table == table)
    }
}

/// One row of `pg_publication_tables`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// `schemaname`.
    pub schema: String,
    /// `tablename`.
    pub table: String,
    /// The column list (`attnames`, PostgreSQL ≥ 15; `None` before, and when the publication
    /// carries every column).
    pub columns: Option<Vec<String>>,
    /// The row filter (`rowfilter`, PostgreSQL ≥ 15), if any.
    pub row_filter: Option<String>,
}

/// One column of a table, from `pg_attribute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnFacts {
    /// `attname`.
    pub name: String,
    /// `atttypid`: the type OID, as pgoutput's relation messages carry it.
    pub type_oid: u32,
    /// `format_type(atttypid, atttypmod)`, e.g. `uuid`, `character varying(20)`.
    pub type_name: String,
}

/// What the catalog says about one configured table (an ordinary or partitioned table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableFacts {
    /// Its live columns in attribute order.
    pub columns: Vec<ColumnFacts>,
    /// `has_table_privilege(…, 'SELECT')` for the connected user.
    pub can_select: bool,
    /// The connected user (`current_user`), for fix lines.
    pub user: String,
    /// `pg_class.relreplident`: `b'd'` default (the primary key), `b'f'` full, `b'i'` an index,
    /// `b'n'` nothing (PostgreSQL docs, `ALTER TABLE … REPLICA IDENTITY`). 0 in hand-built facts.
    pub replica_identity: u8,
    /// The columns the replica identity covers: the primary key's for `d`, the index's for
    /// `i`, none for `n` (every column for `f`, not listed). A delete's old tuple carries
    /// only these (`'K'`), unless the identity is full (`'O'`).
    pub identity_columns: Vec<String>,
    /// The primary key's columns in key order (empty without one): what identifies a row in
    /// the replay window ([`crate::model::Event::row`]).
    pub primary_key: Vec<String>,
}

impl TableFacts {
    /// The column named `name`, if any.
    pub fn column(&self, name: &str) -> Option<&ColumnFacts> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Whether a delete's old tuple carries `column`: the replica identity is full, or covers it.
    pub fn identity_covers(&self, column: &str) -> bool {
        self.replica_identity == b'f' || self.identity_columns.iter().any(|c| c == column)
    }
}

/// What kind of slot `pg_replication_slots` holds under the configured name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotKind {
    /// `slot_type`: `logical` or `physical`.
    pub slot_type: String,
    /// `plugin`: the output plugin of a logical slot.
    pub plugin: Option<String>,
    /// `temporary`: dropped when its session ends.
    pub temporary: bool,
    /// The slot's database is the connected one.
    pub same_database: bool,
}

/// Everything start-up judges, read in one pass ([`super::query_facts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `SHOW wal_level`.
    pub wal_level: String,
    /// The configured publication, `None` when it does not exist.
    pub publication: Option<Publication>,
    /// One entry per `[[tables]]` entry, in configuration order; `None` when the table does not
    /// exist.
    pub tables: Vec<Option<TableFacts>>,
}
