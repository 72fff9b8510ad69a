//! Issue 15: `user_engagement_states.last_activity_at` follows `engagement_events` inserts
//! (trigger of `20241215000000_engagement_activity.sql`: one upsert per user and statement,
//! never backwards, at most once a minute), and `GET /v1/users/inactive` pages through
//! `public.inactive_users()`, which the last_activity_at index serves at 100,000 users.

use std::collections::BTreeSet;

use crate::common::sql::{act_as, count, insert_event_at};
use crate::common::{create_user, service_token, user_token, TestDb};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Client;
use uuid::Uuid;

const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
const INDEX: &str = "idx_user_engagement_states_last_activity_at";

/// `user`'s last_activity_at and the row version (`xmin`), or `None` without a state row.
async fn state(pg: &Client, user: Uuid) -> Option<(DateTime<Utc>, String)> {
    pg.query_opt(
        "SELECT last_activity_at, xmin::text FROM public.user_engagement_states \
         WHERE user_id = $1",
        &[&user],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

/// Inserts an event of `user` whose timestamp is `seconds_ago` before now; returns that time.
async fn event_seconds_ago(pg: &Client, user: Uuid, seconds_ago: f64) -> DateTime<Utc> {
    pg.query_one(
        "INSERT INTO public.engagement_events (user_id, event_type, \"timestamp\") \
         VALUES ($1, 'app_open', now() - make_interval(secs => $2)) RETURNING \"timestamp\"",
        &[&user, &seconds_ago],
    )
    .await
    .expect("insert event")
    .get(0)
}

#[tokio::test]
async fn an_insert_creates_or_advances_the_users_last_activity_at() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    assert_eq!(state(&pg, a).await, None, "no state row before any event");
    let first = event_seconds_ago(&pg, a, 600.0).await;
    let (at, _) = state(&pg, a)
        .await
        .expect("the first event creates the state row");
    assert_eq!(at, first);
    let state_name: String = pg
        .query_one(
            "SELECT state FROM public.user_engagement_states WHERE user_id = $1",
            &[&a],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state_name, "active", "the seed's initial state");
    let later = event_seconds_ago(&pg, a, 60.0).await;
    assert_eq!(state(&pg, a).await.unwrap().0, later);
}

#[tokio::test]
async fn a_batch_insert_does_one_upsert_per_user_with_its_newest_event() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    pg.batch_execute("BEGIN").await.unwrap();
    // 5,000 events in one statement, alternating users, event i at now() - (5000 - i) s.
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, event_type, \"timestamp\") \
         SELECT CASE WHEN i % 2 = 0 THEN $1::uuid ELSE $2::uuid END, 'steps_import', \
                now() - make_interval(secs => 5000 - i) \
         FROM generate_series(1, 5000) i",
        &[&a, &b],
    )
    .await
    .unwrap();
    let writes = count(
        &pg,
        "SELECT n_tup_ins + n_tup_upd FROM pg_stat_xact_user_tables \
         WHERE relid = 'public.user_engagement_states'::regclass",
        &[],
    )
    .await;
    assert_eq!(writes, 2, "one row written per user, not per event");
    pg.batch_execute("COMMIT").await.unwrap();
    for (user, newest_i) in [(a, 5000.0), (b, 4999.0)] {
        let expected: DateTime<Utc> = pg
            .query_one(
                "SELECT max(\"timestamp\") FROM public.engagement_events WHERE user_id = $1",
                &[&user],
            )
            .await
            .unwrap()
            .get(0);
        let (at, _) = state(&pg, user).await.unwrap();
        assert_eq!(at, expected, "event {newest_i} is the user's newest");
    }
}

#[tokio::test]
async fn an_older_event_does_not_move_last_activity_at_backwards() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    let newest = event_seconds_ago(&pg, a, 60.0).await;
    let before = state(&pg, a).await.unwrap();
    insert_event_at(&pg, a, 3, false).await;
    event_seconds_ago(&pg, a, 3600.0).await;
    assert_eq!(
        state(&pg, a).await.unwrap(),
        before,
        "neither time nor row changed"
    );
    assert_eq!(before.0, newest);
}

/// Inserts an event of `user` at `at`.
async fn event_at(pg: &Client, user: Uuid, at: DateTime<Utc>) {
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, event_type, \"timestamp\") \
         VALUES ($1, 'app_open', $2)",
        &[&user, &at],
    )
    .await
    .expect("insert event");
}

#[tokio::test]
async fn last_activity_at_is_written_at_most_once_a_minute_of_event_time() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    // Microseconds, as PostgreSQL stores them.
    let first = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
        - chrono::Duration::minutes(10);
    let seconds = chrono::Duration::seconds;
    event_at(&pg, a, first).await;
    let (at, version) = state(&pg, a).await.unwrap();
    assert_eq!(at, first);
    // 30 s and exactly 60 s later: within the minute, the row is not written (same xmin).
    event_at(&pg, a, first + seconds(30)).await;
    event_at(&pg, a, first + seconds(60)).await;
    assert_eq!(state(&pg, a).await.unwrap(), (first, version.clone()));
    // More than a minute later: written, to the new time.
    let later = first + seconds(61);
    event_at(&pg, a, later).await;
    let (at, new_version) = state(&pg, a).await.unwrap();
    assert_eq!(at, later);
    assert_ne!(new_version, version, "the row was written");
}

