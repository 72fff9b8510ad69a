//! Supabase Realtime compatibility with the real clients (`@supabase/realtime-js` and
//! `@supabase/supabase-js` from `tests/js`, on Node): `postgres_changes` INSERT subscriptions on
//! `public.engagement_events` work unchanged against the relay, in both protocol versions.

use std::time::Duration;

use crate::common::node::NodeClient;
use crate::common::{create_user, insert_event, service_token, user_token, TestDb};
use engagement_relay::Relay;
use serde_json::{json, Value};

const HOUR: Duration = Duration::from_secs(3600);

fn realtime_url(relay: &Relay) -> String {
    format!("ws://{}/realtime/v1", relay.server_addr())
}

/// A realtime-js client subscribed with `options` (merged over the defaults).
async fn subscribe(relay: &Relay, token: &str, options: Value) -> NodeClient {
    let mut opts = json!({"url": realtime_url(relay), "apikey": token, "token": token});
    for (k, v) in options.as_object().cloned().unwrap_or_default() {
        opts[k] = v;
    }
    let mut client = NodeClient::start("realtime", opts);
    client.status("SUBSCRIBED").await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_protocol_versions_deliver_exactly_the_own_rows_as_inserted() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    let token = user_token(a, HOUR);
    for vsn in ["2.0.0", "1.0.0"] {
        let mut client = subscribe(&relay, &token, json!({"vsn": vsn})).await;
        let value = json!({"screen": "home", "n": 1});
        let row = pg
            .query_one(
                "INSERT INTO public.engagement_events (user_id, event_type, value) VALUES ($1, 'app_open', $2) \
                 RETURNING id, to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                &[&a, &value],
            )
            .await
            .unwrap();
        insert_event(&pg, b, "app_open", json!({"other": true})).await;
        let (id, timestamp): (uuid::Uuid, String) = (row.get(0), row.get(1));
        let change = client.changes(1).await.remove(0);
        assert_eq!(change["eventType"], "INSERT", "vsn {vsn}");
        assert_eq!(change["schema"], "public");
        assert_eq!(change["table"], "engagement_events");
        let new = &change["new"];
        assert_eq!(new["id"], id.to_string(), "vsn {vsn}");
        assert_eq!(new["user_id"], a.to_string());
        assert_eq!(new["timestamp"], timestamp);
        assert_eq!(new["event_type"], "app_open");
        assert_eq!(new["value"], value, "value arrives as an object");
        assert_eq!(new["is_deleted"], false);
        client.no_change(Duration::from_millis(500)).await;
        client.quit().await;
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_narrow_and_never_widen() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    let token = user_token(a, HOUR);
    let mut goals = subscribe(
        &relay,
        &token,
        json!({"filter": "event_type=eq.goal_complete"}),
    )
    .await;
    let other = format!("user_id=eq.{b}");
    let mut spy = subscribe(&relay, &token, json!({"filter": other, "channel": "spy"})).await;
    let mut service = subscribe(
        &relay,
        &service_token(),
        json!({"filter": "event_type=in.(goal_complete,coach_message)"}),
    )
    .await;
    insert_event(&pg, a, "app_open", json!({})).await;
    insert_event(&pg, a, "goal_complete", json!({})).await;
    insert_event(&pg, b, "goal_complete", json!({})).await;
    insert_event(&pg, b, "coach_message", json!({})).await;
    let got = goals.changes(1).await;
    assert_eq!(got[0]["new"]["event_type"], "goal_complete");
    assert_eq!(got[0]["new"]["user_id"], a.to_string());
    goals.no_change(Duration::from_millis(500)).await;
    spy.no_change(Duration::from_millis(500)).await;
    let all: Vec<String> = service
        .changes(3)
        .await
        .iter()
        .map(|c| c["new"]["event_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all, ["goal_complete", "goal_complete", "coach_message"]);
    for c in [goals, spy, service] {
        c.quit().await;
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_auth_keeps_the_subscription_and_expiry_closes_it() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    // Refreshed before expiry: still subscribed afterwards.
    let mut client = subscribe(&relay, &user_token(a, Duration::from_secs(4)), json!({})).await;
    client
        .command(json!({"cmd": "setAuth", "token": user_token(a, HOUR)}))
        .await;
    client
        .expect("setAuth ack", Duration::from_secs(5), |v| {
            v["ack"] == "setAuth"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    insert_event(&pg, a, "app_open", json!({})).await;
    assert_eq!(
        client.changes(1).await.len(),
        1,
        "still subscribed after the first token expired"
    );
    client.quit().await;
    // Not refreshed: a system error, then CLOSED.
    let mut client = subscribe(&relay, &user_token(a, Duration::from_secs(3)), json!({})).await;
    let system = client
        .expect("the expiry system message", Duration::from_secs(15), |v| {
            v["system"]["status"] == "error"
        })
        .await;
    let message = system["system"]["message"].as_str().unwrap();
    assert!(message.starts_with("Token has expired"), "{message}");
    client.status("CLOSED").await;
    client.quit().await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_a_channel_error_with_the_reason() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let good = service_token();
    let wrong = engagement_relay::auth::mint(
        "another-secret",
        Some(uuid::Uuid::new_v4()),
        engagement_relay::auth::Role::Authenticated,
        HOUR,
    )
    .unwrap();
    let expired = user_token(uuid::Uuid::new_v4(), Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (token, reason) in [
        (wrong, "JwtSignatureError"),
        (expired, "InvalidJWTToken: Token has expired"),
    ] {
        let opts = json!({"url": realtime_url(&relay), "apikey": good, "token": token});
        let mut client = NodeClient::start("realtime", opts);
        let status = client.status("CHANNEL_ERROR").await;
        let error = status["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "expected {reason}, got {error}");
        client.quit().await;
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_quiet_socket_alive() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| {
            c.limits.ping_interval = Duration::from_millis(500);
            c.limits.idle_timeout = Duration::from_secs(2);
        })
        .await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    let mut client = subscribe(
        &relay,
        &user_token(a, HOUR),
        json!({"heartbeatIntervalMs": 500}),
    )
    .await;
    // Three idle timeouts pass; only heartbeats keep the socket.
    tokio::time::sleep(Duration::from_secs(6)).await;
    insert_event(&pg, a, "app_open", json!({})).await;
    assert_eq!(client.changes(1).await.len(), 1);
    client.quit().await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_create_client_and_channel_on_work() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    let token = user_token(a, HOUR);
    let url = format!("http://{}", relay.server_addr());
    let mut client = NodeClient::start("supabase-js", json!({"url": url, "apikey": token}));
    client.status("SUBSCRIBED").await;
    let id = insert_event(&pg, a, "goal_complete", json!({"goal_id": 7})).await;
    let change = client.changes(1).await.remove(0);
    assert_eq!(change["new"]["id"], id.to_string());
    assert_eq!(change["new"]["value"], json!({"goal_id": 7}));
    client.quit().await;
    relay.shutdown().await.unwrap();
}
