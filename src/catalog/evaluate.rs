//! Pure judgements of [`super::facts`] against the configuration: no I/O, unit-tested here.
//! Each returns the [`Mismatch`]es it finds; start-up stops at the first, `doctor` words every
//! one as a failed check with its fix.

use tokio_postgres::types::Type;

use super::facts::{Facts, Publication, SlotKind, TableFacts};
use super::{Mismatch, LOGICAL, LOGICAL_SLOT, PLUGIN};
use crate::model::Operation;
use crate::tables::TableConfig;

/// `wal_level` must be [`LOGICAL`] for a slot to decode.
pub fn wal_level(level: &str) -> Result<(), Mismatch> {
    if level == LOGICAL {
        Ok(())
    } else {
        Err(Mismatch::WalLevel {
            level: level.to_string(),
        })
    }
}

/// The publication `name` must exist; `tables` only words the `CREATE PUBLICATION` fix.
pub fn publication_exists<'a>(
    name: &str,
    publication: Option<&'a Publication>,
    tables: &[TableConfig],
) -> Result<&'a Publication, Mismatch> {
    publication.ok_or_else(|| Mismatch::NoPublication {
        publication: name.to_string(),
        tables: tables.iter().map(TableConfig::qualified).collect(),
    })
}

/// Entry `entry` of `[[tables]]`: the table exists, its owner column is a `uuid`, and when the
/// entry streams deletes, the table's replica identity covers the owner column (a delete's old
/// tuple carries only the identity's columns, and the owner is read from it).
/// (Whether the user may read it is for `doctor` to report: streaming does not need it.)
pub fn table(entry: usize, t: &TableConfig, facts: Option<&TableFacts>) -> Result<(), Mismatch> {
    let Some(facts) = facts else {
        return Err(Mismatch::NoTable {
            entry,
            table: t.qualified(),
        });
    };
    match facts.column(&t.owner_column) {
        None => Err(Mismatch::NoOwnerColumn {
            entry,
            table: t.qualified(),
            column: t.owner_column.clone(),
        }),
        Some(c) if c.type_oid != Type::UUID.oid() => Err(Mismatch::OwnerNotUuid {
            entry,
            table: t.qualified(),
            column: t.owner_column.clone(),
            type_name: c.type_name.clone(),
        }),
        Some(_)
            if t.operations.contains(&Operation::Delete)
                && !facts.identity_covers(&t.owner_column) =>
        {
            Err(Mismatch::IdentityOmitsOwner {
                entry,
                table: t.qualified(),
                column: t.owner_column.clone(),
            })
        }
        Some(_) => Ok(()),
    }
}

/// Entry `entry` against the existing publication `name`: it carries the table, its column
/// list (if any) has the owner column, and it publishes every operation the entry streams
/// (publication-wide flags, so judged even for a table it does not carry yet).
pub fn carried(entry: usize, t: &TableConfig, name: &str, p: &Publication) -> Vec<Mismatch> {
    let mut found = Vec::new();
    match p.table(&t.schema, &t.table) {
        None => found.push(Mismatch::NotPublished {
            entry,
            publication: name.to_string(),
            table: t.qualified(),
        }),
        Some(published)
            if published
                .columns
                .as_ref()
                .is_some_and(|c| !c.contains(&t.owner_column)) =>
        {
            found.push(Mismatch::ColumnListOmitsOwner {
                entry,
                publication: name.to_string(),
                table: t.qualified(),
                column: t.owner_column.clone(),
            })
        }
        Some(_) => {}
    }
    for &operation in &t.operations {
        let published = match operation {
            Operation::Insert => p.insert,
            Operation::Update => p.update,
            Operation::Delete => p.delete,
        };
        if !published {
            found.push(Mismatch::OperationNotPublished {
                entry,
                publication: name.to_string(),
                operation,
            });
        }
    }
    found
}

/// [`carried`] for every entry, in configuration order.
pub fn publication(name: &str, p: &Publication, tables: &[TableConfig]) -> Vec<Mismatch> {
    tables
        .iter()
        .enumerate()
        .flat_map(|(i, t)| carried(i, t, name, p))
        .collect()
}

/// The row filters of the configured tables' publication entries, `(entry, filter)`: not
/// wrong, but rows a filter excludes are never streamed.
pub fn row_filters<'a>(p: &'a Publication, tables: &[TableConfig]) -> Vec<(usize, &'a str)> {
    tables
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let filter = p.table(&t.schema, &t.table)?.row_filter.as_deref()?;
            Some((i, filter))
        })
        .collect()
}

/// The existing slot `name` must be a permanent logical pgoutput slot of this database.
pub fn slot(name: &str, kind: &SlotKind) -> Result<(), Mismatch> {
    if kind.slot_type != LOGICAL_SLOT || kind.plugin.as_deref() != Some(PLUGIN) || kind.temporary {
        return Err(Mismatch::SlotNotPgoutput {
            slot: name.to_string(),
            slot_type: kind.slot_type.clone(),
            plugin: kind.plugin.clone(),
            temporary: kind.temporary,
        });
    }
    if !kind.same_database {
        return Err(Mismatch::SlotInOtherDatabase {
            slot: name.to_string(),
        });
    }
    Ok(())
}

/// What start-up requires, in the order it reports: `wal_level`, the publication, then per
/// entry the table, its owner column and what the publication carries of it.
///
/// Errors: the first [`Mismatch`].
pub fn startup(
    facts: &Facts,
    publication_name: &str,
    tables: &[TableConfig],
) -> Result<(), Mismatch> {
    wal_level(&facts.wal_level)?;
    let p = publication_exists(publication_name, facts.publication.as_ref(), tables)?;
    for (i, t) in tables.iter().enumerate() {
        table(i, t, facts.tables.get(i).and_then(Option::as_ref))?;
        if let Some(first) = carried(i, t, publication_name, p).into_iter().next() {
            return Err(first);
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "evaluate_tests.rs"]
mod tests;
