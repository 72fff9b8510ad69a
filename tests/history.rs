//! `GET /v1/events` without an upgrade: a user's own history, newest first, keyset pages that
//! return every row exactly once while inserts continue, filters, the service role's
//! `user_id=`, and a plan that uses the (user_id, "timestamp" DESC) index.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{create_user, service_token, user_token, TestDb};
use engagement_relay::http::api::history::USER_PAGE_SQL;
use serde_json::Value;
use uuid::Uuid;

const HOUR: Duration = Duration::from_secs(3600);

/// GETs the history API with `query` as `token`; returns the status and the JSON body.
pub(crate) async fn get(relay: &engagement_relay::Relay, token: &str, query: &str) -> (u16, Value) {
    let url = format!("http://{}/v1/events?{query}", relay.server_addr());
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Inserts `n` rows for `user`, ten per distinct timestamp (so pages split ties), in the past.
async fn rows(pg: &tokio_postgres::Client, user: Uuid, n: i32, event_type: &str) {
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, event_type, \"timestamp\", value) \
         SELECT $1, $3, now() - interval '1 day' - (g / 10) * interval '1 minute', jsonb_build_object('g', g) \
         FROM generate_series(1, $2) g",
        &[&user, &n, &event_type],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_return_every_row_once_while_inserts_continue() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let (me, other) = (create_user(&pg).await, create_user(&pg).await);
    rows(&pg, me, 250, "app_open").await;
    rows(&pg, other, 30, "app_open").await;
    let token = user_token(me, HOUR);
    // New rows keep arriving (newer than every page) while the client pages.
    let url = db.url.clone();
    let writer = tokio::spawn(async move {
        let pg = engagement_relay::db::connect(&url).await.unwrap();
        for _ in 0..50 {
            crate::common::insert_event(&pg, me, "app_open", serde_json::json!({"new": true}))
                .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let (mut seen, mut cursor, mut last_ts) = (Vec::new(), None::<String>, None::<String>);
    loop {
        let query = match &cursor {
            None => "limit=40&until=2100-01-01T00:00:00Z&since=2000-01-01T00:00:00Z".to_string(),
            Some(c) => format!("limit=40&cursor={c}"),
        };
        let (status, page) = get(&relay, &token, &query).await;
        assert_eq!(status, 200, "{page}");
        for event in page["events"].as_array().unwrap() {
            assert_eq!(event["user_id"], me.to_string(), "only my rows");
            let ts = event["timestamp"].as_str().unwrap().to_string();
            assert!(last_ts.as_ref().is_none_or(|l| *l >= ts), "newest first");
            last_ts = Some(ts);
            seen.push(event["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    writer.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no row twice");
    // Every old row, plus whichever new rows had committed before the first page.
    let old: i64 = pg
        .query_one(
            "SELECT count(*) FROM public.engagement_events WHERE user_id = $1 AND NOT value ? 'new'",
            &[&me],
        )
        .await
        .unwrap()
        .get(0);
    let new_seen = seen.len() as i64 - old;
    assert!(
        old == 250 && (0..=50).contains(&new_seen),
        "{} rows seen",
        seen.len()
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_the_service_role_and_bad_queries() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let (me, other) = (create_user(&pg).await, create_user(&pg).await);
    rows(&pg, me, 20, "app_open").await;
    rows(&pg, me, 5, "goal_complete").await;
    rows(&pg, other, 7, "app_open").await;
    let mine = user_token(me, HOUR);
    let (_, goals) = get(&relay, &mine, "event_type=goal_complete").await;
    assert_eq!(goals["events"].as_array().unwrap().len(), 5);
    // A user's user_id= is ignored: RLS and the query keep them to their own rows.
    let (_, own) = get(&relay, &mine, &format!("user_id={other}&limit=1000")).await;
    assert_eq!(own["events"].as_array().unwrap().len(), 25);
    let service = service_token();
    let (_, theirs) = get(&relay, &service, &format!("user_id={other}")).await;
    assert_eq!(theirs["events"].as_array().unwrap().len(), 7);
    let (_, all) = get(&relay, &service, "limit=1000").await;
    assert_eq!(all["events"].as_array().unwrap().len(), 32);
    for bad in [
        "limit=0",
        "limit=x",
        "since=yesterday",
        "cursor=abc",
        "until=2026-01-01",
    ] {
        let (status, body) = get(&relay, &mine, bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_query")),
            "{bad}"
        );
    }
    let (status, _) = get(&relay, "garbage", "").await;
    assert_eq!(status, 401);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_query_uses_the_user_timestamp_index() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    for _ in 0..50 {
        let user = create_user(&pg).await;
        rows(&pg, user, 100, "app_open").await;
    }
    pg.batch_execute("ANALYZE public.engagement_events")
        .await
        .unwrap();
    let user = create_user(&pg).await;
    let none: Option<chrono::DateTime<chrono::Utc>> = None;
    let (types, id): (Option<Vec<String>>, Option<Uuid>) = (None, None);
    let plan: Vec<String> = pg
        .query(
            &format!("EXPLAIN {USER_PAGE_SQL}"),
            &[&user, &none, &none, &types, &none, &id, &101_i64],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("idx_engagement_events_user_timestamp"),
        "{plan}"
    );
}
