//! The catalog queries: each reads one kind of [`super::facts`] over an ordinary SQL
//! connection, parameterized, and judges nothing.
//!
//! Sources: PostgreSQL 15 docs, catalogs `pg_publication`, `pg_class`, `pg_attribute` and the
//! view `pg_publication_tables`
//! (<https://www.postgresql.org/docs/15/view-pg-publication-tables.html>).

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::facts::{ColumnFacts, Publication, Published, SlotKind, TableFacts};

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// First `server_version_num` whose `pg_publication_tables` has column lists and row filters.
const COLUMN_LISTS_SINCE: i32 = 150_000;

/// Runs `sql` with `params` and turns every row into a `T` with `each`.
pub(crate) async fn rows<T>(
    c: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    each: impl Fn(&Row) -> T,
) -> Result<Vec<T>> {
    Ok(c.query(sql, params).await?.iter().map(each).collect())
}

/// `SHOW wal_level`: `minimal`, `replica` or `logical`.
pub async fn wal_level(c: &Client) -> Result<String> {
    Ok(c.query_one("SHOW wal_level", &[]).await?.get(0))
}

/// `server_version_num`, e.g. 150008.
pub async fn server_version(c: &Client) -> Result<i32> {
    Ok(
        c.query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await?
            .get(0),
    )
}

/// The publication `name` and the tables it carries; `None` when it does not exist.
pub async fn publication(c: &Client, name: &str) -> Result<Option<Publication>> {
    let row = c
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate \
             FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let sql = if server_version(c).await? >= COLUMN_LISTS_SINCE {
        "SELECT schemaname::text, tablename::text, attnames::text[], rowfilter \
         FROM pg_catalog.pg_publication_tables WHERE pubname = $1"
    } else {
        "SELECT schemaname::text, tablename::text, NULL::text[], NULL::text \
         FROM pg_catalog.pg_publication_tables WHERE pubname = $1"
    };
    let tables = rows(c, sql, &[&name], |r| Published {
        schema: r.get(0),
        table: r.get(1),
        columns: r.get(2),
        row_filter: r.get(3),
    })
    .await?;
    Ok(Some(Publication {
        insert: row.get(0),
        update: row.get(1),
        delete: row.get(2),
        truncate: row.get(3),
        tables,
    }))
}

/// The ordinary or partitioned table `schema.table`: its columns and whether the connected
/// user may read it; `None` when there is no such table.
pub async fn table(c: &Client, schema: &str, table: &str) -> Result<Option<TableFacts>> {
    let row = c
        .query_opt(
            "SELECT c.oid, has_table_privilege(c.oid, 'SELECT'), current_user::text, \
                    c.relreplident::text \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let oid: u32 = row.get(0);
    let columns = rows(
        c,
        "SELECT attname::text, atttypid, format_type(atttypid, atttypmod) \
         FROM pg_catalog.pg_attribute \
         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        &[&oid],
        |r| ColumnFacts {
            name: r.get(0),
            type_oid: r.get(1),
            type_name: r.get(2),
        },
    )
    .await?;
    let replica_identity = row.get::<_, String>(3).bytes().next().unwrap_or_default();
    // Index columns in key order: the primary key's, and the replica identity index's.
    let index_columns = |which: &'static str| {
        let sql = format!(
            "SELECT a.attname::text FROM pg_catalog.pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.{which} ORDER BY k.n"
        );
        async move { rows(c, &sql, &[&oid], |r| r.get::<_, String>(0)).await }
    };
    let primary_key = index_columns("indisprimary").await?;
    let identity_columns = match replica_identity {
        b'd' => primary_key.clone(),
        b'i' => index_columns("indisreplident").await?,
        _ => Vec::new(),
    };
    Ok(Some(TableFacts {
        columns,
        can_select: row.get(1),
        user: row.get(2),
        replica_identity,
        identity_columns,
        primary_key,
    }))
}

/// The kind of the replication slot `name`; `None` when there is none.
pub async fn slot_kind(c: &Client, name: &str) -> Result<Option<SlotKind>> {
    let row = c
        .query_opt(
            "SELECT slot_type, plugin::text, temporary, \
                    coalesce(database = current_database(), false) \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| SlotKind {
        slot_type: r.get(0),
        plugin: r.get(1),
        temporary: r.get(2),
        same_database: r.get(3),
    }))
}
