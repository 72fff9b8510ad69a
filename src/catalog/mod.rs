//! What the database must provide for the relay to stream, checked the same way at start-up
//! and by `doctor`: `wal_level`, the publication, each `[[tables]]` entry's table, owner
//! column and place in the publication, and the kind of an existing replication slot.
//!
//! Three steps, each its own file: [`query`] reads [`facts`] from the catalog (parameterized
//! SQL, no judgement), [`evaluate`] judges them (pure, unit-tested) and returns
//! [`Mismatch`]es. Start-up ([`check`]) stops at the first mismatch with its one-line message;
//! `doctor` words every mismatch as a failed check with a fix.
//!
//! This module depends on the configuration types of `[[tables]]` and on the driver only.

pub mod evaluate;
pub mod facts;
pub mod query;

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::db::describe;
use crate::model::Operation;
use crate::tables::{TableShape, Tables};

pub use facts::{ColumnFacts, Facts, Publication, Published, SlotKind, TableFacts};

/// The `wal_level` logical decoding needs.
pub const LOGICAL: &str = "logical";

/// `pg_replication_slots.slot_type` of a slot that decodes (the other is `physical`).
pub const LOGICAL_SLOT: &str = "logical";

/// The logical decoding output plugin of the relay's slot.
pub const PLUGIN: &str = "pgoutput";

/// A way the database does not fit the configuration. `Display` is the one line start-up
/// stops with, naming the `[[tables]]` entry (`tables[i]…`) where there is one, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Mismatch {
    /// `wal_level` is not `logical`.
    #[error(
        "wal_level is `{level}`, but logical replication needs `logical`: run \
         `ALTER SYSTEM SET wal_level = logical;` and restart PostgreSQL"
    )]
    WalLevel {
        /// The server's `wal_level`.
        level: String,
    },
    /// The publication does not exist.
    #[error(
        "publication `{publication}` does not exist in this database: run `engagement-relay \
         migrate` (or CREATE PUBLICATION {publication} FOR TABLE {} WITH (publish = 'insert, \
         update, delete'))", .tables.join(", ")
    )]
    NoPublication {
        /// `database.publication`.
        publication: String,
        /// The configured tables, `schema.table`.
        tables: Vec<String>,
    },
    /// The table of entry `entry` does not exist.
    #[error(
        "tables[{entry}]: table {table} does not exist: run `engagement-relay migrate`, or \
         remove the entry from [[tables]]"
    )]
    NoTable {
        /// Index of the `[[tables]]` entry.
        entry: usize,
        /// `schema.table`.
        table: String,
    },
    /// The table has no column named as the entry's owner column.
    #[error("tables[{entry}].owner_column: {table} has no column `{column}`")]
    NoOwnerColumn {
        /// Index of the `[[tables]]` entry.
        entry: usize,
        /// `schema.table`.
        table: String,
        /// `owner_column`.
        column: String,
    },
    /// The owner column is not a `uuid`.
    #[error(
        "tables[{entry}].owner_column: {table}.{column} must be a uuid (it is compared with the \
         JWT sub)"
    )]
    OwnerNotUuid {
        /// Index of the `[[tables]]` entry.
        entry: usize,
        /// `schema.table`.
        table: String,
        /// `owner_column`.
        column: String,
        /// Its type, as `format_type` names it.
        type_name: String,
    },
    /// The entry streams deletes, but the table's replica identity does not cover the owner
    /// column: a delete's old tuple would not say whose row it was.
    #[error(
        "tables[{entry}].operations: deletes of {table} would not carry `{column}` (its replica \
         identity omits it): run ALTER TABLE {table} REPLICA IDENTITY FULL, or remove \"delete\""
    )]
    IdentityOmitsOwner {
        /// Index of the `[[tables]]` entry.
        entry: usize,
        /// `schema.table`.
        table: String,
        /// `owner_column`.
        column: String,
    },
    /// The publication does not carry the table.
    #[error(
        "tables[{entry}]: publication `{publication}` does not carry {table}: run \
         `engagement-relay migrate` or ALTER PUBLICATION {publication} ADD TABLE {table}"
    )]
    NotPublished {
        /// Index of the `[[tables]]` entry.
        entry: usize,
        /// `database.publication`.
        publication: String,
        /// `schema.table`.
        table: String,
    },
    /// The publication carries a column list of the table without the owner column (every row
    /// would then reach the service role only).
    #[error(
        "tables[{entry}].owner_column: publication `{publication}` carries a column list of \
         {table} without `{column}`: ALTER PUBLICATION {publication} SET TABLE {table} (or add \
         the column to the list)"
    )]
    ColumnListOmitsOwner {
        /// Index of the `[[tables]]` entry.
        entry: usize,
        /// `database.publication`.
        publication: String,
        /// `schema.table`.
        table: String,
        /// `owner_column`.
        column: String,
    },
    /// `database.slot` exists but is not a permanent logical pgoutput slot.
    #[error(
        "replication slot `{slot}` exists but is a {} slot with plugin {}; the relay needs a \
         permanent logical pgoutput slot: choose another `database.slot` or drop it",
        slot_words(.slot_type, *.temporary), .plugin.as_deref().unwrap_or("none")
    )]
    SlotNotPgoutput {
        /// `database.slot`.
        slot: String,
        /// `slot_type`.
        slot_type: String,
        /// The output plugin, if any.
        plugin: Option<String>,
        /// Whether it is temporary.
        temporary: bool,
    },
    /// `database.slot` belongs to another database (slot names are cluster-wide).
    #[error(
        "replication slot `{slot}` belongs to another database; choose another `database.slot`"
    )]
    SlotInOtherDatabase {
        /// `database.slot`.
        slot: String,
    },
    /// The publication does not publish an operation the entry streams.
    #[error(
        "tables[{entry}].operations: publication `{publication}` does not publish {}s: ALTER \
         PUBLICATION {publication} SET (publish = 'insert, update, delete')", .operation.as_str()
    )]
    OperationNotPublished {
        /// Index of the `[[tables]]` entry.
        entry: usize,
        /// `database.publication`.
        publication: String,
        /// The operation not published.
        operation: Operation,
    },
}

