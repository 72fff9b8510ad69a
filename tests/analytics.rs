//! Issue 15 part 2, the analyst's cohort SQL (`20241216000000_engagement_analytics.sql`): the
//! read-only `analyst` role reads every user's events and the two weekly views, with the right
//! numbers, and can change nothing nor read anything else; a time-range count across all users
//! uses the BRIN index on `"timestamp"`.

use crate::common::sql::{act_as, assert_rejected, in_savepoint, strings};
use crate::common::{create_user, TestDb};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use uuid::Uuid;

const BRIN: &str = "idx_engagement_events_timestamp_brin";

async fn event(pg: &Client, user: Uuid, at: &str, event_type: &str, deleted: bool) {
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, \"timestamp\", event_type, is_deleted) \
         VALUES ($1, $2::text::timestamptz, $3, $4)",
        &[&user, &at, &event_type, &deleted],
    )
    .await
    .expect("insert event");
}

/// Two users over three ISO weeks (2024-01-01, -08 and -15 are Mondays): both start in the
/// first week, only b is active in the second (a's event there is soft-deleted), both in the
/// third.
async fn two_users_three_weeks(pg: &Client) {
    let a = create_user(pg).await;
    let b = create_user(pg).await;
    event(pg, a, "2024-01-01 10:00Z", "app_open", false).await;
    event(pg, a, "2024-01-02 10:00Z", "app_open", false).await;
    event(pg, a, "2024-01-10 10:00Z", "goal_complete", true).await;
    event(pg, a, "2024-01-17 10:00Z", "goal_complete", false).await;
    event(pg, b, "2024-01-03 10:00Z", "app_open", false).await;
    event(pg, b, "2024-01-09 10:00Z", "app_open", false).await;
    event(pg, b, "2024-01-16 10:00Z", "app_open", false).await;
    // Sunday 23:30 UTC: still the week of 2024-01-15, whatever the session's TimeZone.
    event(pg, b, "2024-01-21 23:30Z", "goal_complete", false).await;
}

