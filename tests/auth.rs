//! Auth promises: refused upgrades get 401/403 with a JSON reason before the handshake; an
//! expiring token closes the session with 4001 unless refreshed; a refresh may not change
//! identity (4003); malformed frames close with 1008, oversized ones with 1009.

use std::time::Duration;

use crate::common::ws::{connect, upgrade, Next, Upgrade};
use crate::common::{create_user, insert_event, user_token, TestDb, SECRET};
use base64::Engine;
use engagement_relay::auth::{mint, now_s, Role};
use serde_json::json;
use uuid::Uuid;

const T: Duration = Duration::from_secs(10);

fn sign(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn unsigned(claims: serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_before_the_upgrade_with_a_reason() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let sub = Uuid::new_v4();
    let user =
        |exp: i64| json!({"sub": sub, "role": "authenticated", "aud": "authenticated", "exp": exp});
    let later = now_s() + 600;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("missing", String::new(), 401, "missing_token"),
        ("malformed", "abc.def".into(), 401, "malformed_token"),
        (
            "alg none",
            unsigned(user(later)),
            401,
            "unsupported_algorithm",
        ),
        (
            "wrong secret",
            sign(user(later), "not-the-secret"),
            401,
            "invalid_signature",
        ),
        (
            "expired",
            sign(user(now_s() - 5), SECRET),
            401,
            "token_expired",
        ),
        (
            "anon",
            sign(json!({"role": "anon", "exp": later}), SECRET),
            403,
            "role_not_allowed",
        ),
        (
            "no sub",
            sign(
                json!({"role": "authenticated", "aud": "authenticated", "exp": later}),
                SECRET,
            ),
            401,
            "invalid_claims",
        ),
    ];
    for (name, token, status, code) in cases {
        let query = if token.is_empty() {
            String::new()
        } else {
            format!("access_token={token}")
        };
        match upgrade(&relay, &query, None).await {
            Upgrade::Refused(got, body) => {
                assert_eq!(got, status, "{name}: {body}");
                assert_eq!(body["error"], code, "{name}: {body}");
                assert!(
                    body["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{name}"
                );
            }
            Upgrade::Open(_) => panic!("{name}: the upgrade was accepted"),
        }
    }
    let metrics = crate::common::scrape(&relay).await;
    assert!(metrics.contains("relay_auth_failures_total{reason=\"invalid_signature\"}"));
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_header_is_accepted_too() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let token = user_token(Uuid::new_v4(), Duration::from_secs(60));
    match upgrade(&relay, "", Some(&token)).await {
        Upgrade::Open(mut c) => assert_eq!(c.next_json(T).await.unwrap()["type"], "ready"),
        Upgrade::Refused(s, b) => panic!("{s} {b}"),
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_closes_the_session_with_4001() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let token = user_token(Uuid::new_v4(), Duration::from_secs(4));
    let (mut client, _) = connect(&relay, &token, "").await;
    let error = client
        .next_json(T)
        .await
        .expect("an error frame before the close");
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "token_expired");
    assert_eq!(client.close_code(T).await, 4001);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_under_sustained_traffic_keeps_the_session_open() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let exp = now_s() + 4;
    let (mut client, _) = connect(&relay, &user_token(user, Duration::from_secs(4)), "").await;
    // A steady stream keeps the session's queue busy while the refresh arrives.
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = {
        let (stop, url) = (stop.clone(), db.url.clone());
        tokio::spawn(async move {
            let pg = crate::common::connect(&url).await;
            while !stop.is_cancelled() {
                insert_event(&pg, user, "app_open", json!({})).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let fresh = user_token(user, Duration::from_secs(600));
    client
        .send_text(&json!({"type": "access_token", "access_token": fresh}).to_string())
        .await;
    // Keep reading well past the first token's expiry: only events may arrive.
    while now_s() <= exp + 1 {
        match client.next(T).await {
            Next::Json(v) if v["type"] == "insert" => {}
            other => panic!("the refreshed session ended or misbehaved: {other:?}"),
        }
    }
    stop.cancel();
    traffic.await.unwrap();
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_refresh_closes_with_4003_for_another_identity_and_4001_when_invalid() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let minute = Duration::from_secs(60);
    let other = mint(SECRET, Some(Uuid::new_v4()), Role::Authenticated, minute).unwrap();
    for (refresh, code) in [(other.as_str(), 4003), ("garbage", 4001)] {
        let (mut client, _) = connect(&relay, &user_token(Uuid::new_v4(), minute), "").await;
        let frame = json!({"type": "access_token", "access_token": refresh});
        client.send_text(&frame.to_string()).await;
        assert_eq!(client.close_code(T).await, code, "refresh with {refresh}");
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_with_1008_and_oversized_ones_with_1009() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| c.limits.max_client_frame_bytes = 1024)
        .await;
    let token = user_token(Uuid::new_v4(), Duration::from_secs(60));
    let (mut client, _) = connect(&relay, &token, "").await;
    client.send_text("{not json").await;
    assert_eq!(client.close_code(T).await, 1008);
    let (mut client, _) = connect(&relay, &token, "").await;
    client.send_text(&"x".repeat(4096)).await;
    assert_eq!(
        client.close_code(T).await,
        1009,
        "message too big (RFC 6455 §7.4.1)"
    );
    relay.shutdown().await.unwrap();
}
