//! `engagement-relay doctor`: a ready database passes with exit 0; each broken promise is a
//! failed check with its id and exit 1 (wal_level, publication, RLS, slot lag, an unreachable
//! server); the text report names every check and ends with the summary line.
//!
//! Until the engagement-system migration lands, the tests configure only `engagement_events`
//! (the relay and `doctor` refuse tables that do not exist); the last test shows the default
//! `[[tables]]` failing only on tables that are missing, and passing once they exist.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::common::{insert_event, TestDb, SECRET};
use engagement_relay::config::{Config, Secret};
use engagement_relay::doctor::{self, Options, Status};
use engagement_relay::tables::TableConfig;
use relay_testkit::pgcluster::{Cluster, ClusterOptions};
use serde_json::{json, Value};

/// `[[tables]]` with only `engagement_events` (insert, update).
pub(crate) const EVENTS_ONLY: &str =
    "[[tables]]\ntable = \"engagement_events\"\noperations = [\"insert\", \"update\"]\n";

/// One finished `doctor` process.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// `engagement-relay --config <file> doctor <args>` with `RELAY_DATABASE_URL=url`, the test
/// secret and slot `slot`; `tables` is the `[[tables]]` part of the config file.
pub(crate) async fn doctor(url: &str, slot: &str, tables: &str, args: &[&str]) -> Run {
    let dir = std::env::temp_dir().join(format!(
        "relay-doctor-{}-{slot}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("config.toml");
    std::fs::write(&file, tables).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_engagement-relay"))
        .arg("--config")
        .arg(&file)
        .arg("doctor")
        .args(args)
        .env_remove("RUST_LOG")
        .env("RELAY_DATABASE_URL", url)
        .env("RELAY_JWT_SECRET", SECRET)
        .env("RELAY_DATABASE__SLOT", slot)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run engagement-relay doctor");
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The check `id` of a JSON report.
pub(crate) fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["id"] == id))
        .unwrap_or_else(|| panic!("no check {id} in {report:#}"))
}

/// Ids of the failed checks.
fn failed(report: &Value) -> HashSet<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every check doctor reports for the events-only configuration, in report order.
const CHECKS: [&str; 22] = [
    "connectivity",
    "tls",
    "server_version",
    "replication_role",
    "wal_level",
    "replication_slots",
    "wal_senders",
    "max_slot_wal_keep_size",
    "migrations",
    "publication",
    "table:public.engagement_events",
    "rls:public.engagement_events",
    "indexes:public.engagement_events",
    "message_queue",
    "slot",
    "slot_lag",
    "slot_retained",
    "jwt_secret",
    "jwks",
    "disk",
    "long_transactions",
    "connections",
];

/// Every failed check is in `expected` (plus `disk`, which depends on this machine's free
/// space, not on the database) and every one of `expected` failed with a fix.
fn assert_fails_exactly(run: &Run, expected: &[&str]) {
    let report = run.json();
    let mut fails = failed(&report);
    fails.remove("disk");
    let want: HashSet<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(fails, want, "{report:#}");
    for id in expected {
        let c = check(&report, id);
        assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
    }
    assert_eq!(report["ok"], json!(false));
    assert_eq!(run.code, 1, "{}", run.stderr);
}