#[tokio::test]
async fn analyst_reads_weekly_activity_and_cohort_retention_of_all_users() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    two_users_three_weeks(&pg).await;
    act_as(&pg, "analyst", None).await;
    pg.batch_execute("SET LOCAL TimeZone = 'America/Los_Angeles'")
        .await
        .unwrap();
    let activity = strings(
        &pg,
        "SELECT to_char(week AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ' ' || event_type || ' ' \
             || events || ' ' || users \
         FROM public.engagement_weekly_activity ORDER BY week, event_type",
        &[],
    )
    .await;
    assert_eq!(
        activity,
        [
            "2024-01-01 app_open 3 2",
            "2024-01-08 app_open 1 1",
            "2024-01-15 app_open 1 1",
            "2024-01-15 goal_complete 2 2",
        ]
    );
    let cohorts = strings(
        &pg,
        "SELECT to_char(cohort_week AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ' ' || week_number \
             || ' ' || cohort_users || ' ' || active_users || ' ' || retention \
         FROM public.engagement_weekly_cohorts ORDER BY cohort_week, week_number",
        &[],
    )
    .await;
    assert_eq!(
        cohorts,
        [
            "2024-01-01 0 2 2 1.0000",
            "2024-01-01 1 2 1 0.5000",
            "2024-01-01 2 2 2 1.0000",
        ]
    );
    let rows: i64 = pg
        .query_one("SELECT count(*) FROM public.engagement_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 8, "every user's rows, soft-deleted ones too");
    pg.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn analyst_cannot_change_events_nor_read_the_queue_or_auth() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    two_users_three_weeks(&pg).await;
    let user: Uuid = pg
        .query_one("SELECT id FROM auth.users LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    act_as(&pg, "analyst", None).await;
    let denied = SqlState::INSUFFICIENT_PRIVILEGE;
    for (what, sql) in [
        (
            "insert",
            "INSERT INTO public.engagement_events (user_id, event_type) VALUES ($1, 'app_open')",
        ),
        (
            "update",
            "UPDATE public.engagement_events SET is_deleted = true WHERE user_id = $1",
        ),
        (
            "delete",
            "DELETE FROM public.engagement_events WHERE user_id = $1",
        ),
    ] {
        assert_rejected(
            what,
            in_savepoint(&pg, sql, &[&user]).await,
            denied.clone(),
            None,
        );
    }
    for sql in [
        "TRUNCATE public.engagement_events",
        "SELECT count(*) FROM public.engagement_message_queue",
        "SELECT count(*) FROM auth.users",
        "SELECT count(*) FROM public.user_engagement_states",
    ] {
        assert_rejected(sql, in_savepoint(&pg, sql, &[]).await, denied.clone(), None);
    }
    pg.batch_execute("ROLLBACK").await.unwrap();
    // Nothing but SELECT, on exactly the table and the two views; no USAGE on auth.
    let privileges = strings(
        &pg,
        "SELECT c.relname || ' ' || p.privilege_type \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, \
              unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', \
                           'TRIGGER']) AS p(privilege_type) \
         WHERE n.nspname IN ('public', 'auth', 'relay') AND c.relkind IN ('r', 'v', 'p') \
           AND has_table_privilege('analyst', c.oid, p.privilege_type) \
         ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(
        privileges,
        [
            "engagement_events SELECT",
            "engagement_weekly_activity SELECT",
            "engagement_weekly_cohorts SELECT",
        ]
    );
    // Nor any function that could write (trigger functions cannot be called directly).
    let functions = strings(
        &pg,
        "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname IN ('public', 'relay') AND p.prorettype <> 'trigger'::regtype \
           AND has_function_privilege('analyst', p.oid, 'EXECUTE')",
        &[],
    )
    .await;
    assert!(functions.is_empty(), "analyst may execute {functions:?}");
    let usage: bool = pg
        .query_one(
            "SELECT has_schema_privilege('analyst', 'auth', 'USAGE')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!usage, "analyst has no USAGE on schema auth");
}

#[tokio::test]
async fn the_views_are_closed_to_anon_and_authenticated() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    two_users_three_weeks(&pg).await;
    for role in ["anon", "authenticated"] {
        act_as(&pg, role, Some(Uuid::new_v4())).await;
        for view in ["engagement_weekly_activity", "engagement_weekly_cohorts"] {
            let sql = format!("SELECT count(*) FROM public.{view}");
            assert_rejected(
                &format!("{role} {view}"),
                in_savepoint(&pg, &sql, &[]).await,
                SqlState::INSUFFICIENT_PRIVILEGE,
                None,
            );
        }
        pg.batch_execute("ROLLBACK").await.unwrap();
    }
    // Applied again by hand (CREATE OR REPLACE VIEW), the views stay security_invoker.
    pg.batch_execute(include_str!(
        "../sql/migrations/20241216000000_engagement_analytics.sql"
    ))
    .await
    .expect("the migration applies again");
    let invoker = strings(
        &pg,
        "SELECT c.relname || ' ' || array_to_string(c.reloptions, ',') FROM pg_class c \
         WHERE c.relname IN ('engagement_weekly_activity', 'engagement_weekly_cohorts') \
         ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(
        invoker,
        [
            "engagement_weekly_activity security_invoker=true",
            "engagement_weekly_cohorts security_invoker=true",
        ]
    );
}

#[tokio::test]
async fn a_time_range_count_across_all_users_uses_the_brin_index() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let mut users = Vec::new();
    for _ in 0..10 {
        users.push(create_user(&pg).await);
    }
    // 50,000 events, one a minute from 2024-01-01, in time order as they would arrive.
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, \"timestamp\", event_type) \
         SELECT ($1::uuid[])[1 + i % 10], \
                '2024-01-01Z'::timestamptz + make_interval(mins => i), \
                (ARRAY['app_open', 'goal_complete', 'steps_import'])[1 + i % 3] \
         FROM generate_series(0, 49999) AS i",
        &[&users],
    )
    .await
    .expect("insert 50,000 events");
    pg.batch_execute("VACUUM ANALYZE public.engagement_events")
        .await
        .unwrap();
    act_as(&pg, "analyst", None).await;
    let plan = strings(
        &pg,
        "EXPLAIN SELECT count(*) FROM public.engagement_events \
         WHERE \"timestamp\" >= '2024-01-10Z' AND \"timestamp\" < '2024-01-11Z'",
        &[],
    )
    .await
    .join("\n");
    assert!(
        plan.contains(&format!("Bitmap Index Scan on {BRIN}")),
        "expected the BRIN index:\n{plan}"
    );
    let n: i64 = pg
        .query_one(
            "SELECT count(*) FROM public.engagement_events \
             WHERE \"timestamp\" >= '2024-01-10Z' AND \"timestamp\" < '2024-01-11Z'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1440, "one event a minute for a day, all users' rows");
    pg.batch_execute("ROLLBACK").await.unwrap();
}
