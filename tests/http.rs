//! HTTP surface: `/healthz`, a plain GET on the Realtime socket is 426 (on `/v1/events` it is
//! the history API), the relay refuses sessions past
//! `server.max_sessions` with 503 until one ends, and a peer that stops answering pings is dropped.

use std::time::Duration;

use crate::common::ws::{connect, upgrade, Upgrade};
use crate::common::{user_token, wait_until, TestDb};
use uuid::Uuid;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_ok_and_a_plain_get_on_the_realtime_socket_is_426() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let base = format!("http://{}", relay.server_addr());
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let token = user_token(Uuid::new_v4(), MINUTE);
    let plain = reqwest::get(format!("{base}/realtime/v1/websocket?apikey={token}"))
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 426);
    let body: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(body["error"], "websocket_required");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_max_sessions_get_503() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| c.server.max_sessions = std::num::NonZero::new(2))
        .await;
    let token = user_token(Uuid::new_v4(), MINUTE);
    let a = connect(&relay, &token, "").await;
    let _b = connect(&relay, &token, "").await;
    match upgrade(&relay, &format!("access_token={token}"), None).await {
        Upgrade::Refused(status, body) => {
            assert_eq!(status, 503);
            assert_eq!(body["error"], "too_many_sessions");
        }
        Upgrade::Open(_) => panic!("a third session was accepted"),
    }
    // A session that ends gives its slot back.
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match upgrade(&relay, &format!("access_token={token}"), None).await {
            Upgrade::Open(_) => break,
            Upgrade::Refused(503, _) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Upgrade::Refused(status, body) => panic!("the freed slot was refused: {status} {body}"),
        }
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| {
            c.limits.ping_interval = Duration::from_millis(200);
            c.limits.idle_timeout = Duration::from_secs(1);
        })
        .await;
    // The client never reads again, so it never answers the server's pings.
    let (_silent, _) = connect(&relay, &user_token(Uuid::new_v4(), MINUTE), "").await;
    assert_eq!(relay.router().session_counts().0, 1);
    wait_until(
        "the silent session is dropped",
        Duration::from_secs(10),
        || relay.router().session_counts().0 == 0,
    )
    .await;
    relay.shutdown().await.unwrap();
}
