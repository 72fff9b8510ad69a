//! Asymmetric tokens (issue 13, part 3): the relay verifies ES256, RS256 and EdDSA tokens with
//! the key of their `kid` from a JWKS served by a real HTTP server started here (axum on a free
//! port), on the native upgrade, the HTTP API and the Realtime `phx_join`; it follows key
//! rotation without a restart and keeps its keys while the endpoint is down.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engagement_relay::auth::sign::SigningKey;
use engagement_relay::auth::Role;
use engagement_relay::config::Secret;
use engagement_relay::Relay;
use futures_util::SinkExt;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::common::jwks_server::{jwks_server, Endpoint};
use crate::common::keys::{generate, generate_pem};
use crate::common::node::NodeClient;
use crate::common::phoenix;
use crate::common::ws::{upgrade, Upgrade};
use crate::common::{create_user, insert_event, TestDb};

const HOUR: Duration = Duration::from_secs(3600);

/// A relay on `db` that knows no HS256 secret, only the JWKS at `url`.
async fn jwks_relay(db: &TestDb, url: &str) -> Relay {
    let url = url.to_string();
    db.relay_with(move |c| {
        c.auth.jwt_secret = Secret::default();
        c.auth.jwks_url = url;
    })
    .await
}

fn token(key: &SigningKey, user: Uuid) -> String {
    key.mint(Some(user), Role::Authenticated, HOUR).unwrap()
}

/// The upgrade's outcome: `Ok(())` when it opened, else the status and error code.
async fn try_upgrade(relay: &Relay, token: &str) -> Result<(), (u16, String)> {
    match upgrade(relay, "", Some(token)).await {
        Upgrade::Open(_) => Ok(()),
        Upgrade::Refused(status, body) => {
            Err((status, body["error"].as_str().unwrap_or("").into()))
        }
    }
}

