//! The monitoring kit in `deploy/` against real components: `promtool` checks and unit-tests the
//! rules and checks the example config; a real Prometheus scrapes a real relay carrying real
//! traffic (over https, the relay verifying JWKS tokens too, so its TLS and JWKS metrics exist)
//! and a cluster-mode relay on a real nats-server (`relay_cluster_*` exist only on cluster
//! nodes), evaluates every rule without error, and answers every query of the Grafana dashboard
//! — and every metric and label those queries and rules name exists in the relays' scrapes, so
//! the dashboard, the alerts and `src/metrics.rs` cannot drift apart.
//!
//! The metrics recorder is process-wide, so here both targets expose both modes' metrics; which
//! series each mode exports on its own is what alerts_test.yml's cluster cases assume
//! ([`engagement_relay::metrics::export_mode`]).
//!
//! Needs `prometheus` and `promtool` on PATH (Debian: `sudo apt-get install -y prometheus`).

use std::collections::BTreeSet;
use std::fs;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::certs::Certs;
use crate::common::jwks_server::{jwks_server, Endpoint};
use crate::common::keys::generate;
use crate::common::prometheus::{promtool_ok, repo, tool, Api, Prometheus, WAIT};
use crate::common::promql::selectors;
use crate::common::ws::{self, Next};
use crate::common::{create_user, insert_event, user_token, wait_until, wait_until_async, TestDb};
use engagement_relay::config::Secret;
use relay_testkit::nats::{NatsOptions, NatsServer};
use serde_json::{json, Value};

/// What the dashboard's `$__rate_interval` stands for here (Prometheus scrapes every second).
const RATE_INTERVAL: &str = "30s";
/// The quantile the test waits for: the delivery histogram has samples in Prometheus.
const P95: &str =
    "histogram_quantile(0.95, sum by (le) (rate(relay_delivery_latency_seconds_bucket[30s])))";

