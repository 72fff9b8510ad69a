//! Schema checks: the publication carries every `[[tables]]` entry and its operations; each
//! table exists with a `uuid` owner column the user may read; the service-only message queue
//! is not streamed. (Row-level security and indexes: `security.rs`.)
//!
//! Sources: PostgreSQL 15 docs, catalog `pg_publication`
//! (<https://www.postgresql.org/docs/15/catalog-pg-publication.html>) and view
//! `pg_publication_tables`
//! (<https://www.postgresql.org/docs/15/view-pg-publication-tables.html>).

use tokio_postgres::Client;

use super::report::Check;
use super::{ident, qualified, table_check_id, MESSAGE_QUEUE, PUBLICATION};
use crate::config::Config;
use crate::model::Operation;
use crate::tables::TableConfig;

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// The service-only queue of the engagement-system migration: never streamed.
pub const MESSAGE_QUEUE_TABLE: (&str, &str) = ("public", "engagement_message_queue");

/// One row of `pg_publication_tables` for the publication.
#[derive(Debug, Clone, Default)]
pub(super) struct Published {
    pub schema: String,
    pub table: String,
    /// The column list (`attnames`, PostgreSQL ≥ 15; `None` before).
    pub columns: Option<Vec<String>>,
    /// The row filter (`rowfilter`, PostgreSQL ≥ 15), if any.
    pub row_filter: Option<String>,
}

/// `pg_publication` flags and the tables it carries.
#[derive(Debug, Clone, Default)]
pub(super) struct Publication {
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
    pub truncate: bool,
    pub tables: Vec<Published>,
}

/// The publication named `database.publication` against `[[tables]]`.
pub(super) async fn publication(c: &Client, config: &Config) -> Result<Check> {
    let name = &config.database.publication;
    let row = c
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate \
             FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[name],
        )
        .await?;
    let Some(row) = row else {
        return Ok(evaluate_publication(name, None, &config.tables));
    };
    let version: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await?
        .get(0);
    // Column lists and row filters exist since PostgreSQL 15.
    let sql = if version >= 150_000 {
        "SELECT schemaname::text, tablename::text, attnames::text[], rowfilter \
         FROM pg_catalog.pg_publication_tables WHERE pubname = $1"
    } else {
        "SELECT schemaname::text, tablename::text, NULL::text[], NULL::text \
         FROM pg_catalog.pg_publication_tables WHERE pubname = $1"
    };
    let tables = c
        .query(sql, &[name])
        .await?
        .iter()
        .map(|r| Published {
            schema: r.get(0),
            table: r.get(1),
            columns: r.get(2),
            row_filter: r.get(3),
        })
        .collect();
    let facts = Publication {
        insert: row.get(0),
        update: row.get(1),
        delete: row.get(2),
        truncate: row.get(3),
        tables,
    };
    Ok(evaluate_publication(name, Some(&facts), &config.tables))
}

