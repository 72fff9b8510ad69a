//! Security and speed of each streamed table: row-level security with an owner policy, and an
//! index led by the owner column.
//!
//! Expectations are generic (any permissive policy for `authenticated`/`public` comparing the
//! owner column with the JWT, any valid index whose first column is the owner column), plus
//! the exact policy and index names of the migrations listed in [`EXPECTED`].
//!
//! Sources: PostgreSQL 15 docs, view `pg_policies`
//! (<https://www.postgresql.org/docs/15/view-pg-policies.html>), catalogs
//! `pg_class.relrowsecurity` and `pg_index`
//! (<https://www.postgresql.org/docs/15/catalog-pg-index.html>).

use tokio_postgres::Client;

use crate::catalog::query::rows;

use super::report::Check;
use super::{ident, qualified, table_check_id};
use crate::tables::TableConfig;

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// What a migration creates on one table, checked by name on top of the generic rules.
pub struct Expected {
    /// Schema of the table.
    pub schema: &'static str,
    /// Table name.
    pub table: &'static str,
    /// The migration file that creates the objects below.
    pub migration: &'static str,
    /// `pg_policies.policyname`s.
    pub policies: &'static [&'static str],
    /// Index names with the statement that creates each.
    pub indexes: &'static [(&'static str, &'static str)],
}

/// The named objects of `sql/migrations/20241201000000_engagement_events.sql` and
/// `20241210000000_engagement_system.sql` (the tables streamed by default).
pub const EXPECTED: &[Expected] = &[Expected {
    schema: "public",
    table: "engagement_events",
    migration: "sql/migrations/20241201000000_engagement_events.sql",
    policies: &[
        "Users can view own events",
        "Users can insert own events",
        "Service role can insert any events",
    ],
    indexes: &[
        (
            "idx_engagement_events_user_timestamp",
            "CREATE INDEX CONCURRENTLY idx_engagement_events_user_timestamp ON public.engagement_events (user_id, \"timestamp\" DESC);",
        ),
        (
            "idx_engagement_events_value",
            "CREATE INDEX CONCURRENTLY idx_engagement_events_value ON public.engagement_events USING gin (value);",
        ),
        (
            "idx_engagement_events_type",
            "CREATE INDEX CONCURRENTLY idx_engagement_events_type ON public.engagement_events (event_type);",
        ),
    ],
}, Expected {
    schema: "public",
    table: "user_engagement_states",
    migration: ENGAGEMENT_SYSTEM,
    policies: &[
        "Users can SELECT own engagement state",
        "Service role can manage all engagement states",
    ],
    indexes: &[
        (
            "idx_user_engagement_states_state",
            "CREATE INDEX CONCURRENTLY idx_user_engagement_states_state ON public.user_engagement_states (state);",
        ),
        (
            "idx_user_engagement_states_last_activity_at",
            "CREATE INDEX CONCURRENTLY idx_user_engagement_states_last_activity_at ON public.user_engagement_states (last_activity_at);",
        ),
        (
            "idx_user_engagement_states_goodbye_expires_at",
            "CREATE INDEX CONCURRENTLY idx_user_engagement_states_goodbye_expires_at ON public.user_engagement_states (goodbye_expires_at) WHERE goodbye_expires_at IS NOT NULL;",
        ),
        (
            "idx_user_engagement_states_remind_at",
            "CREATE INDEX CONCURRENTLY idx_user_engagement_states_remind_at ON public.user_engagement_states (remind_at) WHERE remind_at IS NOT NULL;",
        ),
    ],
}, Expected {
    schema: "public",
    table: "engagement_state_transitions",
    migration: ENGAGEMENT_SYSTEM,
    policies: &[
        "Users can SELECT own transitions",
        "Service role can manage all transitions",
    ],
    indexes: &[
        (
            "idx_engagement_state_transitions_user_id",
            "CREATE INDEX CONCURRENTLY idx_engagement_state_transitions_user_id ON public.engagement_state_transitions (user_id);",
        ),
        (
            "idx_engagement_state_transitions_created_at",
            "CREATE INDEX CONCURRENTLY idx_engagement_state_transitions_created_at ON public.engagement_state_transitions (created_at);",
        ),
    ],
}];

