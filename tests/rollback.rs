//! sql/rollback/: every migration has a rollback of the same name; rolling everything back,
//! newest first, leaves the catalog exactly as it was before the migrations (tables, columns,
//! indexes, constraints, policies, functions, views, triggers, privileges, the publication), and
//! migrating again rebuilds exactly the same schema; each rollback can run twice and makes
//! `migrate` re-apply its migration; the retention rollback keeps archived events.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::common::sql::{count, event_rows, insert_event_at, strings};
use crate::common::{cluster, connect, create_user, TestDb};
use engagement_relay::db::migrate::{migrate, migrations};
use tokio_postgres::Client;

const ROLLBACK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/rollback");
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The rollback scripts as (file name, text), newest first.
fn rollback_scripts() -> Vec<(String, String)> {
    let mut scripts: Vec<(String, String)> = std::fs::read_dir(ROLLBACK_DIR)
        .expect("sql/rollback exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    scripts.sort();
    scripts.reverse();
    scripts
}

async fn run(pg: &Client, name: &str, script: &str) {
    pg.batch_execute(script)
        .await
        .unwrap_or_else(|e| panic!("{name}: {}", engagement_relay::db::describe(&e)));
}

/// A new, empty database cloned from template0 (nothing migrated).
async fn fresh_database() -> Client {
    let cluster = cluster().await;
    let name = format!(
        "rb{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let admin = connect(&cluster.url("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
        .await
        .expect("create database");
    connect(&cluster.url(&name)).await
}

/// Schemas the migrations touch: all but the system ones and the migration runner's own
/// bookkeeping schema (created by `migrate` itself, not by a migration).
const OURS: &str = "n.nspname NOT LIKE 'pg\\_%' \
                    AND n.nspname NOT IN ('information_schema', 'supabase_migrations')";

/// Everything the migrations can create or change, one line per object, without OIDs.
async fn snapshot(pg: &Client) -> BTreeSet<String> {
    let queries = [
        format!(
            "SELECT 'schema ' || nspname || ' acl=' || coalesce(nspacl::text, '') \
             FROM pg_namespace n WHERE {OURS}"
        ),
        format!(
            "SELECT 'relation ' || n.nspname || '.' || c.relname || ' kind=' || c.relkind::text \
                 || ' rls=' || c.relrowsecurity || ' identity=' || c.relreplident::text \
                 || ' acl=' || coalesce(c.relacl::text, '') \
                 || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {OURS}"
        ),
        format!(
            "SELECT 'column ' || n.nspname || '.' || c.relname || '.' || a.attname || ' ' \
                 || format_type(a.atttypid, a.atttypmod) \
                 || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END \
                 || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') \
                 || ' comment=' || coalesce(col_description(c.oid, a.attnum), '') \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND {OURS}"
        ),
        format!(
            "SELECT 'index ' || indexdef FROM pg_indexes i \
             JOIN pg_namespace n ON n.nspname = i.schemaname WHERE {OURS}"
        ),
        format!(
            "SELECT 'constraint ' || n.nspname || '.' || cl.relname || ' ' || c.conname || ' ' \
                 || pg_get_constraintdef(c.oid) \
             FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace \
             JOIN pg_class cl ON cl.oid = c.conrelid WHERE {OURS}"
        ),
        format!(
            "SELECT 'policy ' || p.schemaname || '.' || p.tablename || ' ' || p.policyname \
                 || ' ' || p.cmd || ' ' || p.roles::text || ' using=' || coalesce(p.qual, '') \
                 || ' check=' || coalesce(p.with_check, '') \
             FROM pg_policies p JOIN pg_namespace n ON n.nspname = p.schemaname WHERE {OURS}"
        ),
        format!(
            "SELECT 'function ' || n.nspname || '.' || p.proname || '(' \
                 || pg_get_function_identity_arguments(p.oid) || ') ' \
                 || pg_get_function_result(p.oid) || ' secdef=' || p.prosecdef \
                 || ' config=' || coalesce(p.proconfig::text, '') \
                 || ' acl=' || coalesce(p.proacl::text, '') || ' body=' || md5(p.prosrc) \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {OURS}"
        ),
        format!(
            "SELECT 'view ' || v.schemaname || '.' || v.viewname || ' ' || v.definition \
             FROM pg_views v JOIN pg_namespace n ON n.nspname = v.schemaname WHERE {OURS}"
        ),
        format!(
            "SELECT 'trigger ' || pg_get_triggerdef(t.oid) FROM pg_trigger t \
             JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT t.tgisinternal AND {OURS}"
        ),
        "SELECT 'publication ' || pubname || ' insert=' || pubinsert || ' update=' || pubupdate \
             || ' delete=' || pubdelete || ' truncate=' || pubtruncate \
             || ' comment=' || coalesce(obj_description(oid, 'pg_publication'), '') \
         FROM pg_publication"
            .to_string(),
        "SELECT 'published ' || pubname || ' ' || schemaname || '.' || tablename \
         FROM pg_publication_tables"
            .to_string(),
    ];
    let mut lines = BTreeSet::new();
    for sql in &queries {
        lines.extend(strings(pg, sql, &[]).await);
    }
    lines
}

/// Asserts two snapshots are equal, listing the lines only one of them has.
fn assert_same(what: &str, expected: &BTreeSet<String>, actual: &BTreeSet<String>) {
    let missing: Vec<_> = expected.difference(actual).collect();
    let extra: Vec<_> = actual.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}\n  missing: {missing:#?}\n  unexpected: {extra:#?}"
    );
}

async fn applied_versions(pg: &Client) -> Vec<String> {
    strings(
        pg,
        "SELECT version FROM supabase_migrations.schema_migrations ORDER BY version",
        &[],
    )
    .await
}

#[test]
fn every_migration_has_a_rollback_of_the_same_name() {
    let mut migrations: Vec<String> = migrations().into_iter().map(|m| m.file).collect();
    migrations.sort();
    let mut rollbacks: Vec<String> = rollback_scripts().into_iter().map(|(n, _)| n).collect();
    rollbacks.sort();
    assert_eq!(rollbacks, migrations);
}

#[tokio::test]
async fn rolling_everything_back_restores_the_catalog_and_migrating_again_rebuilds_it() {
    let mut pg = fresh_database().await;
    let before = snapshot(&pg).await;
    let all: Vec<String> = migrations().into_iter().map(|m| m.version).collect();

    assert_eq!(migrate(&mut pg).await.expect("migrate"), all);
    let migrated = snapshot(&pg).await;
    for object in [
        "relation public.user_engagement_states",
        "relation public.engagement_events_archive",
        "relation auth.users",
        "view public.engagement_events_index_usage",
        "published engagement_events_pub public.engagement_state_transitions",
        "function public.delete_user_data(target_user uuid)",
    ] {
        assert!(
            migrated.iter().any(|l| l.starts_with(object)),
            "the snapshot sees {object}"
        );
    }

    for (name, script) in rollback_scripts() {
        run(&pg, &name, &script).await;
    }
    assert_same("after every rollback", &before, &snapshot(&pg).await);
    assert!(applied_versions(&pg).await.is_empty(), "every row deleted");

    assert_eq!(migrate(&mut pg).await.expect("migrate again"), all);
    assert_same("migrated again", &migrated, &snapshot(&pg).await);
}

#[tokio::test]
async fn each_rollback_runs_twice_and_makes_migrate_reapply_its_migration() {
    let db = TestDb::new().await;
    let mut pg = db.client().await;
    let migrated = snapshot(&pg).await;
    let scripts = rollback_scripts();
    // Roll back the newest k migrations (each script twice), then migrate: exactly those
    // k come back, and the schema is the same as before.
    for k in 1..=scripts.len() {
        for (name, script) in &scripts[..k] {
            run(&pg, name, script).await;
            run(&pg, name, script).await;
        }
        let mut expected: Vec<String> = scripts[..k]
            .iter()
            .map(|(name, _)| name.split('_').next().unwrap().to_string())
            .collect();
        expected.sort();
        let remaining = applied_versions(&pg).await;
        assert!(
            expected.iter().all(|v| !remaining.contains(v)),
            "{expected:?} forgotten, {remaining:?} left"
        );
        assert_eq!(migrate(&mut pg).await.expect("migrate"), expected);
        assert_same(
            &format!("the newest {k} rolled back and re-applied"),
            &migrated,
            &snapshot(&pg).await,
        );
    }
}

#[tokio::test]
async fn the_retention_rollback_returns_archived_events_to_the_live_table() {
    let db = TestDb::new().await;
    let mut pg = db.client().await;
    let a = create_user(&pg).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(insert_event_at(&pg, a, 100, true).await);
    }
    ids.sort();
    let originals = event_rows(&pg, "engagement_events", &ids).await;
    let moved = count(
        &pg,
        "SELECT public.archive_old_deleted_events('90 days')",
        &[],
    )
    .await;
    assert_eq!(moved, 3);

    // Newest first, down to and including the retention migration.
    let scripts = rollback_scripts();
    let through = scripts
        .iter()
        .position(|(name, _)| name.contains("retention"))
        .expect("a retention rollback")
        + 1;
    for (name, script) in &scripts[..through] {
        run(&pg, name, script).await;
    }
    assert_eq!(
        event_rows(&pg, "engagement_events", &ids).await,
        originals,
        "archived events are live again, still soft-deleted, unchanged"
    );
    assert_eq!(migrate(&mut pg).await.expect("migrate").len(), through);
}

#[tokio::test]
async fn a_rollback_refuses_while_a_later_migration_is_applied() {
    let scripts = rollback_scripts();
    // Each script's guard names every later migration of this project (a new migration must
    // be added to the older scripts' guards).
    for (i, (name, script)) in scripts.iter().enumerate() {
        for (later, _) in &scripts[..i] {
            let version = later.split('_').next().unwrap();
            assert!(
                script.contains(&format!("'{version}'")),
                "{name} does not guard against {later} still being applied"
            );
        }
    }
    let db = TestDb::new().await;
    let pg = db.client().await;
    let (name, oldest_but_one) = &scripts[1];
    let err = pg.batch_execute(oldest_but_one).await.unwrap_err();
    let err = engagement_relay::db::describe(&err);
    assert!(
        err.contains("roll back the later migrations first") && err.contains(&scripts[0].0[..14]),
        "{name}: {err}"
    );
    pg.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        applied_versions(&pg).await.len(),
        scripts.len(),
        "nothing undone"
    );
}