/// Retries the upgrade until it opens (the key set loads or refreshes in the background).
async fn until_accepted(relay: &Relay, token: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match try_upgrade(relay, token).await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("still refused after {within:?}: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn post_event(relay: &Relay, token: &str, user: Uuid) -> (u16, Value) {
    let body = json!({"events": [{"user_id": user, "event_type": "app_open"}]});
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/events", relay.server_addr()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_rs256_and_eddsa_tokens_are_accepted_by_kid_everywhere() {
    let db = TestDb::new().await;
    let user = create_user(&db.client().await).await;
    let keys = [
        generate(Algorithm::ES256, "ec-1"),
        generate(Algorithm::RS256, "rsa-1"),
        generate(Algorithm::EdDSA, "ed-1"),
    ];
    let endpoint = Endpoint::default();
    endpoint.publish(&keys.iter().collect::<Vec<_>>());
    let url = jwks_server(endpoint.clone()).await;
    let relay = jwks_relay(&db, &url).await;
    until_accepted(&relay, &token(&keys[0], user), Duration::from_secs(10)).await;
    for key in &keys {
        let t = token(key, user);
        assert_eq!(try_upgrade(&relay, &t).await, Ok(()), "{:?}", key.alg);
        let (status, reply) = post_event(&relay, &t, user).await;
        assert_eq!(status, 201, "{:?}: {reply}", key.alg);
    }
    // A Realtime phx_join with an ES256 access_token.
    let es = token(&keys[0], user);
    let mut ws = phoenix::open(&relay, "sb_publishable_anything", "2.0.0").await;
    let bindings = json!([{"event": "*", "schema": "public", "table": "engagement_events"}]);
    ws.send(Message::text(phoenix::join(
        "realtime:a",
        "1",
        &es,
        bindings,
    )))
    .await
    .unwrap();
    let reply = phoenix::next(&mut ws).await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");

    // Refusals: an unknown kid, HS256 "signed" with a published public key, alg none.
    let stranger = generate(Algorithm::ES256, "stranger");
    assert_eq!(
        try_upgrade(&relay, &token(&stranger, user)).await,
        Err((401, "unknown_kid".into()))
    );
    let public = serde_json::to_string(&keys[0].public_jwk().unwrap()).unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some("ec-1".into());
    let claims = json!({"sub": user, "role": "authenticated", "aud": "authenticated",
        "exp": engagement_relay::auth::now_s() + 600});
    let confused = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        try_upgrade(&relay, &confused).await,
        Err((401, "unsupported_algorithm".into()))
    );
    let (status, reply) = post_event(&relay, &confused, user).await;
    assert_eq!(
        (status, &reply["error"]),
        (401, &json!("unsupported_algorithm"))
    );
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","kid":"ec-1"}"#),
        b64.encode(claims.to_string())
    );
    assert_eq!(
        try_upgrade(&relay, &none).await,
        Err((401, "unsupported_algorithm".into()))
    );
    let metrics = crate::common::scrape(&relay).await;
    assert!(metrics.contains("relay_auth_failures_total{reason=\"unknown_kid\"}"));
    crate::common::assert_at_least(&metrics, "relay_jwks_fetches_total{result=\"ok\"}", 1.0);
    assert!(metrics.contains("relay_jwks_last_success_timestamp_seconds "));
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_joins_with_an_es256_access_token() {
    let db = TestDb::new().await;
    let key = generate(Algorithm::ES256, "supabase-es256");
    let endpoint = Endpoint::default();
    endpoint.publish(&[&key]);
    let relay = jwks_relay(&db, &jwks_server(endpoint).await).await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let access_token = token(&key, user);
    until_accepted(&relay, &access_token, Duration::from_secs(10)).await;
    let url = format!("ws://{}/realtime/v1", relay.server_addr());
    let mut client = NodeClient::start(
        "realtime",
        json!({"url": url, "apikey": "sb_publishable_anything", "token": access_token}),
    );
    client.status("SUBSCRIBED").await;
    insert_event(&pg, user, "app_open", json!({})).await;
    let change = client.changes(1).await.remove(0);
    assert_eq!(change["eventType"], "INSERT");
    assert_eq!(change["new"]["user_id"], user.to_string());
    client.quit().await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fetches_the_jwks_and_names_its_kids_or_why_it_failed() {
    use engagement_relay::doctor::{self, Options, Status};
    let db = TestDb::new().await;
    let endpoint = Endpoint::default();
    endpoint.publish(&[&generate(Algorithm::EdDSA, "doctor-1")]);
    let url = jwks_server(endpoint.clone()).await;
    let mut config = db.config();
    config.auth.jwks_url = url.clone();
    let report = doctor::run(&config, &Options::default()).await;
    let jwks = report.get("jwks").unwrap();
    assert_eq!(jwks.status, Status::Pass, "{}", report.to_text());
    assert!(jwks.detail.contains("doctor-1"), "{}", jwks.detail);

    endpoint.down.store(true, Ordering::SeqCst);
    let report = doctor::run(&config, &Options::default()).await;
    let jwks = report.get("jwks").unwrap();
    assert_eq!(jwks.status, Status::Fail, "{}", report.to_text());
    assert!(jwks.detail.contains(&url), "{}", jwks.detail);
}

/// Runs `engagement-relay token` with `args`; returns its standard output.
fn relay_token(args: &[&str]) -> String {
    let out = crate::cli::relay_bin()
        .env_remove("RELAY_JWKS_URL")
        .arg("token")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "token {args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_minted_by_the_cli_verify_against_a_jwks_file_reread_without_restart() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("relay-jwks-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pem, jwks) = (dir.join("signing.pem"), dir.join("jwks.json"));
    std::fs::write(&pem, generate_pem(Algorithm::ES256)).unwrap();
    let pem_arg = pem.to_str().unwrap();
    std::fs::write(
        &jwks,
        relay_token(&["--key", pem_arg, "--kid", "cli-1", "--jwks"]),
    )
    .unwrap();
    let user = Uuid::new_v4();
    let minted = relay_token(&[
        "--key",
        pem_arg,
        "--kid",
        "cli-1",
        "--sub",
        &user.to_string(),
    ]);

    let file = jwks.clone();
    let relay = db
        .relay_with(move |c| {
            c.auth.jwt_secret = Secret::default();
            c.auth.jwks_file = Some(file);
        })
        .await;
    // The file is read before the relay starts serving: accepted at once.
    assert_eq!(try_upgrade(&relay, minted.trim()).await, Ok(()));
    // A key added to the file: its first token re-reads the file, no restart.
    let added = generate(Algorithm::EdDSA, "added");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&jwks).unwrap()).unwrap();
    let more = crate::common::keys::jwks_json(&[&added])["keys"][0].clone();
    doc["keys"].as_array_mut().unwrap().push(more);
    std::fs::write(&jwks, doc.to_string()).unwrap();
    until_accepted(&relay, &token(&added, user), Duration::from_secs(10)).await;
    let stranger = generate(Algorithm::ES256, "not-in-the-file");
    assert_eq!(
        try_upgrade(&relay, &token(&stranger, user)).await,
        Err((401, "unknown_kid".into()))
    );
    let metrics = crate::common::scrape(&relay).await;
    assert!(metrics.contains("relay_jwks_keys "));
    relay.shutdown().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_followed_without_restart_and_keys_survive_an_outage() {
    let db = TestDb::new().await;
    let user = Uuid::new_v4();
    let old = generate(Algorithm::ES256, "old");
    let new = generate(Algorithm::EdDSA, "new");
    let endpoint = Endpoint::default();
    endpoint.publish(&[&old]);
    let url = jwks_server(endpoint.clone()).await;
    let relay = jwks_relay(&db, &url).await;
    until_accepted(&relay, &token(&old, user), Duration::from_secs(10)).await;

    // A new kid is published: its first token re-fetches the set, and is accepted soon after.
    endpoint.publish(&[&old, &new]);
    until_accepted(&relay, &token(&new, user), Duration::from_secs(5)).await;

    // The old kid is withdrawn: refused once the set is refreshed (every 30 s at most).
    endpoint.publish(&[&new]);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match try_upgrade(&relay, &token(&old, user)).await {
            Err((401, code)) if code == "unknown_kid" => break,
            other if Instant::now() > deadline => panic!("old kid still {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    // ... and on a token refresh: a Realtime channel joined with the new kid ends when its
    // access_token is refreshed with a token of the withdrawn one.
    let mut ws = phoenix::open(&relay, "sb_publishable_anything", "2.0.0").await;
    let bindings = json!([{"event": "INSERT", "schema": "public", "table": "engagement_events"}]);
    let join = phoenix::join("realtime:r", "1", &token(&new, user), bindings);
    ws.send(Message::text(join)).await.unwrap();
    assert_eq!(phoenix::next(&mut ws).await[4]["status"], "ok");
    let subscribed = phoenix::next(&mut ws).await;
    assert_eq!(subscribed[3], "system", "{subscribed}");
    let refresh =
        json!(["1", "2", "realtime:r", "access_token", {"access_token": token(&old, user)}]);
    ws.send(Message::text(refresh.to_string())).await.unwrap();
    let system = phoenix::next(&mut ws).await;
    assert_eq!(system[3], "system", "{system}");
    assert_eq!(system[4]["status"], "error", "{system}");
    assert!(
        system[4]["message"]
            .as_str()
            .unwrap_or("")
            .contains("unknown key id"),
        "{system}"
    );

    // The endpoint goes down: the next scheduled refresh fails (the unknown-kid re-fetch just
    // above is throttled for 30 s), and the cached keys keep working.
    endpoint.down.store(true, Ordering::SeqCst);
    let hits = endpoint.hits.load(Ordering::SeqCst);
    crate::common::wait_until("a failed refresh", Duration::from_secs(40), || {
        endpoint.hits.load(Ordering::SeqCst) > hits
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(try_upgrade(&relay, &token(&new, user)).await, Ok(()));
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refused_jwks_unavailable_until_a_set_loads() {
    let db = TestDb::new().await;
    let endpoint = Endpoint::default();
    endpoint.down.store(true, Ordering::SeqCst);
    let url = jwks_server(endpoint.clone()).await;
    let relay = jwks_relay(&db, &url).await;
    let key = generate(Algorithm::EdDSA, "k");
    let t = token(&key, Uuid::new_v4());
    assert_eq!(
        try_upgrade(&relay, &t).await,
        Err((401, "jwks_unavailable".into()))
    );
    endpoint.publish(&[&key]);
    endpoint.down.store(false, Ordering::SeqCst);
    // Retried after 1 s, 2 s, 4 s… while failing.
    until_accepted(&relay, &t, Duration::from_secs(15)).await;
    relay.shutdown().await.unwrap();
}