/// Fails when the publication is missing, misses a table, an operation, or (column list) an
/// owner column; warns about row filters (rows they exclude are never streamed).
pub(super) fn evaluate_publication(
    name: &str,
    publication: Option<&Publication>,
    tables: &[TableConfig],
) -> Check {
    let wanted = |op| tables.iter().any(|t| t.operations.contains(&op));
    let Some(p) = publication else {
        let list: Vec<String> = tables
            .iter()
            .map(|t| qualified(&t.schema, &t.table))
            .collect();
        let ops = publish_list(
            wanted(Operation::Insert),
            wanted(Operation::Update),
            false,
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
    };
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    let missing: Vec<&TableConfig> = tables
        .iter()
        .filter(|t| {
            !p.tables
                .iter()
                .any(|pt| pt.schema == t.schema && pt.table == t.table)
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
    let lacks_insert = wanted(Operation::Insert) && !p.insert;
    let lacks_update = wanted(Operation::Update) && !p.update;
    if lacks_insert || lacks_update {
        let ops: Vec<&str> = [(lacks_insert, "inserts"), (lacks_update, "updates")]
            .iter()
            .filter(|(lacks, _)| *lacks)
            .map(|(_, op)| *op)
            .collect();
        problems.push(format!("does not publish {}", ops.join(" or ")));
        let list = publish_list(
            p.insert || lacks_insert,
            p.update || lacks_update,
            p.delete,
            p.truncate,
        );
        fixes.push(format!(
            "ALTER PUBLICATION {} SET (publish = '{list}');",
            ident(name)
        ));
    }
    let mut warnings = Vec::new();
    for t in tables {
        let Some(pt) = p
            .tables
            .iter()
            .find(|pt| pt.schema == t.schema && pt.table == t.table)
        else {
            continue;
        };
        if let Some(columns) = &pt.columns {
            if !columns.contains(&t.owner_column) {
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
        }
        if let Some(filter) = &pt.row_filter {
            warnings.push(format!(
                "{} has a row filter {filter}: rows it excludes are never streamed",
                t.qualified()
            ));
        }
    }
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

/// What the catalog says about one configured table.
#[derive(Debug, Clone, Default)]
pub(super) struct TableFacts {
    /// `format_type` of the owner column (`uuid`), `None` when there is no such column.
    pub owner_type: Option<String>,
    /// `has_table_privilege(…, 'SELECT')` for the connected user.
    pub can_select: bool,
    /// The connected user, for the fix.
    pub user: String,
}

/// The table exists (ordinary or partitioned), its owner column is a `uuid`, the user may read
/// it.
pub(super) async fn table(c: &Client, t: &TableConfig) -> Result<Check> {
    let row = c
        .query_opt(
            "SELECT (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
                      WHERE a.attrelid = c.oid AND a.attname = $3 AND a.attnum > 0 \
                        AND NOT a.attisdropped), \
                    has_table_privilege(c.oid, 'SELECT'), current_user::text \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&t.schema, &t.table, &t.owner_column],
        )
        .await?;
    let facts = row.map(|r| TableFacts {
        owner_type: r.get(0),
        can_select: r.get(1),
        user: r.get(2),
    });
    Ok(evaluate_table(t, facts.as_ref()))
}

pub(super) fn evaluate_table(t: &TableConfig, facts: Option<&TableFacts>) -> Check {
    let id = table_check_id("table", &t.schema, &t.table);
    let name = t.qualified();
    let owner = &t.owner_column;
    let Some(f) = facts else {
        return Check::fail(
            id,
            format!("{name} does not exist"),
            "engagement-relay migrate, or remove the entry from [[tables]]",
        );
    };
    match f.owner_type.as_deref() {
        None => Check::fail(
            id,
            format!("{name} has no column {owner} (tables owner_column)"),
            "set owner_column of this [[tables]] entry to the uuid column holding the row's owner",
        ),
        Some(ty) if ty != "uuid" => Check::fail(
            id,
            format!("{name}.{owner} is {ty}, but the owner column must be a uuid (it is compared with the JWT sub)"),
            "set owner_column of this [[tables]] entry to a uuid column",
        ),
        Some(_) if !f.can_select => Check::fail(
            id,
            format!("{name} exists, but {} may not SELECT from it", f.user),
            format!("GRANT SELECT ON {} TO {};", qualified(&t.schema, &t.table), ident(&f.user)),
        ),
        Some(_) => Check::pass(
            id,
            format!("{name} exists; owner column {owner} is uuid; {} may SELECT", f.user),
        ),
    }
}

/// `public.engagement_message_queue` holds service-only messages: it must not be a
/// `[[tables]]` entry (fail: rows would reach their user) and should not be in the publication
/// (warn: decoded and discarded, one configuration change away from streaming).
pub(super) async fn message_queue(c: &Client, config: &Config) -> Result<Check> {
    let (schema, table) = MESSAGE_QUEUE_TABLE;
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
    let (schema, table) = MESSAGE_QUEUE_TABLE;
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
