//! Database health and API metrics (issue 15 parts 4 and 5) against a real relay and
//! PostgreSQL: the health poll exports the streamed tables' size, tuples and scans every
//! `monitoring.interval`; API requests are timed by route template (never a raw path); a
//! refused cross-user insert and a refused identity-changing token refresh count as RLS
//! denials; the pool gauges exist. The recorder is process-global, so every value is asserted
//! with `>=` (other tests' relays add to it) or waited for.

use std::time::Duration;

use crate::common::ws::connect;
use crate::common::{create_user, scrape, user_token, wait_until_async, TestDb};
use serde_json::json;
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);
/// Rows this test inserts through the API.
const ROWS: usize = 3;

/// The sum of the samples of `name` whose labels include every one of `labels`; `None` when
/// no sample matches.
fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(inner) => match inner.split_once("} ") {
                Some(pair) => pair,
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(value) => ("", value),
                None => continue,
            },
        };
        let matches = labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        if let (true, Ok(value)) = (matches, value.trim().parse::<f64>()) {
            found = Some(found.unwrap_or(0.0) + value);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_poll_and_the_api_export_table_request_pool_and_rls_metrics() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| c.monitoring.interval = Duration::from_secs(1))
        .await;
    let pg = db.client().await;
    let (me, other) = (create_user(&pg).await, create_user(&pg).await);
    let token = user_token(me, HOUR);
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        crate::api::post(&relay, "/v1/events", Some(&token), body.to_string())
    };

    // An API request that lands ROWS rows, and a cross-user one RLS refuses.
    let mine: Vec<_> = (0..ROWS)
        .map(|i| json!({"user_id": me, "event_type": "db_health", "value": {"i": i}}))
        .collect();
    assert_eq!(post(json!({ "events": mine })).await.0, 201);
    let denials_before = sample(&scrape(&relay).await, "relay_rls_denials_total", &[]);
    let theirs = json!({"user_id": other, "event_type": "db_health"});
    assert_eq!(post(theirs).await.0, 403);
    // A path no route serves, with an id in it: the label is `unmatched`, never the path.
    let stray = Uuid::new_v4();
    let status = http
        .get(format!("http://{}/v1/nothing/{stray}", relay.server_addr()))
        .send()
        .await
        .expect("GET")
        .status();
    assert_eq!(status.as_u16(), 404);

    // A token refresh that would change the session's identity: refused, 4003.
    let (mut session, _) = connect(&relay, &token, "").await;
    let refresh = json!({"type": "access_token", "access_token": user_token(other, HOUR)});
    session.send_text(&refresh.to_string()).await;
    assert_eq!(session.close_code(T).await, 4003);

    let text = scrape(&relay).await;
    let api = sample(&text, "relay_rls_denials_total", &[("source", "api")]).unwrap_or(0.0);
    let refresh = sample(
        &text,
        "relay_rls_denials_total",
        &[("source", "token_refresh")],
    )
    .unwrap_or(0.0);
    assert!(api >= 1.0 && refresh >= 1.0, "rls denials: {api} {refresh}");
    assert!(
        api + refresh >= denials_before.unwrap_or(0.0) + 2.0,
        "both refusals counted"
    );

    // The request histogram: by route template and status class.
    let count = "relay_http_request_duration_seconds_count";
    let created = [("route", "/v1/events"), ("status_class", "2xx")];
    let refused = [("route", "/v1/events"), ("status_class", "4xx")];
    assert!(
        sample(&text, count, &created).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, count, &refused).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    let unmatched = [("route", "unmatched"), ("status_class", "4xx")];
    assert!(sample(&text, count, &unmatched).unwrap_or(0.0) >= 1.0);
    assert!(
        !text.contains(&stray.to_string()) && !text.contains(&me.to_string()),
        "no raw path or user id in a label"
    );
    let bucket = "relay_http_request_duration_seconds_bucket";
    let all = [("route", "/v1/events"), ("le", "+Inf")];
    assert!(sample(&text, bucket, &all).unwrap_or(0.0) >= 2.0);

    // The pool: at least the connection the inserts used, now idle; nobody waiting.
    let idle = sample(&text, "relay_db_pool_connections", &[("state", "idle")]);
    assert!(idle.is_some_and(|n| n >= 0.0), "{text}");
    assert!(sample(&text, "relay_db_pool_connections", &[("state", "in_use")]).is_some());
    assert!(sample(&text, "relay_db_pool_waiting", &[]).is_some_and(|n| n >= 0.0));

    // The health poll (every second): sizes above 0, at least this test's rows live (other
    // tests' relays set the same series from their own databases: wait for ours), scans.
    let table = ("table", "engagement_events");
    wait_until_async(
        "the health poll exported this database's rows",
        T,
        || async {
            let text = scrape(&relay).await;
            let size = sample(&text, "relay_table_size_bytes", &[table]);
            let index = sample(&text, "relay_table_index_size_bytes", &[table]);
            let live = sample(&text, "relay_table_tuples", &[table, ("state", "live")]);
            let dead = sample(&text, "relay_table_tuples", &[table, ("state", "dead")]);
            let seq = sample(&text, "relay_table_scans_total", &[table, ("kind", "seq")]);
            let index_scans = sample(
                &text,
                "relay_table_scans_total",
                &[table, ("kind", "index")],
            );
            size.is_some_and(|s| s > 0.0)
                && index.is_some_and(|s| s > 0.0)
                && live.is_some_and(|n| n >= ROWS as f64)
                && dead.is_some_and(|n| n >= 0.0)
                && seq.is_some()
                && index_scans.is_some()
        },
    )
    .await;
    // Every streamed table is polled, not only engagement_events.
    let text = scrape(&relay).await;
    for table in ["engagement_state_transitions", "user_engagement_states"] {
        let size = sample(&text, "relay_table_size_bytes", &[("table", table)]);
        assert!(size.is_some_and(|s| s >= 0.0), "{table}: {text}");
    }
    relay.shutdown().await.expect("relay shutdown");
}

#[test]
fn a_bad_monitoring_interval_in_the_environment_is_one_line_naming_the_key() {
    let out = crate::cli::relay_bin()
        .env("RELAY_MONITORING__INTERVAL", "often")
        .args(["--jwt-secret", "x", "run"])
        .output()
        .expect("run the relay");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("monitoring.interval"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