/// No failure apart from a full disk on this machine; exit 0 unless the disk failed.
pub(crate) fn assert_healthy(run: &Run) -> Value {
    let report = run.json();
    let fails = failed(&report);
    let disk_only = fails.iter().all(|id| id == "disk");
    assert!(disk_only, "failed: {fails:?}\n{report:#}");
    let expected_code = if fails.is_empty() { 0 } else { 1 };
    assert_eq!(run.code, expected_code, "{report:#}\n{}", run.stderr);
    assert_eq!(report["ok"], json!(fails.is_empty()));
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_database_with_a_streaming_relay_passes() {
    let db = TestDb::new().await;
    let relay = db.relay_with(|c| c.tables = events_only_tables()).await;
    let run = doctor(&db.url, &db.name, EVENTS_ONLY, &["--json"]).await;
    let report = assert_healthy(&run);
    // Every check but those that depend on this machine or cluster, not on the database.
    let machine = [
        "max_slot_wal_keep_size",
        "message_queue",
        "disk",
        "long_transactions",
    ];
    for id in CHECKS.iter().filter(|id| !machine.contains(id)) {
        assert_eq!(check(&report, id)["status"], "pass", "{id}: {report:#}");
    }
    let slot = check(&report, "slot")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        slot.contains("active (pid") && slot.contains("engagement-relay"),
        "the slot's holder is named: {slot}"
    );
    assert!(check(&report, "server_version")["detail"]
        .as_str()
        .unwrap()
        .contains("PostgreSQL 15"));
    // stdout holds the JSON object and nothing else.
    assert!(run.stdout.trim_start().starts_with('{') && run.stdout.trim_end().ends_with('}'));
    let summary = &report["summary"];
    let total = ["passed", "warnings", "failed", "skipped"]
        .iter()
        .map(|k| summary[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(total as usize, report["checks"].as_array().unwrap().len());
    relay.shutdown_token().cancel();
    relay.wait().await.unwrap();
}

pub(crate) fn events_only_tables() -> Vec<TableConfig> {
    vec![engagement_relay::tables::default_tables().remove(0)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_fails_the_wal_level_check() {
    // A second, tiny cluster: the shared one must keep wal_level = logical.
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::start(ClusterOptions {
            fast: true,
            max_connections: 20,
            settings: vec![("wal_level".into(), "replica".into())],
            ..ClusterOptions::default()
        })
    })
    .await
    .unwrap()
    .expect("start a wal_level=replica cluster");
    let run = doctor(
        &cluster.url("postgres"),
        "doctor_slot",
        EVENTS_ONLY,
        &["--json"],
    )
    .await;
    let report = run.json();
    let c = check(&report, "wal_level");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["detail"]
        .as_str()
        .unwrap()
        .contains("wal_level = replica"));
    assert!(c["fix"]
        .as_str()
        .unwrap()
        .contains("ALTER SYSTEM SET wal_level = logical"));
    assert_eq!(run.code, 1);
    assert_eq!(check(&report, "connectivity")["status"], "pass");
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

/// Breaks a fresh database with `sql`; doctor must then fail exactly check `id`, with a fix
/// containing `fix`.
async fn broken_by(sql: &str, id: &str, fix: &str) {
    let db = TestDb::new().await;
    db.client().await.batch_execute(sql).await.unwrap();
    let run = doctor(&db.url, &db.name, EVENTS_ONLY, &["--json"]).await;
    assert_fails_exactly(&run, &[id]);
    let report = run.json();
    let given = check(&report, id)["fix"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(given.contains(fix), "{id}: {given}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_publication_fails_the_publication_check() {
    broken_by(
        "DROP PUBLICATION engagement_events_pub",
        "publication",
        "CREATE PUBLICATION engagement_events_pub FOR TABLE public.engagement_events",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_row_level_security_fails_the_rls_check() {
    broken_by(
        "ALTER TABLE public.engagement_events DISABLE ROW LEVEL SECURITY",
        "rls:public.engagement_events",
        "ALTER TABLE public.engagement_events ENABLE ROW LEVEL SECURITY;",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_lagging_past_max_lag_bytes_fails_the_slot_lag_check() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    pg.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&db.name],
    )
    .await
    .unwrap();
    // WAL the slot has not confirmed: a row and a non-transactional message. The test cluster
    // commits asynchronously; a synchronous commit makes pg_current_wal_lsn() include it.
    pg.batch_execute("SET synchronous_commit = on")
        .await
        .unwrap();
    let user = crate::common::create_user(&pg).await;
    insert_event(&pg, user, "app_open", json!({})).await;
    pg.execute(
        "SELECT pg_logical_emit_message(false, 'doctor', 'lag')",
        &[],
    )
    .await
    .unwrap();

    // Within the default limit the SQL-created slot passes doctor; being inactive (no relay
    // yet) is a warning.
    let run = doctor(&db.url, &db.name, EVENTS_ONLY, &["--json"]).await;
    let report = assert_healthy(&run);
    assert_eq!(check(&report, "slot_lag")["status"], "pass");
    let slot = check(&report, "slot");
    assert_eq!(slot["status"], "warn", "{slot}");
    assert!(slot["detail"].as_str().unwrap().contains("inactive"));

    let run = doctor(
        &db.url,
        &db.name,
        EVENTS_ONLY,
        &["--json", "--max-lag-bytes", "1"],
    )
    .await;
    assert_fails_exactly(&run, &["slot_lag"]);
    let report = run.json();
    let detail = check(&report, "slot_lag")["detail"].as_str().unwrap();
    assert!(detail.contains("over the limit"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_connectivity_without_a_panic() {
    // A port nobody listens on, held so that no other test's server takes it meanwhile.
    let refusing = relay_testkit::refusing_port().expect("a refusing port");
    let port = refusing.port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let run = doctor(&url, "doctor_slot", EVENTS_ONLY, &["--json"]).await;
    let report = run.json();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(failed(&report), HashSet::from(["connectivity".to_string()]));
    let detail = check(&report, "connectivity")["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("127.0.0.1:{port}")) && detail.contains("refused"),
        "names the server and the cause: {detail}"
    );
    // Everything that needs the database is skipped; the configuration is still checked.
    assert_eq!(check(&report, "wal_level")["status"], "skip");
    assert_eq!(
        check(&report, "rls:public.engagement_events")["status"],
        "skip"
    );
    assert_eq!(check(&report, "jwt_secret")["status"], "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_report_names_every_check_and_ends_with_the_summary() {
    let db = TestDb::new().await;
    let run = doctor(&db.url, &db.name, EVENTS_ONLY, &[]).await;
    let lines: Vec<&str> = run.stdout.lines().collect();
    for id in CHECKS {
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(id))
            .unwrap_or_else(|| panic!("no line for {id}:\n{}", run.stdout));
        let mark = &line[..4];
        assert!(["PASS", "WARN", "FAIL", "SKIP"].contains(&mark), "{line}");
    }
    // No slot yet (warning), unlimited max_slot_wal_keep_size (warning): exit 0 all the same.
    let last = lines.last().unwrap();
    let words: Vec<&str> = last.split(", ").collect();
    assert!(
        words[0].ends_with(" passed")
            && (words[1].ends_with(" warning") || words[1].ends_with(" warnings"))
            && words[2].ends_with(" failed"),
        "{last}"
    );
    assert!(last.contains("warning"), "the missing slot warns: {last}");
    let disk_failed = lines.iter().any(|l| l.starts_with("FAIL  disk"));
    assert_eq!(run.code, if disk_failed { 1 } else { 0 }, "{}", run.stdout);
    // Every warning and failure carries a fix line right below it.
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("WARN") || line.starts_with("FAIL") {
            assert!(
                lines
                    .get(i + 1)
                    .is_some_and(|l| l.trim_start().starts_with("fix: ")),
                "{line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_reports_a_missing_slot_as_a_warning_and_a_short_secret_too() {
    let db = TestDb::new().await;
    let mut config: Config = db.config();
    config.tables = events_only_tables();
    config.auth.jwt_secret = Secret::new("short");
    let report = doctor::run(&config, &Options::default()).await;
    let status = |id: &str| report.get(id).map(|c| c.status);
    assert_eq!(status("slot"), Some(Status::Warn));
    assert_eq!(status("slot_lag"), Some(Status::Skip));
    assert_eq!(status("jwt_secret"), Some(Status::Warn));
    assert_eq!(status("publication"), Some(Status::Pass));
    let disk_failed = status("disk") == Some(Status::Fail);
    assert_eq!(report.ok(), !disk_failed, "{}", report.to_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_tables_pass_and_a_dropped_story_index_fails() {
    let db = TestDb::new().await;
    // No `[[tables]]` in the file: the defaults, every one checked by its story names.
    let run = doctor(&db.url, &db.name, "", &["--json"]).await;
    let report = assert_healthy(&run);
    for table in [
        "engagement_events",
        "engagement_state_transitions",
        "user_engagement_states",
    ] {
        for kind in ["table", "rls", "indexes"] {
            let c = check(&report, &format!("{kind}:public.{table}"));
            assert_eq!(c["status"], "pass", "{c}");
        }
    }
    db.client()
        .await
        .batch_execute("DROP INDEX public.idx_user_engagement_states_remind_at")
        .await
        .unwrap();
    let run = doctor(&db.url, &db.name, "", &["--json"]).await;
    assert_fails_exactly(&run, &["indexes:public.user_engagement_states"]);
    let report = run.json();
    let fix = check(&report, "indexes:public.user_engagement_states")["fix"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        fix.contains("idx_user_engagement_states_remind_at"),
        "{fix}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_without_a_replica_identity_covering_the_owner_fail_the_table_check() {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute("ALTER TABLE public.engagement_events REPLICA IDENTITY DEFAULT")
        .await
        .unwrap();
    let run = doctor(&db.url, &db.name, "", &["--json"]).await;
    assert_fails_exactly(&run, &["table:public.engagement_events"]);
    let report = run.json();
    let fix = check(&report, "table:public.engagement_events")["fix"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        fix.starts_with("ALTER TABLE public.engagement_events REPLICA IDENTITY FULL;"),
        "{fix}"
    );
}