#[tokio::test]
async fn a_users_own_insert_under_rls_updates_their_state() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    act_as(&pg, "authenticated", Some(a)).await;
    let at: DateTime<Utc> = pg
        .query_one(
            "INSERT INTO public.engagement_events (user_id, event_type) \
             VALUES ($1, 'app_open') RETURNING \"timestamp\"",
            &[&a],
        )
        .await
        .expect("a user inserts their own event; the trigger's upsert is not refused")
        .get(0);
    pg.batch_execute("COMMIT").await.unwrap();
    assert_eq!(state(&pg, a).await.unwrap().0, at);
}

#[tokio::test]
async fn only_the_service_role_may_execute_inactive_users() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    for role in ["anon", "authenticated"] {
        act_as(&pg, role, Some(Uuid::new_v4())).await;
        let err = pg
            .query("SELECT * FROM public.inactive_users('48h', 10, NULL)", &[])
            .await
            .expect_err(role);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{role}"
        );
        pg.batch_execute("ROLLBACK").await.unwrap();
    }
    act_as(&pg, "service_role", None).await;
    pg.query("SELECT * FROM public.inactive_users('48h', 10, NULL)", &[])
        .await
        .expect("service_role executes it");
    pg.batch_execute("ROLLBACK").await.unwrap();
}

