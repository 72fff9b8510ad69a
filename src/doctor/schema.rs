//! Schema checks: the publication carries every `[[tables]]` entry and its operations; each
//! table exists with a `uuid` owner column the user may read; the service-only message queue
//! is not streamed. (Row-level security and indexes: `security.rs`.) The facts and their
//! judgement are the catalog check start-up runs ([`crate::catalog`]); this file words them
//! as checks with fixes.
//!
//! Sources: PostgreSQL 15 docs, catalog `pg_publication`
//! (<https://www.postgresql.org/docs/15/catalog-pg-publication.html>) and view
//! `pg_publication_tables`
//! (<https://www.postgresql.org/docs/15/view-pg-publication-tables.html>).

use tokio_postgres::Client;

use super::report::Check;
use super::{ident, qualified, table_check_id, MESSAGE_QUEUE, PUBLICATION};
use crate::catalog::{evaluate, query, Mismatch, Publication, TableFacts};
use crate::config::Config;
use crate::model::Operation;
use crate::tables::{TableConfig, SERVICE_ONLY};

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// The publication named `database.publication` against `[[tables]]`.
pub(super) async fn publication(c: &Client, config: &Config) -> Result<Check> {
    let name = &config.database.publication;
    let facts = query::publication(c, name).await?;
    Ok(evaluate_publication(name, facts.as_ref(), &config.tables))
}

/// Fails when the publication is missing, misses a table, an operation, or (column list) an
/// owner column; warns about row filters (rows they exclude are never streamed).
pub(super) fn evaluate_publication(
    name: &str,
    publication: Option<&Publication>,
    tables: &[TableConfig],
) -> Check {
    let p = match evaluate::publication_exists(name, publication, tables) {
        Ok(p) => p,
        Err(_) => {
            let wanted = |op| tables.iter().any(|t| t.operations.contains(&op));
            let list: Vec<String> = tables
                .iter()
                .map(|t| qualified(&t.schema, &t.table))
                .collect();
            let ops = publish_list(
                wanted(Operation::Insert),
                wanted(Operation::Update),
                wanted(Operation::Delete),
                false,
            );
            return Check::fail(
                PUBLICATION,
                format!("publication {name} does not exist in this database"),
                format!(
                    "engagement-relay migrate, or CREATE PUBLICATION {} FOR TABLE {} WITH (publish = '{ops}');",
                    ident(name),
                    list.join(", ")
                ),
            );
        }
    };
    let found = evaluate::publication(name, p, tables);
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    let missing: Vec<&TableConfig> = found
        .iter()
        .filter_map(|m| match m {
            Mismatch::NotPublished { entry, .. } => tables.get(*entry),
            _ => None,
        })
        .collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|t| t.qualified()).collect();
        problems.push(format!("does not carry {}", names.join(", ")));
        let sql: Vec<String> = missing
            .iter()
            .map(|t| qualified(&t.schema, &t.table))
            .collect();
        fixes.push(format!(
            "engagement-relay migrate (creates and publishes the tables), or for existing tables: ALTER PUBLICATION {} ADD TABLE {};",
            ident(name),
            sql.join(", ")
        ));
    }
    let lacks = |op: Operation| {
        found.iter().any(
            |m| matches!(m, Mismatch::OperationNotPublished { operation, .. } if *operation == op),
        )
    };
    let (lacks_insert, lacks_update) = (lacks(Operation::Insert), lacks(Operation::Update));
    let lacks_delete = lacks(Operation::Delete);
    if lacks_insert || lacks_update || lacks_delete {
        let ops: Vec<&str> = [
            (lacks_insert, "inserts"),
            (lacks_update, "updates"),
            (lacks_delete, "deletes"),
        ]
        .iter()
        .filter(|(lacks, _)| *lacks)
        .map(|(_, op)| *op)
        .collect();
        problems.push(format!("does not publish {}", ops.join(" or ")));
        let list = publish_list(
            p.insert || lacks_insert,
            p.update || lacks_update,
            p.delete || lacks_delete,
            p.truncate,
        );
        fixes.push(format!(
            "ALTER PUBLICATION {} SET (publish = '{list}');",
            ident(name)
        ));
    }
    for m in &found {
        let Mismatch::ColumnListOmitsOwner { entry, .. } = m else {
            continue;
        };
        let Some(t) = tables.get(*entry) else {
            continue;
        };
        problems.push(format!(
            "its column list for {} omits the owner column {}",
            t.qualified(),
            t.owner_column
        ));
        let table = qualified(&t.schema, &t.table);
        fixes.push(format!(
            "ALTER PUBLICATION {0} DROP TABLE {table}; ALTER PUBLICATION {0} ADD TABLE {table};",
            ident(name)
        ));
    }
    let warnings: Vec<String> = evaluate::row_filters(p, tables)
        .into_iter()
        .filter_map(|(i, filter)| {
            let t = tables.get(i)?;
            Some(format!(
                "{} has a row filter {filter}: rows it excludes are never streamed",
                t.qualified()
            ))
        })
        .collect();
    let carried: Vec<String> = tables.iter().map(|t| t.qualified()).collect();
    let ops = publish_list(p.insert, p.update, p.delete, p.truncate);
    if !problems.is_empty() {
        Check::fail(
            PUBLICATION,
            format!("publication {name} {}", problems.join("; ")),
            fixes.join(" "),
        )
    } else if !warnings.is_empty() {
        Check::warn(
            PUBLICATION,
            format!("publication {name}: {}", warnings.join("; ")),
            format!(
                "ALTER PUBLICATION {} SET TABLE … without WHERE, unless the filter is intended",
                ident(name)
            ),
        )
    } else {
        Check::pass(
            PUBLICATION,
            format!(
                "publication {name} ({ops}) carries every configured table: {}",
                carried.join(", ")
            ),
        )
    }
}