/// The engagement-system migration (seed story 1.1), source of the policy and index names.
const ENGAGEMENT_SYSTEM: &str = "sql/migrations/20241210000000_engagement_system.sql";

fn expected(t: &TableConfig) -> Option<&'static Expected> {
    EXPECTED
        .iter()
        .find(|e| e.schema == t.schema && e.table == t.table)
}

/// One row of `pg_policies`.
#[derive(Debug, Clone, Default)]
pub(super) struct Policy {
    pub name: String,
    pub permissive: bool,
    pub roles: Vec<String>,
    pub cmd: String,
    pub qual: String,
    pub with_check: String,
}

/// Row-level security is enabled (`relrowsecurity`) and the policies are there.
pub(super) async fn rls(c: &Client, t: &TableConfig) -> Result<Check> {
    let row = c
        .query_opt(
            "SELECT c.relrowsecurity FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&t.schema, &t.table],
        )
        .await?;
    let Some(row) = row else {
        return Ok(evaluate_rls(t, None, &[]));
    };
    let policies = rows(
        c,
        "SELECT policyname::text, permissive = 'PERMISSIVE', roles::text[], cmd, \
                coalesce(qual, ''), coalesce(with_check, '') \
         FROM pg_catalog.pg_policies WHERE schemaname = $1 AND tablename = $2 \
         ORDER BY policyname",
        &[&t.schema, &t.table],
        |r| Policy {
            name: r.get(0),
            permissive: r.get(1),
            roles: r.get(2),
            cmd: r.get(3),
            qual: r.get(4),
            with_check: r.get(5),
        },
    )
    .await?;
    Ok(evaluate_rls(t, Some(row.get(0)), &policies))
}

/// `enabled`: `relrowsecurity`, `None` when the table does not exist. Fails when disabled,
/// when no permissive policy for `authenticated`/`public` compares the owner column with the
/// JWT (`auth.uid()`, `auth.jwt()` or `request.jwt…`), or when a policy of [`EXPECTED`] is
/// missing.
pub(super) fn evaluate_rls(t: &TableConfig, enabled: Option<bool>, policies: &[Policy]) -> Check {
    let id = table_check_id("rls", &t.schema, &t.table);
    let name = t.qualified();
    let sql_name = qualified(&t.schema, &t.table);
    let Some(enabled) = enabled else {
        return Check::skip(id, format!("{name} does not exist (see table:{name})"));
    };
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if !enabled {
        problems.push("row level security is disabled (relrowsecurity = false)".to_string());
        fixes.push(format!("ALTER TABLE {sql_name} ENABLE ROW LEVEL SECURITY;"));
    }
    let owner_policies: Vec<&Policy> = policies
        .iter()
        .filter(|p| is_owner_policy(p, &t.owner_column))
        .collect();
    if owner_policies.is_empty() {
        problems.push(format!(
            "no permissive policy for authenticated/public compares {} with auth.uid()",
            t.owner_column
        ));
        fixes.push(format!(
            "CREATE POLICY \"Users can view own rows\" ON {sql_name} FOR SELECT TO authenticated USING (auth.uid() = {});",
            ident(&t.owner_column)
        ));
    }
    if let Some(e) = expected(t) {
        let missing: Vec<&str> = e
            .policies
            .iter()
            .filter(|want| !policies.iter().any(|p| p.name == **want))
            .copied()
            .collect();
        if !missing.is_empty() {
            problems.push(format!("missing policies \"{}\"", missing.join("\", \"")));
            fixes.push(format!(
                "engagement-relay migrate ({} creates them)",
                e.migration
            ));
        }
    }
    verdict(id, &name, &problems, &fixes, || {
        let owners: Vec<String> = owner_policies
            .iter()
            .map(|p| format!("\"{}\" ({})", p.name, p.cmd))
            .collect();
        format!(
            "RLS enabled; {} policies; owner policies: {}",
            policies.len(),
            owners.join(", ")
        )
    })
}

