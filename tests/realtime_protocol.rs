//! The Phoenix protocol at the frame level (vsn 2.0.0 arrays and 1.0.0 objects): several
//! channels per socket and several bindings per channel, `ids` naming exactly the matching
//! bindings, refused bindings as `system` errors, leave and re-join.

use std::time::Duration;

use crate::common::phoenix::{join, next, open};
use crate::common::{create_user, insert_event, user_token, TestDb};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_bindings_ids_leave_and_rejoin() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    let token = user_token(a, HOUR);
    let mut ws = open(&relay, &token, "2.0.0").await;
    let all = json!({"event": "*", "schema": "public", "table": "engagement_events"});
    let goals = json!({"event": "INSERT", "schema": "public", "table": "engagement_events",
                       "filter": "event_type=eq.goal_complete"});
    let bad = json!({"event": "INSERT", "schema": "public", "table": "engagement_events", "filter": "nope=eq.1"});
    let other = json!({"event": "INSERT", "schema": "public", "table": "orders"});
    ws.send(Message::text(join(
        "realtime:one",
        "1",
        &token,
        json!([all, goals, bad]),
    )))
    .await
    .unwrap();
    let reply = next(&mut ws).await;
    assert_eq!(reply[3], "phx_reply");
    assert_eq!(reply[4]["status"], "ok");
    let echoed = reply[4]["response"]["postgres_changes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(echoed.len(), 3);
    assert_eq!(
        echoed[1]["filter"], "event_type=eq.goal_complete",
        "bindings echoed in order"
    );
    let ids: Vec<u64> = echoed.iter().map(|b| b["id"].as_u64().unwrap()).collect();
    assert_eq!(
        next(&mut ws).await[4]["message"],
        "Subscribed to PostgreSQL"
    );
    let error = next(&mut ws).await;
    assert_eq!(
        (error[3].as_str(), error[4]["status"].as_str()),
        (Some("system"), Some("error"))
    );
    assert!(error[4]["message"]
        .as_str()
        .unwrap()
        .contains("unknown column `nope`"));

    ws.send(Message::text(join(
        "realtime:two",
        "2",
        &token,
        json!([other]),
    )))
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await[4]["status"], "ok", "the join succeeds");
    let error = next(&mut ws).await;
    assert!(
        error[4]["message"]
            .as_str()
            .unwrap()
            .contains("Unable to subscribe"),
        "{error}"
    );

    insert_event(&pg, a, "goal_complete", json!({})).await;
    let change = next(&mut ws).await;
    assert_eq!(
        (change[0].as_str(), change[2].as_str()),
        (Some("1"), Some("realtime:one"))
    );
    assert_eq!(change[3], "postgres_changes");
    assert_eq!(
        change[4]["ids"],
        json!([ids[0], ids[1]]),
        "both matching bindings, not the refused one"
    );
    assert_eq!(change[4]["data"]["type"], "INSERT");
    let types: Vec<&str> = change[4]["data"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["uuid", "uuid", "timestamptz", "text", "jsonb", "bool"]
    );
    insert_event(&pg, a, "app_open", json!({})).await;
    assert_eq!(next(&mut ws).await[4]["ids"], json!([ids[0]]));

    // Re-join replaces; leave ends with a reply and phx_close.
    ws.send(Message::text(join(
        "realtime:one",
        "3",
        &token,
        json!([goals]),
    )))
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await[4]["status"], "ok");
    next(&mut ws).await; // Subscribed to PostgreSQL
    ws.send(Message::text(
        json!(["3", "4", "realtime:one", "phx_leave", {}]).to_string(),
    ))
    .await
    .unwrap();
    let reply = next(&mut ws).await;
    assert_eq!(
        (reply[1].as_str(), reply[3].as_str()),
        (Some("4"), Some("phx_reply"))
    );
    let close = next(&mut ws).await;
    assert_eq!(
        (close[0].as_str(), close[1].as_str(), close[3].as_str()),
        (Some("3"), Some("3"), Some("phx_close")),
        "phx_close carries the join_ref as its ref, as Phoenix does"
    );
    ws.send(Message::text(
        json!([null, "5", "phoenix", "heartbeat", {}]).to_string(),
    ))
    .await
    .unwrap();
    let beat = next(&mut ws).await;
    assert_eq!(
        (
            beat[1].as_str(),
            beat[3].as_str(),
            beat[4]["status"].as_str()
        ),
        (Some("5"), Some("phx_reply"), Some("ok"))
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsn_1_frames_are_objects_and_the_apikey_is_checked() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    let token = user_token(a, HOUR);
    let mut ws = open(&relay, &token, "1.0.0").await;
    let binding = json!([{"event": "INSERT", "schema": "public", "table": "engagement_events"}]);
    let msg = json!({"topic": "realtime:one", "event": "phx_join", "ref": "1", "join_ref": "1",
                     "payload": {"config": {"postgres_changes": binding}, "access_token": token}});
    ws.send(Message::text(msg.to_string())).await.unwrap();
    assert_eq!(next(&mut ws).await[4]["status"], "ok");
    next(&mut ws).await;
    insert_event(&pg, a, "app_open", json!({})).await;
    let raw = loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await {
            break serde_json::from_str::<Value>(&t).unwrap();
        }
    };
    assert_eq!(raw["event"], "postgres_changes");
    assert!(raw["payload"]["data"]["commit_timestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let url = format!(
        "ws://{}/realtime/v1/websocket?apikey=garbage&vsn=2.0.0",
        relay.server_addr()
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!("a bad apikey was accepted: {:?}", other.map(|_| ())),
    }
    relay.shutdown().await.unwrap();
}