/// `temporary logical`, `physical`, …: a slot's kind in words.
fn slot_words(slot_type: &str, temporary: bool) -> String {
    if temporary {
        format!("temporary {slot_type}")
    } else {
        slot_type.to_string()
    }
}

/// Why [`check`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The database does not fit the configuration: retrying cannot help.
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    /// A catalog query failed (connection lost, statement timeout, …).
    #[error("catalog query failed: {}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
}

/// Reads the [`Facts`] start-up judges for `publication` and `tables`.
///
/// Errors: the first failed query.
pub async fn query_facts(
    client: &Client,
    publication: &str,
    tables: &Tables,
) -> Result<Facts, tokio_postgres::Error> {
    let wal_level = query::wal_level(client).await?;
    let publication = query::publication(client, publication).await?;
    let mut facts = Vec::with_capacity(tables.entries().len());
    for t in tables.entries() {
        facts.push(query::table(client, &t.schema, &t.table).await?);
    }
    Ok(Facts {
        wal_level,
        publication,
        tables: facts,
    })
}

/// Start-up's check: reads the facts, judges them ([`evaluate::startup`]) and, when they fit,
/// stores each table's columns in `tables` ([`Tables::columns`]).
///
/// Errors: [`CatalogError::Mismatch`] with the first problem, [`CatalogError::Query`] when a
/// query fails.
pub async fn check(
    client: &Client,
    publication: &str,
    tables: &Tables,
) -> Result<(), CatalogError> {
    let facts = query_facts(client, publication, tables).await?;
    evaluate::startup(&facts, publication, tables.entries())?;
    let shapes: HashMap<(String, String), TableShape> = tables
        .entries()
        .iter()
        .zip(facts.tables)
        .map(|(t, f)| {
            let shape = f
                .map(|f| TableShape {
                    columns: f
                        .columns
                        .into_iter()
                        .map(|c| (c.name, c.type_oid))
                        .collect(),
                    primary_key: f.primary_key,
                })
                .unwrap_or_default();
            ((t.schema.clone(), t.table.clone()), shape)
        })
        .collect();
    tables.set_shapes(shapes);
    Ok(())
}