#[test]
fn alert_rules_pass_promtool_their_unit_tests_pass_and_the_example_config_is_valid() {
    let promtool = tool("promtool");
    let dir = repo().join("deploy/prometheus");
    promtool_ok(&promtool, &dir, &["check", "rules", "alerts.yml"]);
    promtool_ok(&promtool, &dir, &["test", "rules", "alerts_test.yml"]);
    // The example loads alerts.yml by a path relative to itself: checked in place, rules included.
    promtool_ok(&promtool, &dir, &["check", "config", "prometheus.yml"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_relay_evaluates_every_rule_and_every_dashboard_query() {
    let prometheus_bin = tool("prometheus");
    let dashboard: Value = serde_json::from_str(
        &fs::read_to_string(repo().join("deploy/grafana/engagement-relay.json"))
            .expect("read deploy/grafana/engagement-relay.json"),
    )
    .expect("the dashboard is JSON");

    // A bounded max_slot_wal_keep_size, so that PostgreSQL reports the slot's safe_wal_size and
    // the relay exports relay_slot_safe_wal_size_bytes: on a cluster of this test's own.
    let cluster = crate::common::private_cluster().await;
    let admin = crate::common::connect(&cluster.url("postgres")).await;
    admin
        .batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'")
        .await
        .expect("set max_slot_wal_keep_size");
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    wait_until_async("max_slot_wal_keep_size is 1GB", WAIT, || async {
        let row = admin
            .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
            .await
            .expect("current_setting");
        row.get::<_, String>(0) == "1GB"
    })
    .await;

    // The metrics port serves https (relay_tls_*), and tokens may also come from a JWKS
    // (relay_jwks_*): every metric the rules name is exported.
    let certs = Certs::new("prometheus");
    certs.issue(2, "metrics");
    let jwks = Endpoint::default();
    jwks.publish(&[&generate(jsonwebtoken::Algorithm::EdDSA, "prometheus")]);
    let jwks_url = jwks_server(jwks).await;
    let db = TestDb::on(&cluster).await;
    let relay = db
        .relay_with(|config| {
            config.metrics.tls_cert = Some(certs.cert("metrics"));
            config.metrics.tls_key = Some(certs.key("metrics"));
            config.auth.jwks_url = jwks_url;
            // The database health poll every second (relay_table_*), and an API request rate a
            // loop exceeds (relay_http_rate_limited_total).
            config.monitoring.interval = Duration::from_secs(1);
            config.ingest.user_rate = NonZeroU32::MIN;
            config.ingest.user_burst = NonZeroU32::new(2).expect("2");
        })
        .await;
    let metrics_url = format!("https://localhost:{}/metrics", relay.metrics_addr().port());
    let scrape = || get_text(&certs, &metrics_url);
    let sql = db.client().await;

    // One lost replication connection: the relay reconnects (relay_replication_reconnects_total).
    sql.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
        &[&db.name],
    )
    .await
    .expect("terminate the walsender");
    wait_until_async("the relay counted a reconnect", WAIT, || async {
        scrape()
            .await
            .contains("relay_replication_reconnects_total")
    })
    .await;
    wait_until("the relay is ready again", WAIT, || relay.is_ready()).await;

    // A user with a live session; its first event's cursor serves a resume below.
    let user = create_user(&sql).await;
    let token = user_token(user, Duration::from_secs(3600));
    let (mut live, _) = ws::connect(&relay, &token, "").await;
    insert_event(&sql, user, "prometheus_test", json!({"n": 0})).await;
    let first = live.events(1, Duration::from_secs(10)).await;
    let cursor = first[0]["cursor"]
        .as_str()
        .expect("event cursor")
        .to_string();

    // A resume with `since` (relay_resumes_total).
    let (mut resumed, _) = ws::connect(&relay, &token, &format!("&since={cursor}")).await;
    loop {
        match resumed.next(Duration::from_secs(10)).await {
            Next::Json(frame) if frame["type"] == "recovered" => break,
            Next::Json(_) => continue,
            other => panic!("expected a recovered frame, got {other:?}"),
        }
    }
    drop(resumed);

    // A refresh with a bad token: an auth failure and a server close, 4001
    // (relay_auth_failures_total, relay_sessions_closed_total).
    let (mut refused, _) = ws::connect(&relay, &token, "").await;
    refused
        .send_text(r#"{"type":"access_token","access_token":"not-a-jwt"}"#)
        .await;
    assert_eq!(refused.close_code(Duration::from_secs(10)).await, 4001);
    drop(refused);

    // API requests: one created, one refused by RLS, then 429s (relay_http_*,
    // relay_rls_denials_total, relay_db_pool_*).
    api_requests(&relay, &sql).await;

    // A cluster node, on a database of its own (its own slot) and a private nats-server, that
    // holds the slot and has published one event (relay_cluster_publish_seconds).
    let nats = tokio::task::spawn_blocking(|| NatsServer::start(NatsOptions::default()))
        .await
        .expect("spawn_blocking")
        .expect("nats-server starts (apt-get install -y nats-server)");
    let node_db = TestDb::on(&cluster).await;
    let nats_url = nats.url();
    let node = node_db
        .relay_with(|config| {
            config.cluster.nats_url = Secret::new(nats_url);
            config.metrics.tls_cert = Some(certs.cert("metrics"));
            config.metrics.tls_key = Some(certs.key("metrics"));
        })
        .await;
    wait_until("the cluster node holds the slot", WAIT, || {
        node.holds_slot()
    })
    .await;
    let node_sql = node_db.client().await;
    let someone = create_user(&node_sql).await;
    insert_event(&node_sql, someone, "prometheus_test", json!({})).await;
    let node_url = format!("https://localhost:{}/metrics", node.metrics_addr().port());
    let scrape_node = || get_text(&certs, &node_url);
    wait_until_async("the cluster node has a PubAck", WAIT, || async {
        scrape_node().await.lines().any(|l| {
            l.strip_prefix("relay_cluster_publish_seconds_count ")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .is_some_and(|n| n >= 1.0)
        })
    })
    .await;

    // Events keep flowing to the live session (real delivery latency samples) until the end.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(traffic(db.client().await, live, user, stop.clone()));

    let prometheus = Prometheus::start(
        &prometheus_bin,
        &[relay.metrics_addr(), node.metrics_addr()],
        Some(&certs.ca_pem()),
    )
    .await;
    let api = Api::new(&prometheus);

    // Both targets are up.
    wait_for("Prometheus scrapes both relays (targets up)", || async {
        let targets = api.get("/api/v1/targets", &[]).await;
        let active = targets["activeTargets"].as_array().expect("activeTargets");
        active.len() == 2
            && active
                .iter()
                .all(|t| t["labels"]["job"] == "engagement-relay" && t["health"] == "up")
    })
    .await;

    // The delivery histogram has samples: its p95 is a finite number.
    wait_for("the delivery latency p95 is a finite number", || async {
        let result = api.query(P95).await;
        result
            .as_array()
            .and_then(|r| r.first())
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
    .await;

    // Every rule evaluated, none with an error.
    let deadline = tokio::time::Instant::now() + WAIT;
    let rules = loop {
        let rules = api.rules().await;
        for rule in &rules {
            assert_ne!(
                rule["health"], "err",
                "rule {} failed to evaluate: {}",
                rule["name"], rule["lastError"]
            );
        }
        if !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok") {
            break rules;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every rule was evaluated within {WAIT:?}: {rules:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let recorded: BTreeSet<String> = rules
        .iter()
        .filter(|r| r["type"] == "recording")
        .map(|r| r["name"].as_str().expect("rule name").to_string())
        .collect();
    assert!(
        !recorded.is_empty(),
        "alerts.yml defines the latency recordings"
    );
    // A group evaluated before the second scrape recorded nothing yet: wait for a series each.
    for name in &recorded {
        wait_for(
            &format!("the recording rule {name} has a series"),
            || async {
                api.query(name)
                    .await
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
            },
        )
        .await;
    }

    // Every alert's runbook_url leads to its own heading of docs/OPERATIONS.md.
    let runbook = fs::read_to_string(repo().join("docs/OPERATIONS.md")).expect("OPERATIONS.md");
    let anchors = heading_anchors(&runbook);
    for rule in rules.iter().filter(|r| r["type"] == "alerting") {
        let name = rule["name"].as_str().expect("alert name");
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("alert {name} has no runbook_url"));
        let (page, anchor) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("alert {name}: runbook_url {url} has no #anchor"));
        assert!(page.ends_with("docs/OPERATIONS.md"), "alert {name}: {url}");
        assert_eq!(anchor, name.to_lowercase(), "alert {name}: {url}");
        assert!(
            anchors.contains(anchor),
            "alert {name}: docs/OPERATIONS.md has no heading for #{anchor}"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "alert {name} has no {key}"
            );
        }
        assert!(
            rule["labels"]["severity"].is_string(),
            "alert {name} has no severity"
        );
    }

    // Every query of the dashboard answers, with data.
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 15, "dashboard queries: {queries:#?}");
    for (panel, expr) in &queries {
        let promql = substitute(expr);
        let result = api.query(&promql).await;
        assert!(
            result.as_array().is_some_and(|r| !r.is_empty()),
            "dashboard panel {panel:?}: `{promql}` returned no series"
        );
    }

    // Every metric and label those queries and the rules name exists in the relay's scrape.
    let names: BTreeSet<String> = api
        .get("/api/v1/label/__name__/values", &[])
        .await
        .as_array()
        .expect("names")
        .iter()
        .map(|n| n.as_str().expect("name").to_string())
        .collect();
    let mut exposed = exposed_names(&scrape().await);
    exposed.extend(exposed_names(&scrape_node().await));
    let mut expressions: Vec<(String, String)> = queries
        .iter()
        .map(|(panel, e)| (format!("dashboard panel {panel:?}"), substitute(e)))
        .collect();
    expressions.extend(rules.iter().map(|r| {
        (
            format!("rule {}", r["name"]),
            r["query"].as_str().expect("rule query").to_string(),
        )
    }));
    for (source, expr) in &expressions {
        let selectors = selectors(expr);
        assert!(!selectors.is_empty(), "{source}: no metric in `{expr}`");
        for (metric, labels) in selectors {
            assert!(
                names.contains(&metric),
                "{source}: `{metric}` is not in Prometheus ({expr})"
            );
            let recorded_or_up = recorded.contains(&metric) || metric == "up";
            assert!(
                recorded_or_up || exposed.contains(&metric),
                "{source}: `{metric}` is not exported by the relay's /metrics ({expr})"
            );
            for label in labels {
                let series = api
                    .get(
                        "/api/v1/series",
                        &[("match[]", &format!("{metric}{{{label}!=\"\"}}"))],
                    )
                    .await;
                assert!(
                    series.as_array().is_some_and(|s| !s.is_empty()),
                    "{source}: no `{metric}` series has a `{label}` label ({expr})"
                );
            }
        }
    }

    stop.store(true, Ordering::Release);
    let delivered = traffic.await.expect("traffic task");
    assert!(delivered > 0, "the live session received events");
    drop(prometheus);
    relay.shutdown().await.expect("relay shutdown");
    node.shutdown().await.expect("cluster node shutdown");
}

/// Through the API as one user: an insert of their own (201), one of another user's rows that
/// RLS refuses (403), then malformed requests until one is over the user's rate limit (429).
/// `GET url` with a client that trusts `certs`: the body.
async fn get_text(certs: &Certs, url: &str) -> String {
    certs
        .http()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn api_requests(relay: &engagement_relay::Relay, sql: &tokio_postgres::Client) {
    let (me, other) = (create_user(sql).await, create_user(sql).await);
    let token = user_token(me, Duration::from_secs(3600));
    let post = |body: String| crate::api::post(relay, "/v1/events", Some(&token), body);
    let mine = json!({"user_id": me, "event_type": "prometheus_test"}).to_string();
    assert_eq!(post(mine).await.0, 201);
    let theirs = json!({"user_id": other, "event_type": "prometheus_test"}).to_string();
    assert_eq!(post(theirs).await.0, 403);
    for _ in 0..100 {
        if post("{".into()).await.0 == 429 {
            return;
        }
    }
    panic!("no 429 within 100 requests at ingest.user_rate = 1");
}

/// Inserts an event every 100 ms and reads it on the live session, until `stop`; returns how
/// many the session received.
async fn traffic(
    sql: tokio_postgres::Client,
    mut live: ws::Client,
    user: uuid::Uuid,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut delivered = 0;
    let mut n = 1;
    while !stop.load(Ordering::Acquire) {
        insert_event(&sql, user, "prometheus_test", json!({ "n": n })).await;
        n += 1;
        delivered += live.events(1, Duration::from_secs(10)).await.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    delivered
}

/// Polls `cond` every 500 ms; fails with `what` after [`WAIT`].
async fn wait_for<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut cond = cond;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every PromQL expression of the dashboard, with its panel's title: each target's `expr`
/// (rows' nested panels included) and each query variable's `label_values(<selector>, label)`
/// selector.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| {
                    panic!("panel {title:?} has a target without expr: {target}")
                });
                out.push((title.clone(), expr.to_string()));
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .expect("query variable's query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _label)| selector.trim())
            .unwrap_or(query);
        out.push((format!("variable ${}", variable["name"]), inner.to_string()));
    }
    out
}

/// The expression with Grafana's variables replaced by what they stand for here.
fn substitute(expr: &str) -> String {
    let out = expr
        .replace("${__rate_interval}", RATE_INTERVAL)
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("${instance}", ".+")
        .replace("$instance", ".+");
    assert!(
        !out.contains('$'),
        "unknown dashboard variable in `{expr}`: teach substitute() about it"
    );
    out
}

/// Sample names in a text exposition (`name{…} value` or `name value` lines).
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// GitHub's anchors for the Markdown headings of `text` (lowercase; spaces to `-`; other
/// punctuation dropped), outside fenced code blocks.
fn heading_anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            !fenced && l.starts_with('#')
        })
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}
