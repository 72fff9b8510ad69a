//! Routing promises: each user receives exactly their own rows, every session of a user is
//! served, the service role receives all, `event_type` narrows; frames match docs/PROTOCOL.md.

use std::time::Duration;

use crate::common::ws::connect;
use crate::common::{create_user, insert_event, service_token, user_token, TestDb};
use serde_json::json;

const T: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_receives_exactly_their_own_events() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    let (mut a1, ready) = connect(&relay, &user_token(a, HOUR), "").await;
    assert_eq!(ready["user_id"], a.to_string());
    assert_eq!(ready["role"], "authenticated");
    let (mut a2, _) = connect(&relay, &user_token(a, HOUR), "").await;
    let (mut b1, _) = connect(&relay, &user_token(b, HOUR), "").await;
    let (mut service, ready) = connect(&relay, &service_token(), "").await;
    assert_eq!(ready["user_id"], serde_json::Value::Null);
    assert_eq!(ready["role"], "service_role");

    let mut expected_a = Vec::new();
    let mut expected_b = Vec::new();
    for i in 0..5 {
        expected_a.push(
            insert_event(&pg, a, "app_open", json!({"i": i}))
                .await
                .to_string(),
        );
        expected_b.push(
            insert_event(&pg, b, "goal_complete", json!({"i": i}))
                .await
                .to_string(),
        );
    }
    let ids = |events: Vec<serde_json::Value>| -> Vec<String> {
        events
            .iter()
            .map(|e| e["record"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(a1.events(5, T).await), expected_a);
    assert_eq!(ids(a2.events(5, T).await), expected_a);
    assert_eq!(ids(b1.events(5, T).await), expected_b);
    let all = service.events(10, T).await;
    assert_eq!(all.len(), 10);
    for socket in [&mut a1, &mut a2, &mut b1, &mut service] {
        socket.assert_silent(Duration::from_millis(300)).await;
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_frame_carries_the_row_typed_with_cursor_and_commit_timestamp() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (mut client, ready) = connect(&relay, &user_token(user, HOUR), "").await;
    let value = json!({"screen": "home", "nested": {"n": 1.5, "list": [1, "two", null]}});
    let row = pg
        .query_one(
            "INSERT INTO public.engagement_events (user_id, event_type, value, \"timestamp\") \
             VALUES ($1, 'app_open', $2, '2026-11-20 17:30:00.12+05:30') \
             RETURNING id, to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[&user, &value],
        )
        .await
        .unwrap();
    let (id, timestamp): (uuid::Uuid, String) = (row.get(0), row.get(1));
    let event = client.events(1, T).await.remove(0);
    assert_eq!(event["type"], "insert");
    assert_eq!(event["schema"], "public");
    assert_eq!(event["table"], "engagement_events");
    assert_eq!(event["record"]["id"], id.to_string());
    assert_eq!(event["record"]["user_id"], user.to_string());
    assert_eq!(event["record"]["timestamp"], timestamp);
    assert_eq!(event["record"]["timestamp"], "2026-11-20T12:00:00.120000Z");
    assert_eq!(event["record"]["event_type"], "app_open");
    assert_eq!(
        event["record"]["value"], value,
        "jsonb arrives as JSON, not a string"
    );
    assert_eq!(event["record"]["is_deleted"], false);
    let keys: Vec<&str> = event["record"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "user_id",
            "timestamp",
            "event_type",
            "value",
            "is_deleted"
        ]
    );
    let commit = event["commit_timestamp"].as_str().unwrap();
    assert!(commit.ends_with('Z') && commit.len() == 27, "{commit}");
    let cursor = event["cursor"].as_str().unwrap();
    assert!(
        cursor > ready["cursor"].as_str().unwrap(),
        "cursors increase"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_are_totally_ordered_within_and_across_transactions() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (mut client, _) = connect(&relay, &user_token(user, HOUR), "").await;
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, event_type) \
         SELECT $1, 'app_open' FROM generate_series(1, 3)",
        &[&user],
    )
    .await
    .unwrap();
    insert_event(&pg, user, "app_open", json!({})).await;
    let cursors: Vec<String> = client
        .events(4, T)
        .await
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = cursors.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(cursors, sorted, "strictly increasing");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_type_filter_narrows_a_session() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, HOUR);
    let (mut goals, _) = connect(&relay, &token, "&event_type=goal_complete,coach_message").await;
    let (mut all, _) = connect(&relay, &token, "").await;
    for t in ["app_open", "goal_complete", "steps_import", "coach_message"] {
        insert_event(&pg, user, t, json!({})).await;
    }
    let types: Vec<String> = goals
        .events(2, T)
        .await
        .iter()
        .map(|e| e["record"]["event_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["goal_complete", "coach_message"]);
    goals.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(all.events(4, T).await.len(), 4);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_delete_update_reaches_the_owner() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (mut client, _) = connect(&relay, &user_token(user, HOUR), "").await;
    let id = insert_event(&pg, user, "app_open", json!({})).await;
    pg.execute(
        "UPDATE public.engagement_events SET is_deleted = true WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    let events = client.events(2, T).await;
    assert_eq!(events[1]["type"], "update");
    assert_eq!(events[1]["record"]["is_deleted"], true);
    relay.shutdown().await.unwrap();
}