/// Passes with `summary` when there are no `problems`; otherwise fails with every problem
/// (after the table's `name`) and every fix.
fn verdict(
    id: String,
    name: &str,
    problems: &[String],
    fixes: &[String],
    summary: impl FnOnce() -> String,
) -> Check {
    if problems.is_empty() {
        Check::pass(id, summary())
    } else {
        Check::fail(
            id,
            format!("{name}: {}", problems.join("; ")),
            fixes.join(" "),
        )
    }
}

/// A permissive policy that applies to `authenticated` (or everyone) and compares `owner`
/// with the caller's JWT.
fn is_owner_policy(p: &Policy, owner: &str) -> bool {
    let for_users = p
        .roles
        .iter()
        .any(|r| r == "authenticated" || r == "public");
    let compares = |expr: &str| mentions_column(expr, owner) && mentions_jwt(expr);
    p.permissive && for_users && (compares(&p.qual) || compares(&p.with_check))
}

/// Whether the deparsed expression `expr` names `column` (as a bare or double-quoted word).
pub(super) fn mentions_column(expr: &str, column: &str) -> bool {
    let quoted = format!("\"{}\"", column.replace('"', "\"\""));
    expr.contains(&quoted)
        || expr
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .any(|word| word == column)
}

/// Whether `expr` reads the caller's identity the Supabase way.
fn mentions_jwt(expr: &str) -> bool {
    ["auth.uid()", "auth.jwt()", "request.jwt"]
        .iter()
        .any(|f| expr.contains(f))
}

/// One index of a table: name, `pg_index.indisvalid`, first key column (empty for an
/// expression).
#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    pub name: String,
    pub valid: bool,
    pub first_column: String,
}

/// A valid index leads with the owner column, and [`EXPECTED`]'s indexes exist.
pub(super) async fn indexes(c: &Client, t: &TableConfig) -> Result<Check> {
    let exists: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))",
            &[&t.schema, &t.table],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(evaluate_indexes(t, false, &[]));
    }
    let list = rows(
        c,
        "SELECT ic.relname::text, i.indisvalid, coalesce(a.attname::text, '') \
         FROM pg_catalog.pg_index i \
         JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
         JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_catalog.pg_attribute a \
                ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
         WHERE n.nspname = $1 AND c.relname = $2 ORDER BY 1",
        &[&t.schema, &t.table],
        |r| Index {
            name: r.get(0),
            valid: r.get(1),
            first_column: r.get(2),
        },
    )
    .await?;
    Ok(evaluate_indexes(t, true, &list))
}

pub(super) fn evaluate_indexes(t: &TableConfig, exists: bool, list: &[Index]) -> Check {
    let id = table_check_id("indexes", &t.schema, &t.table);
    let name = t.qualified();
    if !exists {
        return Check::skip(id, format!("{name} does not exist (see table:{name})"));
    }
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    let owner_led: Vec<&str> = list
        .iter()
        .filter(|i| i.valid && i.first_column == t.owner_column)
        .map(|i| i.name.as_str())
        .collect();
    if owner_led.is_empty() {
        problems.push(format!("no valid index leads with {}", t.owner_column));
        fixes.push(format!(
            "CREATE INDEX CONCURRENTLY {} ON {} ({});",
            ident(&format!("idx_{}_{}", t.table, t.owner_column)),
            qualified(&t.schema, &t.table),
            ident(&t.owner_column)
        ));
    }
    for i in list.iter().filter(|i| !i.valid) {
        problems.push(format!(
            "index {} is invalid (a failed CONCURRENTLY build)",
            i.name
        ));
        fixes.push(format!(
            "REINDEX INDEX CONCURRENTLY {}.{};",
            ident(&t.schema),
            ident(&i.name)
        ));
    }
    if let Some(e) = expected(t) {
        for (want, create) in e.indexes {
            if !list.iter().any(|i| i.name == *want) {
                problems.push(format!("index {want} is missing"));
                fixes.push((*create).to_string());
            }
        }
    }
    verdict(id, &name, &problems, &fixes, || {
        let all: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
        format!(
            "{} indexes ({}); {} leads {}",
            list.len(),
            all.join(", "),
            t.owner_column,
            owner_led.join(", ")
        )
    })
}

#[cfg(test)]
#[path = "security_tests.rs"]
mod tests;
