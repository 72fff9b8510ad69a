//! Migrations runner: applies `sql/migrations/*.sql` (embedded in the binary) in file-name
//! order, each in its own transaction, recorded in `supabase_migrations.schema_migrations` —
//! the table the Supabase CLI uses, so migrations applied by either tool are not applied twice.

use include_dir::{include_dir, Dir};
use tokio_postgres::Client;
use tracing::info;

use super::sql_split::{split, Statement};

static MIGRATIONS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/sql/migrations");

/// The seed script (`sql/seed/seed_engagement_events.sql`): demo users and weeks of events.
pub const SEED_SQL: &str = include_str!("../../sql/seed/seed_engagement_events.sql");

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// `20241201000000` (the file name's timestamp prefix).
    pub version: String,
    /// `engagement_events` (the rest of the file name).
    pub name: String,
    /// File name, for messages.
    pub file: String,
    /// The SQL.
    pub sql: &'static str,
}

/// A migration failed: names the file, the statement and its line.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A statement failed; the migration was rolled back.
    #[error("{file}: statement {index} (line {line}) failed: {error}\n  statement: {statement}")]
    Statement {
        /// Migration file name.
        file: String,
        /// 1-based statement number in the file.
        index: usize,
        /// Line where the statement starts.
        line: usize,
        /// The server's error.
        error: String,
        /// The statement's first line(s).
        statement: String,
    },
    /// Connecting or bookkeeping failed.
    #[error("{0}")]
    Database(String),
}

/// The embedded migrations, in order.
pub fn migrations() -> Vec<Migration> {
    let mut list: Vec<Migration> = MIGRATIONS
        .files()
        .filter_map(|f| {
            let file = f.path().file_name()?.to_str()?.to_string();
            let stem = file.strip_suffix(".sql")?;
            let (version, name) = stem.split_once('_')?;
            Some(Migration {
                version: version.to_string(),
                name: name.to_string(),
                file: file.clone(),
                sql: f.contents_utf8()?,
            })
        })
        .collect();
    list.sort_by(|a, b| a.version.cmp(&b.version));
    list
}

/// Applies every pending migration; returns the versions applied (empty when up to date).
///
/// Errors: [`MigrateError::Statement`] for a failing statement (its migration is rolled back,
/// the earlier ones stay applied), [`MigrateError::Database`] otherwise.
pub async fn migrate(client: &mut Client) -> Result<Vec<String>, MigrateError> {
    let db = |e: tokio_postgres::Error| MigrateError::Database(super::describe(&e));
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS supabase_migrations;
             CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations (
                 version text PRIMARY KEY, statements text[], name text);",
        )
        .await
        .map_err(db)?;
    let mut applied = Vec::new();
    for migration in migrations() {
        let tx = client.transaction().await.map_err(db)?;
        // One migrator at a time; the lock ends with the transaction.
        tx.execute("SELECT pg_advisory_xact_lock(7204820917)", &[])
            .await
            .map_err(db)?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM supabase_migrations.schema_migrations WHERE version = $1",
                &[&migration.version],
            )
            .await
            .map_err(db)?;
        if done.is_some() {
            continue;
        }
        let statements = split(migration.sql);
        for (i, statement) in statements.iter().enumerate() {
            if let Err(e) = tx.batch_execute(&statement.text).await {
                return Err(statement_error(&migration, i, statement, &e));
            }
        }
        let texts: Vec<&str> = statements.iter().map(|s| s.text.as_str()).collect();
        tx.execute(
            "INSERT INTO supabase_migrations.schema_migrations (version, statements, name) \
             VALUES ($1, $2, $3)",
            &[&migration.version, &texts, &migration.name],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        info!(file = migration.file, "applied migration");
        applied.push(migration.version);
    }
    Ok(applied)
}

fn statement_error(
    migration: &Migration,
    index: usize,
    statement: &Statement,
    e: &tokio_postgres::Error,
) -> MigrateError {
    let preview: String = statement
        .text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    MigrateError::Statement {
        file: migration.file.clone(),
        index: index + 1,
        line: statement.line,
        error: super::describe(e),
        statement: preview,
    }
}

/// Runs the seed script (demo users and events). The script manages its own transaction
/// (`BEGIN … COMMIT`), so it is run statement by statement as it stands; on failure the open
/// transaction is rolled back and the error names the statement.
pub async fn seed(client: &mut Client) -> Result<(), MigrateError> {
    let seed = Migration {
        version: String::new(),
        name: "seed".into(),
        file: "seed_engagement_events.sql".into(),
        sql: SEED_SQL,
    };
    for (i, statement) in split(SEED_SQL).iter().enumerate() {
        if let Err(e) = client.batch_execute(&statement.text).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(statement_error(&seed, i, statement, &e));
        }
    }
    Ok(())
}
