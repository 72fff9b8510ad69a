//! Issue 16, the operator's console on a single node, against a real PostgreSQL with real
//! native (tokio-tungstenite) and Supabase (realtime-js) clients: presence and its frames,
//! the status API, disconnects, revocations (across a restart) and the audit log; every admin
//! endpoint refuses anonymous (401) and user (403) callers.

use std::time::Duration;

use engagement_relay::auth::{mint, Role};
use engagement_relay::Relay;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::node::NodeClient;
use crate::common::ws::{self, Next, Upgrade};
use crate::common::{create_user, insert_event, scrape, service_token, user_token, TestDb, SECRET};

const HOUR: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(10);

/// `method path` on the relay with `token` (and a JSON body); (status, JSON body).
async fn call(
    relay: &Relay,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let url = format!("http://{}{path}", relay.server_addr());
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(relay: &Relay, path: &str, token: &str) -> Value {
    let (status, body) = call(relay, Method::GET, path, Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// `GET /v1/presence/{user}` until `want` holds; the last answer.
async fn presence_until(
    relay: &Relay,
    user: Uuid,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let service = service_token();
    let path = format!("/v1/presence/{user}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let last = get(relay, &path, &service).await;
        if want(&last) {
            return last;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next frame of `client` that is a `presence` frame.
async fn presence_frame(client: &mut ws::Client) -> Value {
    loop {
        match client.next(WAIT).await {
            Next::Json(v) if v["type"] == "presence" => return v,
            Next::Json(_) => continue,
            other => panic!("expected a presence frame, got {other:?}"),
        }
    }
}

fn realtime_client(relay: &Relay, token: &str) -> NodeClient {
    let url = format!("ws://{}/realtime/v1", relay.server_addr());
    NodeClient::start(
        "realtime",
        json!({"url": url, "apikey": token, "token": token}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_native_and_realtime_sockets_and_announces_changes() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, HOUR);
    let service = service_token();

    // A user may not ask for presence frames.
    match ws::upgrade(&relay, &format!("access_token={token}&presence=true"), None).await {
        Upgrade::Refused(status, body) => {
            assert_eq!((status, &body["error"]), (403, &json!("forbidden")))
        }
        Upgrade::Open(_) => panic!("a user's presence=true was accepted"),
    }
    let (mut watcher, _) = ws::connect(&relay, &service, "&presence=true").await;
    let offline = get(&relay, &format!("/v1/presence/{user}"), &service).await;
    assert_eq!(offline["online"], false);
    assert_eq!(offline["last_seen"], Value::Null);

    let (native, _) = ws::connect(&relay, &token, "").await;
    let frame = presence_frame(&mut watcher).await;
    assert_eq!(
        frame,
        json!({"type": "presence", "user_id": user, "online": true, "sessions": 1})
    );
    let mut realtime = realtime_client(&relay, &token);
    realtime.status("SUBSCRIBED").await;
    let both = presence_until(&relay, user, "two sockets", |p| p["sessions"] == 2).await;
    assert_eq!(both["online"], true);
    assert_eq!(both["endpoints"], json!({"native": 1, "realtime": 1}));
    assert!(both["online_since"].is_string(), "{both}");
    let page = get(&relay, "/v1/presence?online=true&limit=10", &service).await;
    let listed: Vec<&Value> = page["users"].as_array().unwrap().iter().collect();
    assert!(listed.iter().any(|u| u["user_id"] == json!(user)), "{page}");

    // The second socket was no change; the last one closing is.
    realtime.quit().await;
    presence_until(&relay, user, "one socket left", |p| p["sessions"] == 1).await;
    drop(native);
    let frame = presence_frame(&mut watcher).await;
    assert_eq!(
        frame,
        json!({"type": "presence", "user_id": user, "online": false, "sessions": 0})
    );
    // `last_seen` is written to relay.presence within a second or so.
    let gone = presence_until(&relay, user, "last_seen is kept", |p| {
        p["last_seen"].is_string()
    })
    .await;
    assert_eq!(gone["online"], false);
    let stored: i64 = pg
        .query_one(
            "SELECT count(*) FROM relay.presence WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_node_and_why_a_user_got_what_they_got() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let service = service_token();
    let (mut client, ready) = ws::connect(
        &relay,
        &user_token(user, HOUR),
        "&table=engagement_events&event_type=goal_complete",
    )
    .await;
    insert_event(&pg, user, "goal_complete", json!({})).await;
    let event = client.events(1, WAIT).await.remove(0);

    let status = get(&relay, "/v1/status", &service).await;
    assert_eq!(status["node"]["role"], "single");
    assert_eq!(status["node"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["replication"]["connected"], true);
    assert_eq!(status["replication"]["ready"], true);
    assert_eq!(status["replication"]["holds_slot"], true);
    assert_eq!(status["replication"]["latest_cursor"], event["cursor"]);
    assert!(
        status["replication"]["lag_ms"].as_f64().is_some(),
        "{status}"
    );
    assert!(status["replay"]["events"].as_u64() >= Some(1), "{status}");
    assert!(status["replay"]["bytes"].as_u64() > Some(0), "{status}");
    assert_eq!(status["sessions"]["native"], 1);
    assert_eq!(status["presence"]["online_users"], 1);

    let mine = get(&relay, &format!("/v1/status/users/{user}"), &service).await;
    let sessions = mine["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{mine}");
    let session = &sessions[0];
    assert_eq!(session["session_id"], ready["session_id"]);
    assert_eq!(session["endpoint"], "native");
    assert_eq!(session["events_delivered"], 1);
    assert_eq!(session["last_cursor"], event["cursor"]);
    assert_eq!(
        session["subscriptions"],
        json!([{"tables": ["public.engagement_events"], "event_types": ["goal_complete"], "topic": null, "queue_depth": 0}])
    );
    // Malformed ids are a 400, not a 404 or a panic.
    let (status, body) = call(
        &relay,
        Method::GET,
        "/v1/status/users/nope",
        Some(&service),
        None,
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_user_id"))
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_endpoints_refuse_anonymous_and_user_callers() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, HOUR);
    let endpoints = [
        (Method::GET, "/v1/status".to_string(), None),
        (Method::GET, format!("/v1/status/users/{user}"), None),
        (Method::GET, format!("/v1/presence/{user}"), None),
        (Method::GET, "/v1/presence?online=true".to_string(), None),
        (
            Method::POST,
            format!("/v1/admin/users/{user}/disconnect"),
            None,
        ),
        (
            Method::POST,
            "/v1/admin/revocations".to_string(),
            Some(json!({"user_id": user})),
        ),
    ];
    for (method, path, body) in endpoints {
        let (status, refused) = call(&relay, method.clone(), &path, None, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} anonymous: {refused}"
        );
        assert_eq!(refused["error"], "missing_token");
        let (status, refused) = call(&relay, method.clone(), &path, Some(&token), body).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{method} {path} as a user: {refused}"
        );
        assert_eq!(refused["error"], "forbidden");
    }
    let audited: i64 = pg
        .query_one("SELECT count(*) FROM relay.audit_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 0, "a refused call is no action");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_closes_every_session_of_the_user_with_4004_and_is_audited() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let (user, other) = (create_user(&pg).await, create_user(&pg).await);
    let token = user_token(user, HOUR);
    let (mut first, _) = ws::connect(&relay, &token, "").await;
    let (mut second, _) = ws::connect(&relay, &token, "").await;
    let mut realtime = realtime_client(&relay, &token);
    realtime.status("SUBSCRIBED").await;
    let (mut bystander, _) = ws::connect(&relay, &user_token(other, HOUR), "").await;

    let operator = Uuid::new_v4();
    let admin = mint(SECRET, Some(operator), Role::ServiceRole, HOUR).unwrap();
    let path = format!("/v1/admin/users/{user}/disconnect");
    let (status, body) = call(&relay, Method::POST, &path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["closed_on_node"], 3, "{body}");
    for client in [&mut first, &mut second] {
        let error = client.next_json(WAIT).await.expect("an error frame first");
        assert_eq!(error["code"], "disconnected", "{error}");
        let (code, reason) = client.close_frame(WAIT).await;
        assert_eq!(code, 4004, "{reason}");
    }
    realtime
        .expect("the realtime socket closes", WAIT, |v| {
            v["status"] == "CLOSED" || v["status"] == "CHANNEL_ERROR" || v["status"] == "TIMED_OUT"
        })
        .await;
    realtime.quit().await;
    // Nobody else is touched.
    insert_event(&pg, other, "app_open", json!({})).await;
    assert_eq!(bystander.events(1, WAIT).await.len(), 1);

    let row = pg
        .query_one(
            "SELECT actor_sub, action, target_user, detail FROM relay.audit_log WHERE id = $1",
            &[&body["audit_id"].as_i64().unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), Some(operator.to_string()));
    assert_eq!(row.get::<_, String>(1), "disconnect");
    assert_eq!(row.get::<_, Uuid>(2), user);
    assert_eq!(row.get::<_, Value>(3)["closed_on_node"], 3);
    let exposition = scrape(&relay).await;
    assert!(exposition.contains("relay_admin_actions_total{action=\"disconnect\",outcome=\"ok\"}"));
    relay.shutdown().await.unwrap();
}

/// Waits until the clock is in a later whole second than `after` (a token's `iat` has 1 s
/// resolution), and returns the start of that second as RFC 3339.
async fn next_second(after: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    loop {
        let now = chrono::Utc::now();
        if now.timestamp() > after.timestamp() {
            return chrono::DateTime::from_timestamp(now.timestamp(), 0).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_refuses_older_tokens_everywhere_and_survives_a_restart() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let old = user_token(user, HOUR);
    let minted = chrono::Utc::now();
    let (mut live, _) = ws::connect(&relay, &old, "").await;
    let issued_before = next_second(minted).await;
    let fresh = user_token(user, HOUR);

    let body = json!({"user_id": user, "issued_before": issued_before});
    let (status, revoked) = call(
        &relay,
        Method::POST,
        "/v1/admin/revocations",
        Some(&service_token()),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{revoked}");
    assert_eq!(revoked["closed_on_node"], 1);
    // Kept until every token it covers has expired: auth.max_token_lifetime (7 days) later.
    let expires: chrono::DateTime<chrono::Utc> =
        revoked["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((expires - issued_before).num_days(), 7);
    let error = live.next_json(WAIT).await.expect("an error frame first");
    assert_eq!(error["code"], "token_revoked");
    assert_eq!(live.close_code(WAIT).await, 4001);

    let assert_refused = |relay: &Relay| {
        let relay_addr = relay.server_addr();
        let old = old.clone();
        async move {
            let url = format!("http://{relay_addr}/v1/events?limit=1");
            let response = reqwest::Client::new()
                .get(url)
                .bearer_auth(&old)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "the history API"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], "token_revoked", "{body}");
        }
    };
    match ws::upgrade(&relay, &format!("access_token={old}"), None).await {
        Upgrade::Refused(status, body) => {
            assert_eq!((status, &body["error"]), (401, &json!("token_revoked")))
        }
        Upgrade::Open(_) => panic!("a revoked token connected"),
    }
    assert_refused(&relay).await;
    // A token issued since is accepted; refreshing to a revoked one is refused.
    let (mut current, _) = ws::connect(&relay, &fresh, "").await;
    current
        .send_text(&json!({"type": "access_token", "access_token": old}).to_string())
        .await;
    let error = current.next_json(WAIT).await.expect("an error frame");
    assert_eq!(error["code"], "token_revoked");
    assert_eq!(current.close_code(WAIT).await, 4001);

    // The revocation is in the database: a restarted relay refuses the token from the start.
    relay.shutdown().await.unwrap();
    let relay = db.relay().await;
    match ws::upgrade(&relay, &format!("access_token={old}"), None).await {
        Upgrade::Refused(status, body) => {
            assert_eq!((status, &body["error"]), (401, &json!("token_revoked")))
        }
        Upgrade::Open(_) => panic!("a revoked token connected after a restart"),
    }
    assert_refused(&relay).await;
    let (_again, _) = ws::connect(&relay, &fresh, "").await;
    let audited: i64 = pg
        .query_one(
            "SELECT count(*) FROM relay.audit_log WHERE action = 'revoke' AND target_user = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
    relay.shutdown().await.unwrap();
}
