//! `--spawn-dev`: a private PostgreSQL (the test kit's `pgcluster`) with the migrations
//! applied, and the relay as a child process (this binary re-run as `__relay`, through the kit's
//! `RelayProcess`), so its CPU and memory are measured apart from the harness.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use engagement_relay::db;
use relay_testkit::demo::DEV_JWT_SECRET;
use relay_testkit::pgcluster::{Cluster, ClusterOptions};
use relay_testkit::{RelayProcess, StartOptions};
use tracing::info;

/// A private cluster with the migrations applied. Durable settings (not the tests' `fast`
/// ones): with `synchronous_commit=off` the walsender waits for the WAL writer (up to 200 ms)
/// before it may send a commit, which would measure PostgreSQL's flush delay, not the relay.
/// `settings` are extra `name=value` server settings (`--pg-setting`).
pub async fn start_cluster(settings: Vec<(String, String)>) -> anyhow::Result<Cluster> {
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::start(ClusterOptions {
            max_connections: 100,
            settings,
            ..ClusterOptions::default()
        })
    })
    .await?
    .context("starting the private PostgreSQL")?;
    let mut client = db::connect(&cluster.url("postgres"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db::migrate::migrate(&mut client).await?;
    Ok(cluster)
}

/// Environment of a child relay: which database and slot, and which secret.
pub struct RelayEnv<'a> {
    /// Database URL.
    pub database_url: &'a str,
    /// Replication slot name.
    pub slot: &'a str,
    /// Further `RELAY_*` variables.
    pub extra: &'a [(&'a str, &'a str)],
    /// When the relay serves TLS (`RELAY_SERVER__TLS_CERT` in `extra`): a client trusting its
    /// certificate, to wait for `https://…/readyz`.
    pub https: Option<reqwest::Client>,
}

/// How long the child may take to become ready (the replay-window rebuild of a long slot).
const READY: Duration = Duration::from_secs(60);

/// How long the child may take to drain and acknowledge after SIGTERM.
pub const STOP: Duration = Duration::from_secs(15);

/// Starts `relay-soak __relay` on the given database (port-0 listeners, the `dev` secret) and
/// waits (at most 60 s) until `/readyz` says the stream is connected. Its warnings and errors
/// go to this process's stderr as they arrive.
pub async fn spawn_relay(env: RelayEnv<'_>) -> anyhow::Result<RelayProcess> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("__relay")
        .env("RELAY_DATABASE_URL", env.database_url)
        .env("RELAY_DATABASE__SLOT", env.slot)
        .env("RELAY_JWT_SECRET", DEV_JWT_SECRET)
        .envs(env.extra.iter().copied());
    let options = StartOptions {
        echo_warnings: true,
        ..StartOptions::default()
    };
    let mut relay = RelayProcess::start_with(command, options)
        .await
        .context("starting the relay child process")?;
    match &env.https {
        Some(client) => relay.wait_ready_with(client, "https", READY).await?,
        None => relay.wait_ready(READY).await?,
    }
    Ok(relay)
}

/// `--spawn-dev`: a private PostgreSQL ([`start_cluster`] with `settings`) and one relay child
/// on it ([`spawn_relay`], slot `relay_soak`, with `extra` variables and `https`). Keep the
/// cluster as long as the relay runs; its URL is `cluster.url("postgres")`.
pub async fn dev(
    settings: Vec<(String, String)>,
    extra: &[(&str, &str)],
    https: Option<reqwest::Client>,
) -> anyhow::Result<(Cluster, RelayProcess)> {
    let cluster = start_cluster(settings).await?;
    let relay = spawn_relay(RelayEnv {
        database_url: &cluster.url("postgres"),
        slot: "relay_soak",
        extra,
        https,
    })
    .await?;
    Ok((cluster, relay))
}

/// The `__relay` child: the relay configured from `RELAY_*` variables until SIGTERM.
pub async fn serve_relay() -> anyhow::Result<()> {
    use engagement_relay::config::{Config, Overrides};
    let config = Config::load(
        std::path::Path::new("/nonexistent/relay-soak.toml"),
        false,
        &Overrides::default(),
    )?;
    engagement_relay::limits::raise_nofile_limit();
    let relay = engagement_relay::start(config).await?;
    let stop = relay.shutdown_token();
    tokio::spawn(async move {
        engagement_relay::shutdown_signal().await;
        stop.cancel();
    });
    relay.wait().await?;
    Ok(())
}

/// The certificate files of a relay spawned with `--tls`: a CA generated at start and a
/// certificate for 127.0.0.1 it signed, in a temporary folder removed on drop.
pub struct TlsFiles {
    dir: PathBuf,
    /// The CA certificate (PEM), what the sessions trust.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// Generates the CA and the server certificate into `relay-soak-tls-<pid>` under the
    /// temporary directory.
    pub fn generate() -> anyhow::Result<TlsFiles> {
        let dir = std::env::temp_dir().join(format!("relay-soak-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ca = relay_testkit::tls::TestCa::new("relay-soak test CA")?;
        ca.issue(1)?
            .write(&dir.join("server.pem"), &dir.join("server.key"))?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        info!(dir = %dir.display(), "--tls: relay certificate and CA generated");
        Ok(TlsFiles {
            ca: dir.join("ca.pem"),
            dir,
        })
    }

    /// The relay's `RELAY_SERVER__TLS_CERT` / `RELAY_SERVER__TLS_KEY`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let path = |name: &str| self.dir.join(name).display().to_string();
        vec![
            ("RELAY_SERVER__TLS_CERT", path("server.pem")),
            ("RELAY_SERVER__TLS_KEY", path("server.key")),
        ]
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