/// `insert, update, …` for `publish = '…'`.
fn publish_list(insert: bool, update: bool, delete: bool, truncate: bool) -> String {
    let ops: Vec<&str> = [
        (insert, "insert"),
        (update, "update"),
        (delete, "delete"),
        (truncate, "truncate"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, op)| *op)
    .collect();
    ops.join(", ")
}

/// Entry `entry`'s table exists (ordinary or partitioned), its owner column is a `uuid`, the
/// user may read it.
pub(super) async fn table(c: &Client, entry: usize, t: &TableConfig) -> Result<Check> {
    let facts = query::table(c, &t.schema, &t.table).await?;
    Ok(evaluate_table(entry, t, facts.as_ref()))
}

pub(super) fn evaluate_table(entry: usize, t: &TableConfig, facts: Option<&TableFacts>) -> Check {
    let id = table_check_id("table", &t.schema, &t.table);
    let name = t.qualified();
    let owner = &t.owner_column;
    match (evaluate::table(entry, t, facts), facts) {
        (Err(Mismatch::NoTable { .. }), _) | (Ok(()), None) => Check::fail(
            id,
            format!("{name} does not exist"),
            "engagement-relay migrate, or remove the entry from [[tables]]",
        ),
        (Err(Mismatch::NoOwnerColumn { .. }), _) => Check::fail(
            id,
            format!("{name} has no column {owner} (tables owner_column)"),
            "set owner_column of this [[tables]] entry to the uuid column holding the row's owner",
        ),
        (Err(Mismatch::OwnerNotUuid { type_name, .. }), _) => Check::fail(
            id,
            format!("{name}.{owner} is {type_name}, but the owner column must be a uuid (it is compared with the JWT sub)"),
            "set owner_column of this [[tables]] entry to a uuid column",
        ),
        (Err(Mismatch::IdentityOmitsOwner { .. }), _) => Check::fail(
            id,
            format!(
                "{name} streams deletes, but its replica identity omits {owner}: a delete's old row would not say whose it was"
            ),
            format!(
                "ALTER TABLE {} REPLICA IDENTITY FULL; (or engagement-relay migrate, or remove \"delete\" from this [[tables]] entry's operations)",
                qualified(&t.schema, &t.table)
            ),
        ),
        (Err(other), _) => Check::fail(
            id,
            other.to_string(),
            "engagement-relay migrate, or correct this [[tables]] entry",
        ),
        (Ok(()), Some(f)) if !f.can_select => Check::fail(
            id,
            format!("{name} exists, but {} may not SELECT from it", f.user),
            format!("GRANT SELECT ON {} TO {};", qualified(&t.schema, &t.table), ident(&f.user)),
        ),
        (Ok(()), Some(f)) => Check::pass(
            id,
            format!("{name} exists; owner column {owner} is uuid; {} may SELECT", f.user),
        ),
    }
}

/// `public.engagement_message_queue` holds service-only messages: it must not be a
/// `[[tables]]` entry (fail: rows would reach their user) and should not be in the publication
/// (warn: decoded and discarded, one configuration change away from streaming).
pub(super) async fn message_queue(c: &Client, config: &Config) -> Result<Check> {
    let (schema, table) = SERVICE_ONLY;
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
                    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                    WHERE n.nspname = $1 AND c.relname = $2), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables \
                    WHERE pubname = $3 AND schemaname = $1 AND tablename = $2)",
            &[&schema, &table, &config.database.publication],
        )
        .await?;
    let configured = config
        .tables
        .iter()
        .any(|t| t.schema == schema && t.table == table);
    Ok(evaluate_message_queue(
        configured,
        row.get(0),
        row.get(1),
        &config.database.publication,
    ))
}

pub(super) fn evaluate_message_queue(
    configured: bool,
    exists: bool,
    published: bool,
    publication: &str,
) -> Check {
    let (schema, table) = SERVICE_ONLY;
    let name = format!("{schema}.{table}");
    let drop = format!(
        "ALTER PUBLICATION {} DROP TABLE {};",
        ident(publication),
        qualified(schema, table)
    );
    if configured {
        Check::fail(
            MESSAGE_QUEUE,
            format!("{name} is a [[tables]] entry: its service-only rows would reach their users"),
            format!("remove the {name} entry from [[tables]]; then {drop}"),
        )
    } else if !exists {
        Check::skip(MESSAGE_QUEUE, format!("{name} does not exist"))
    } else if published {
        Check::warn(
            MESSAGE_QUEUE,
            format!("{name} is in publication {publication}: service-only rows are decoded (and discarded) by the relay"),
            drop,
        )
    } else {
        Check::pass(
            MESSAGE_QUEUE,
            format!("{name} exists and is not in publication {publication}"),
        )
    }
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
