//! The ingest API against a real PostgreSQL: batch import with the service role (all or
//! nothing, errors naming the event), a user's own inserts under RLS, time zones normalised to
//! UTC, and the error statuses.

use std::time::Duration;

use crate::common::ws::connect;
use crate::common::{create_user, service_token, user_token, TestDb};
use serde_json::{json, Value};
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);

/// POSTs `body` to `path` with `token`; returns the status and the JSON body.
pub(crate) async fn post(
    relay: &engagement_relay::Relay,
    path: &str,
    token: Option<&str>,
    body: String,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}{path}", relay.server_addr()))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn count(pg: &tokio_postgres::Client) -> i64 {
    pg.query_one("SELECT count(*) FROM public.engagement_events", &[])
        .await
        .unwrap()
        .get(0)
}

fn batch(users: &[Uuid], n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"user_id": users[i % users.len()], "event_type": "steps_import", "value": {"i": i}}))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_5000_lands_in_order_and_streams_to_the_right_sockets() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let users = [create_user(&pg).await, create_user(&pg).await];
    let (mut a, _) = connect(&relay, &user_token(users[0], HOUR), "").await;
    let (mut b, _) = connect(&relay, &user_token(users[1], HOUR), "").await;
    let events = batch(&users, 5000);
    let body = json!({ "events": events }).to_string();
    let (status, reply) = post(&relay, "/v1/events/batch", Some(&service_token()), body).await;
    assert_eq!(status, 201, "{reply}");
    let ids = reply["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 5000);
    let first: Value = pg
        .query_one(
            "SELECT to_jsonb(e) FROM public.engagement_events e WHERE id = $1",
            &[&Uuid::parse_str(ids[1].as_str().unwrap()).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        first["value"],
        json!({"i": 1}),
        "ids come back in input order"
    );
    for (client, user) in [(&mut a, users[0]), (&mut b, users[1])] {
        let got = client.events(2500, T).await;
        assert!(got.iter().all(|e| e["record"]["user_id"] == json!(user)));
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_event_among_5000_is_named_and_nothing_is_written() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let users = [create_user(&pg).await];
    let mut events = batch(&users, 5000);
    events[737]["event_type"] = json!("Not Snake");
    let body = json!({ "events": events }).to_string();
    let (status, reply) = post(&relay, "/v1/events/batch", Some(&service_token()), body).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"], "validation_failed");
    assert_eq!(reply["errors"][0]["index"], 737);
    assert_eq!(reply["errors"][0]["field"], "event_type");
    assert_eq!(count(&pg).await, 0);

    // An unknown user is a 422 naming its index too, not a 500.
    let mut events = batch(&users, 10);
    events[4]["user_id"] = json!(Uuid::new_v4());
    let body = json!({ "events": events }).to_string();
    let (status, reply) = post(&relay, "/v1/events/batch", Some(&service_token()), body).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(
        (
            reply["errors"][0]["index"].as_u64(),
            reply["errors"][0]["field"].as_str()
        ),
        (Some(4), Some("user_id"))
    );
    assert_eq!(count(&pg).await, 0);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_stored_as_the_same_utc_instant() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let events: Vec<Value> = [
        "2026-01-15T17:30:00+05:30",
        "2026-01-15T04:00:00-08:00",
        "2026-01-15T12:00:00Z",
    ]
    .iter()
    .map(|t| json!({"user_id": user, "event_type": "app_open", "timestamp": t}))
    .collect();
    let body = json!({ "events": events }).to_string();
    let (status, reply) = post(&relay, "/v1/events", Some(&user_token(user, HOUR)), body).await;
    assert_eq!(status, 201, "{reply}");
    let stored: Vec<String> = pg
        .query("SELECT to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') FROM public.engagement_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, ["2026-01-15T12:00:00"; 3]);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_inserts_only_their_own_events() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let (me, other) = (create_user(&pg).await, create_user(&pg).await);
    let token = user_token(me, HOUR);
    let mine = json!({"user_id": me, "event_type": "goal_complete", "value": {"goal": "walk"}});
    let (status, reply) = post(&relay, "/v1/events", Some(&token), mine.to_string()).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["ids"].as_array().unwrap().len(), 1);
    let theirs = json!({"user_id": other, "event_type": "goal_complete"});
    let (status, reply) = post(&relay, "/v1/events", Some(&token), theirs.to_string()).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (403, Some("forbidden")),
        "{reply}"
    );
    // Nor through the batch endpoint.
    let body = json!({"events": [theirs]}).to_string();
    assert_eq!(
        post(&relay, "/v1/events/batch", Some(&token), body).await.0,
        403
    );
    assert_eq!(count(&pg).await, 1);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_with_the_right_status() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| {
            c.ingest.max_batch = std::num::NonZero::new(3).unwrap();
            c.ingest.max_body_bytes = 4096;
        })
        .await;
    let service = service_token();
    let cases = [
        (None, "{\"events\":[]}".to_string(), 401, "missing_token"),
        (
            Some("garbage"),
            "{\"events\":[]}".to_string(),
            401,
            "malformed_token",
        ),
        (
            Some(service.as_str()),
            "{\"events\":".to_string(),
            400,
            "malformed_json",
        ),
        (
            Some(service.as_str()),
            "[1]".to_string(),
            400,
            "malformed_body",
        ),
        (
            Some(service.as_str()),
            json!({"events": [{}, {}, {}, {}]}).to_string(),
            413,
            "too_many_events",
        ),
        (
            Some(service.as_str()),
            format!("{{\"events\":[],\"pad\":\"{}\"}}", "x".repeat(5000)),
            413,
            "payload_too_large",
        ),
    ];
    for (token, body, status, code) in cases {
        let (got, reply) = post(&relay, "/v1/events/batch", token, body).await;
        assert_eq!(
            (got, reply["error"].as_str()),
            (status, Some(code)),
            "{reply}"
        );
        assert!(reply["message"].is_string());
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_rate_limit_requests_get_429_with_retry_after() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| {
            c.ingest.user_rate = std::num::NonZero::new(1).unwrap();
            c.ingest.user_burst = std::num::NonZero::new(2).unwrap();
        })
        .await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, HOUR);
    let event = json!({"user_id": user, "event_type": "app_open"}).to_string();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            post(&relay, "/v1/events", Some(&token), event.clone())
                .await
                .0,
        );
    }
    assert_eq!(statuses, [201, 201, 429]);
    let url = format!("http://{}/v1/events", relay.server_addr());
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        429,
        "history shares the user's bucket"
    );
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let other = user_token(create_user(&pg).await, HOUR);
    let (status, _) = post(&relay, "/v1/events", Some(&other), "{}".into()).await;
    assert_eq!(status, 422, "another user has a bucket of their own");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_returns_the_first_result_and_inserts_nothing() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let send = |body: String, key: &'static str| {
        let url = format!("http://{}/v1/events/batch", relay.server_addr());
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .bearer_auth(service_token())
                .header("idempotency-key", key)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let body = json!({ "events": batch(&[user], 3) }).to_string();
    let (status, first) = send(body.clone(), "import-2026-11-20").await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = send(body.clone(), "import-2026-11-20").await;
    assert_eq!((status, &again), (201, &first), "the first result");
    assert_eq!(count(&pg).await, 3, "nothing inserted twice");
    // A refused request leaves its key unused: the corrected retry goes through.
    let mut bad = batch(&[user], 2);
    bad[1]["value"] = json!("not an object");
    let bad = json!({ "events": bad }).to_string();
    assert_eq!(send(bad, "import-2026-11-21").await.0, 422);
    let (status, fixed) = send(body, "import-2026-11-21").await;
    assert_eq!(status, 201);
    assert_ne!(fixed, first);
    assert_eq!(count(&pg).await, 6);
    relay.shutdown().await.unwrap();
}
