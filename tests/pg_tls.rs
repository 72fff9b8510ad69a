//! TLS to PostgreSQL (issue 13): against a TLS-only cluster (`hostnossl … reject`, a
//! certificate for `localhost` from a CA made at start), the relay streams, ingests, serves
//! history, migrates and passes `doctor` with `sslmode=verify-full`; every one of its
//! connections, the walsender included, is encrypted; plaintext, a foreign CA and a wrong host
//! name each fail with one line that says TLS.

use std::process::Output;
use std::time::Duration;

use engagement_relay::config::Secret;
use serde_json::json;

use crate::api::post;
use crate::common::tls::tls_cluster;
use crate::common::ws::connect;
use crate::common::{create_user, insert_event, user_token, TestDb};
use crate::doctor::{assert_healthy, check, doctor, events_only_tables, EVENTS_ONLY};
use crate::history::get;

const T: Duration = Duration::from_secs(20);
const HOUR: Duration = Duration::from_secs(3600);

/// `engagement-relay --database-url <url> <args>`, finished.
async fn relay_command(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_engagement-relay"))
        .args(["--database-url", url, "--jwt-secret", crate::common::SECRET])
        .args(args)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run engagement-relay")
}

/// The error line of a failed command: exactly one line on stderr.
fn one_line(output: &Output) -> String {
    assert!(!output.status.success(), "it should have failed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr}");
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_streams_ingests_serves_history_and_migrates_over_verify_full() {
    let tls = tls_cluster().await;
    let db = TestDb::on(&tls.cluster).await;
    let url = tls.verify_full(&db.name);
    let migrate = relay_command(&url, &["migrate"]).await;
    assert!(migrate.status.success(), "migrate: {migrate:?}");

    let relay = db
        .relay_with(|c| c.database.url = Secret::new(url.clone()))
        .await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, HOUR);
    let (mut socket, _) = connect(&relay, &token, "").await;
    let inserted = insert_event(&pg, user, "app_open", json!({})).await;
    let frame = socket.next_json(T).await.expect("the inserted event");
    assert_eq!(frame["record"]["id"], json!(inserted), "{frame}");

    let body = json!({"user_id": user, "event_type": "goal_complete", "value": {}}).to_string();
    let (status, reply) = post(&relay, "/v1/events", Some(&token), body).await;
    assert_eq!(status, 201, "{reply}");
    let frame = socket.next_json(T).await.expect("the ingested event");
    assert_eq!(frame["record"]["event_type"], "goal_complete", "{frame}");
    let (status, page) = get(&relay, &token, "limit=10").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"].as_array().map(Vec::len), Some(2), "{page}");

    // Nothing in plaintext: every backend of this database but the test's own (which uses
    // sslmode=require, encrypted too) is the relay's, the walsender and the API pool included.
    let rows = pg
        .query(
            "SELECT a.backend_type, coalesce(a.application_name, ''), s.ssl \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(seen.iter().all(|(_, _, ssl)| *ssl), "{seen:?}");
    assert!(
        seen.iter()
            .any(|(kind, app, _)| kind == "walsender" && app == "engagement-relay"),
        "the walsender is among them: {seen:?}"
    );
    assert!(
        seen.iter().any(|(kind, _, _)| kind == "client backend"),
        "the API pool's connection is among them: {seen:?}"
    );
    let walsenders: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
             WHERE r.application_name = 'engagement-relay' AND s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        walsenders >= 1,
        "pg_stat_replication shows an encrypted walsender"
    );
    relay.shutdown_token().cancel();
    relay.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_over_verify_full_and_reports_the_certificate() {
    let tls = tls_cluster().await;
    let db = TestDb::on(&tls.cluster).await;
    let url = tls.verify_full(&db.name);
    let relay = db
        .relay_with(|c| {
            c.database.url = Secret::new(url.clone());
            c.tables = events_only_tables();
        })
        .await;
    let run = doctor(&url, &db.name, EVENTS_ONLY, &["--json"]).await;
    let report = assert_healthy(&run);
    let tls_check = check(&report, "tls");
    assert_eq!(tls_check["status"], "pass", "{tls_check}");
    let detail = tls_check["detail"].as_str().unwrap();
    for part in ["encrypted (TLSv1.3", "sslmode=verify-full", "valid until"] {
        assert!(detail.contains(part), "{part}: {detail}");
    }
    relay.shutdown_token().cancel();
    relay.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_a_foreign_ca_and_a_wrong_host_name_fail_with_one_line_naming_tls() {
    let tls = tls_cluster().await;
    let db = TestDb::on(&tls.cluster).await;
    let name = &db.name;
    let ca = tls.ca_file.display();
    let other = tls.other_ca_file.display();
    let cases = [
        (
            tls.url("localhost", name, "sslmode=disable"),
            &["the server requires TLS; set sslmode=require"][..],
        ),
        (
            tls.url(
                "localhost",
                name,
                &format!("sslmode=verify-full&sslrootcert={other}"),
            ),
            &["TLS handshake with localhost:", "UnknownIssuer"][..],
        ),
        (
            tls.url(
                "127.0.0.1",
                name,
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            &["TLS handshake with 127.0.0.1:", "not valid for name"][..],
        ),
    ];
    for (url, expected) in &cases {
        let line = one_line(&relay_command(url, &["migrate"]).await);
        for part in *expected {
            assert!(line.contains(part), "{url}: {line}");
        }
    }

    // The daemon refuses to start the same way (its start-up checks use the same settings).
    let mut config = db.config();
    config.database.url = Secret::new(cases[1].0.clone());
    let refused = engagement_relay::start(config)
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("TLS handshake"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_sslrootcert_is_a_configuration_error_naming_it() {
    let url = "postgres://postgres@localhost:5432/postgres?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem";
    let output = relay_command(url, &["migrate"]).await;
    let line = one_line(&output);
    assert_eq!(output.status.code(), Some(78), "{line}");
    assert!(
        line.contains("database.url: sslrootcert /nonexistent/ca.pem: no such file"),
        "{line}"
    );
}