/// GETs `path` with `token`; returns the status and the JSON body.
async fn get(relay: &engagement_relay::Relay, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(format!("http://{}{path}", relay.server_addr()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every user of `GET /v1/users/inactive?{query}` in pages of `limit`, checking each page's
/// order and cursor.
async fn all_pages(relay: &engagement_relay::Relay, query: &str, limit: usize) -> Vec<Uuid> {
    let token = service_token();
    let mut users = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let path = format!("/v1/users/inactive?{query}&limit={limit}{cursor}");
        let (status, body) = get(relay, &path, Some(&token)).await;
        assert_eq!(status, 200, "{path}: {body}");
        let page: Vec<Uuid> = body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                assert!(
                    u["last_activity_at"].as_str().unwrap().ends_with('Z'),
                    "{u}"
                );
                Uuid::parse_str(u["user_id"].as_str().unwrap()).unwrap()
            })
            .collect();
        assert!(page.len() <= limit);
        users.extend(page);
        match &body["next_after"] {
            Value::Null => return users,
            Value::String(next) => {
                assert_eq!(
                    next,
                    &users.last().unwrap().to_string(),
                    "the page's last user"
                );
                after = Some(next.clone());
            }
            other => panic!("next_after: {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_pages_through_inactive_users_and_skips_opted_out_ones_unless_asked() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let mut inactive = Vec::new();
    for _ in 0..5 {
        let u = create_user(&pg).await;
        insert_event_at(&pg, u, 3, false).await;
        inactive.push(u);
    }
    let active = create_user(&pg).await;
    event_seconds_ago(&pg, active, 60.0).await;
    let opted_out = create_user(&pg).await;
    insert_event_at(&pg, opted_out, 3, false).await;
    pg.execute(
        "INSERT INTO public.user_profiles (id, reengagement_opt_out) VALUES ($1, true)",
        &[&opted_out],
    )
    .await
    .unwrap();
    // A profile that did not opt out changes nothing.
    pg.execute(
        "INSERT INTO public.user_profiles (id) VALUES ($1)",
        &[&inactive[0]],
    )
    .await
    .unwrap();
    inactive.sort();

    assert_eq!(all_pages(&relay, "for=48h", 2).await, inactive);
    let (status, body) = get(&relay, "/v1/users/inactive", Some(&service_token())).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["users"].as_array().unwrap().len(),
        5,
        "default 48h: {body}"
    );
    assert_eq!(body["next_after"], Value::Null);

    let mut with_opted_out = inactive.clone();
    with_opted_out.push(opted_out);
    with_opted_out.sort();
    let got = all_pages(&relay, "for=2d&include_opted_out=true", 3).await;
    assert_eq!(got, with_opted_out);
    // Inactive for 5 minutes: the active user (last event 60 s ago) is not.
    let got: BTreeSet<Uuid> = all_pages(&relay, "for=5m", 1000)
        .await
        .into_iter()
        .collect();
    assert!(!got.contains(&active) && got.len() == 5);
    let got: BTreeSet<Uuid> = all_pages(&relay, "for=4d", 10).await.into_iter().collect();
    assert!(got.is_empty(), "nobody inactive for 4 days: {got:?}");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_refuses_users_and_bad_parameters_by_name() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    let (status, body) = get(&relay, "/v1/users/inactive", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = get(
        &relay,
        "/v1/users/inactive?for=48h",
        Some(&user_token(a, HOUR)),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    assert!(
        body["message"].as_str().unwrap().contains("service_role"),
        "{body}"
    );
    let service = service_token();
    for (query, parameter) in [
        ("for=30s", "for: "),
        ("for=400d", "for: "),
        ("for=soon", "for: "),
        ("limit=0", "limit: "),
        ("limit=1001", "limit: "),
        ("after=42", "after: "),
        ("include_opted_out=1", "include_opted_out: "),
    ] {
        let (status, body) = get(
            &relay,
            &format!("/v1/users/inactive?{query}"),
            Some(&service),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], "invalid_query", "{query}");
        assert!(
            body["message"].as_str().unwrap().starts_with(parameter),
            "{query}: {body}"
        );
    }
    relay.shutdown().await.unwrap();
}

/// Every node of an `EXPLAIN (FORMAT JSON)` plan, depth first.
fn nodes<'a>(plan: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(plan);
    for child in plan["Plans"].as_array().into_iter().flatten() {
        nodes(child, out);
    }
}

/// Every node of the plan of `sql` (acting as the service role).
async fn plan(pg: &Client, sql: &str) -> (Value, Vec<Value>) {
    act_as(pg, "service_role", None).await;
    let plan: Value = pg
        .query_one(&format!("EXPLAIN (FORMAT JSON) {sql}"), &[])
        .await
        .unwrap()
        .get(0);
    pg.batch_execute("ROLLBACK").await.unwrap();
    let mut all = Vec::new();
    nodes(&plan[0]["Plan"], &mut all);
    let all = all.into_iter().cloned().collect();
    (plan, all)
}

fn assert_no_seq_scan_and_inlined(sql: &str, plan: &Value, all: &[Value]) {
    assert!(
        !all.iter().any(|n| n["Node Type"] == "Function Scan"),
        "the function is inlined, so this is its own plan: {plan}"
    );
    assert!(
        !all.iter().any(|n| n["Node Type"] == "Seq Scan"
            && n["Relation Name"] == "user_engagement_states"),
        "{sql} does not scan user_engagement_states: {plan}"
    );
}

#[tokio::test]
async fn the_inactivity_query_uses_the_last_activity_index_at_100000_users() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    // 100,000 users, 1 in 1,000 inactive since the same instant 3 days ago, the rest active at
    // distinct times within the last 47 hours (the nudge engine's everyday picture: most users
    // come back within two days); every tenth has a profile, every 200th opted out. With the
    // default statistics the planner estimates the inactive share from the most common value
    // (0.1%) and reads only those users through the index; a 1% share falls inside one
    // histogram bucket, and walking the user_id index then looks as cheap.
    pg.batch_execute(
        "CREATE TEMP TABLE ids AS \
             SELECT i, gen_random_uuid() AS id FROM generate_series(1, 100000) i; \
         INSERT INTO auth.users (id) SELECT id FROM ids; \
         INSERT INTO public.user_engagement_states (user_id, last_activity_at) \
             SELECT id, CASE WHEN i % 1000 = 7 THEN now() - interval '3 days' \
                             ELSE now() - make_interval(secs => i * 1.69) END \
             FROM ids; \
         INSERT INTO public.user_profiles (id, reengagement_opt_out) \
             SELECT id, i % 200 = 0 FROM ids WHERE i % 10 = 0; \
         ANALYZE auth.users, public.user_engagement_states, public.user_profiles;",
    )
    .await
    .unwrap();
    let cursor = Uuid::from_u128(u128::MAX / 2);
    for args in [
        "'48 hours', 101, NULL::uuid, false".to_string(),
        "'48 hours', 101, NULL::uuid, true".to_string(),
        format!("'48 hours', 101, '{cursor}'::uuid, false"),
    ] {
        let sql = format!("SELECT * FROM public.inactive_users({args})");
        let (plan, all) = plan(&pg, &sql).await;
        assert_no_seq_scan_and_inlined(&sql, &plan, &all);
        assert!(
            all.iter().any(|n| n["Index Name"] == INDEX
                && ["Index Scan", "Index Only Scan", "Bitmap Index Scan"]
                    .contains(&n["Node Type"].as_str().unwrap())),
            "{sql} reads {INDEX}: {plan}"
        );
    }
    act_as(&pg, "service_role", None).await;
    let rows = pg
        .query(
            "SELECT * FROM public.inactive_users('48 hours', 1000, NULL)",
            &[],
        )
        .await
        .unwrap();
    pg.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(rows.len(), 100, "the 100 inactive users, none opted out");

    // When half the users are inactive, walking the user_id index and stopping after p_limit
    // rows is cheaper; the planner may take it, but still never scans the whole table.
    pg.batch_execute(
        "UPDATE public.user_engagement_states SET last_activity_at = now() - interval '3 days' \
         WHERE user_id < '80000000-0000-0000-0000-000000000000'; \
         ANALYZE public.user_engagement_states;",
    )
    .await
    .unwrap();
    let sql = "SELECT * FROM public.inactive_users('48 hours', 101, NULL::uuid, false)";
    let (plan, all) = plan(&pg, sql).await;
    assert_no_seq_scan_and_inlined(sql, &plan, &all);
}
