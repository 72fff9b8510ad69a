//! The CLI: `migrate` is idempotent and names the failing file and statement; bad
//! configuration is one line naming the key, exit 78; `token` mints a token the relay accepts.

use std::process::Command;

use crate::common::{cluster, connect, TestDb, SECRET};
use engagement_relay::auth::{Role, Verifier};
use engagement_relay::config::{AuthConfig, Secret};

/// The relay binary, run from the package root (its `config.toml`), with no secret or
/// database URL from the environment.
pub(crate) fn relay_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engagement-relay"));
    cmd.env_remove("RELAY_JWT_SECRET")
        .env_remove("RELAY_DATABASE_URL");
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

async fn fresh_database(name: &str) -> String {
    let c = cluster().await;
    let admin = connect(&c.url("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    c.url(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_everything_once_and_is_idempotent() {
    let url = fresh_database(&format!("cli_migrate_{}", std::process::id())).await;
    let first = relay_bin()
        .args(["--database-url", &url, "migrate", "--seed"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        out.contains("20241130000000") && out.contains("20241201000000"),
        "{out}"
    );
    let second = relay_bin()
        .args(["--database-url", &url, "migrate"])
        .output()
        .unwrap();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("up to date"));
    let pg = connect(&url).await;
    let recorded: i64 = pg
        .query_one(
            "SELECT count(*) FROM supabase_migrations.schema_migrations",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        recorded as usize,
        engagement_relay::db::migrate::migrations().len()
    );
    let seeded: i64 = pg
        .query_one(
            "SELECT count(DISTINCT user_id) FROM public.engagement_events",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(seeded >= 3, "the seed creates several users with events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_names_the_file_and_the_statement() {
    let url = fresh_database(&format!("cli_broken_{}", std::process::id())).await;
    let pg = connect(&url).await;
    // A table of the same name but another shape makes the index statement fail.
    pg.batch_execute("CREATE TABLE public.engagement_events (x int)")
        .await
        .unwrap();
    let out = relay_bin()
        .args(["--database-url", &url, "migrate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("20241201000000_engagement_events.sql"),
        "{err}"
    );
    assert!(err.contains("statement") && err.contains("line"), "{err}");
    let applied: Vec<String> = pg
        .query(
            "SELECT version FROM supabase_migrations.schema_migrations",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        applied,
        ["20241130000000"],
        "the failed migration was rolled back"
    );
}

#[test]
fn bad_configuration_is_one_line_naming_the_key() {
    let out = relay_bin()
        .env("RELAY_LIMITS__SESSION_QUEUE", "lots")
        .args(["--jwt-secret", "x", "run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("limits.session_queue"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let out = relay_bin().args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.jwt_secret"));

    let out = relay_bin()
        .args(["--config", "/nonexistent.toml", "run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));

    // A JWKS file that cannot be read stops the start before the database is touched.
    let out = relay_bin()
        .env("RELAY_AUTH__JWKS_FILE", "/nonexistent/jwks.json")
        .env("RELAY_DATABASE__URL", "postgres://nobody@127.0.0.1:9/none")
        .args(["run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.jwks_file"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn token_mints_a_token_the_relay_accepts() {
    let sub = uuid::Uuid::new_v4();
    let out = relay_bin()
        .args([
            "--jwt-secret",
            SECRET,
            "token",
            "--sub",
            &sub.to_string(),
            "--ttl",
            "5m",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let verifier = Verifier::new(&AuthConfig {
        jwt_secret: Secret::new(SECRET),
        ..AuthConfig::default()
    });
    let principal = verifier.verify(token.trim()).unwrap();
    assert_eq!(principal.user_id, Some(sub));
    assert_eq!(principal.role, Role::Authenticated);
    let out = relay_bin()
        .args(["--jwt-secret", SECRET, "token", "--role", "admin"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_exits_with_a_clear_error_when_the_publication_is_missing() {
    let db = TestDb::new().await;
    let out = relay_bin()
        .args(["--jwt-secret", SECRET, "--database-url", &db.url])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "run",
        ])
        .env("RELAY_DATABASE__PUBLICATION", "no_such_pub")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("publication `no_such_pub` does not exist"),
        "{err}"
    );
}
