//! Unit tests of the RLS and index evaluations (no database).

use super::*;
use crate::doctor::report::assert_check;
use crate::doctor::Status;
use crate::tables::default_tables;

fn events() -> TableConfig {
    default_tables().remove(0)
}

fn policy(name: &str, roles: &[&str], cmd: &str, qual: &str, check: &str) -> Policy {
    Policy {
        name: name.into(),
        permissive: true,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        cmd: cmd.into(),
        qual: qual.into(),
        with_check: check.into(),
    }
}

fn migration_policies() -> Vec<Policy> {
    vec![
        policy(
            "Users can view own events",
            &["public"],
            "SELECT",
            "(auth.uid() = user_id)",
            "",
        ),
        policy(
            "Users can insert own events",
            &["public"],
            "INSERT",
            "",
            "(auth.uid() = user_id)",
        ),
        policy(
            "Service role can insert any events",
            &["service_role"],
            "INSERT",
            "",
            "true",
        ),
    ]
}

#[test]
fn the_migrations_policies_pass() {
    assert_check(
        &evaluate_rls(&events(), Some(true), &migration_policies()),
        Status::Pass,
        "\"Users can view own events\" (SELECT)",
    );
}

#[test]
fn disabled_rls_fails_with_the_enable_statement() {
    let c = evaluate_rls(&events(), Some(false), &migration_policies());
    assert_eq!(c.status, Status::Fail);
    assert_eq!(c.id, "rls:public.engagement_events");
    assert!(c.detail.contains("relrowsecurity = false"));
    assert_eq!(
        c.fix.unwrap(),
        "ALTER TABLE public.engagement_events ENABLE ROW LEVEL SECURITY;"
    );
}

#[test]
fn a_missing_named_policy_fails_for_engagement_events() {
    let mut policies = migration_policies();
    policies.remove(2);
    assert_check(
        &evaluate_rls(&events(), Some(true), &policies),
        Status::Fail,
        "Service role can insert any events",
    );
}

#[test]
fn other_tables_need_only_some_owner_policy_whatever_its_name() {
    let t = TableConfig {
        table: "audit_log".into(),
        ..events()
    };
    let own = policy(
        "whatever",
        &["authenticated"],
        "SELECT",
        "(( SELECT auth.uid() AS uid) = user_id)",
        "",
    );
    assert_eq!(
        evaluate_rls(&t, Some(true), std::slice::from_ref(&own)).status,
        Status::Pass
    );
    // Not an owner policy: service role only, restrictive, another column, no JWT.
    for p in [
        policy("s", &["service_role"], "ALL", "(auth.uid() = user_id)", ""),
        Policy {
            permissive: false,
            ..own.clone()
        },
        policy(
            "o",
            &["public"],
            "SELECT",
            "(auth.uid() = other_user_id)",
            "",
        ),
        policy("n", &["public"], "SELECT", "(user_id IS NOT NULL)", ""),
    ] {
        let c = evaluate_rls(&t, Some(true), &[p]);
        assert_eq!(c.status, Status::Fail, "{}", c.detail);
        assert!(c.fix.unwrap().contains("CREATE POLICY"));
    }
    assert_eq!(evaluate_rls(&t, None, &[]).status, Status::Skip);
}

#[test]
fn column_mentions_are_whole_words_or_quoted() {
    assert!(mentions_column("(auth.uid() = user_id)", "user_id"));
    assert!(!mentions_column("(auth.uid() = other_user_id)", "user_id"));
    assert!(mentions_column("(auth.uid() = \"Owner\")", "Owner"));
    assert!(!mentions_column("", "user_id"));
}

fn index(name: &str, first: &str) -> Index {
    Index {
        name: name.into(),
        valid: true,
        first_column: first.into(),
    }
}

fn migration_indexes() -> Vec<Index> {
    vec![
        index("engagement_events_pkey", "id"),
        index("idx_engagement_events_type", "event_type"),
        index("idx_engagement_events_user_timestamp", "user_id"),
        index("idx_engagement_events_value", "value"),
    ]
}

#[test]
fn the_migrations_indexes_pass() {
    let c = evaluate_indexes(&events(), true, &migration_indexes());
    assert_eq!(c.status, Status::Pass, "{}", c.detail);
    assert!(c
        .detail
        .contains("user_id leads idx_engagement_events_user_timestamp"));
}

#[test]
fn a_missing_owner_index_or_named_index_fails_with_its_create_statement() {
    let mut list = migration_indexes();
    list.retain(|i| i.name != "idx_engagement_events_user_timestamp");
    let c = evaluate_indexes(&events(), true, &list);
    assert_eq!(c.status, Status::Fail);
    let fix = c.fix.unwrap();
    assert!(fix.contains("CREATE INDEX CONCURRENTLY idx_engagement_events_user_id ON public.engagement_events (user_id);"), "{fix}");
    assert!(
        fix.contains("idx_engagement_events_user_timestamp ON public.engagement_events"),
        "{fix}"
    );
    let t = TableConfig {
        table: "audit_log".into(),
        ..events()
    };
    assert_eq!(
        evaluate_indexes(&t, true, &[index("x", "user_id")]).status,
        Status::Pass
    );
    let invalid = Index {
        valid: false,
        ..index("x", "user_id")
    };
    let c = evaluate_indexes(&t, true, &[invalid]);
    assert_eq!(c.status, Status::Fail);
    assert!(c
        .fix
        .unwrap()
        .contains("REINDEX INDEX CONCURRENTLY public.x;"));
    assert_eq!(evaluate_indexes(&t, false, &[]).status, Status::Skip);
}
