//! `--spawn-dev`: a private PostgreSQL (the relay's own `pgcluster` machinery) with the
//! migrations applied, and the relay as a child process (this binary re-run as `__relay`), so
//! its CPU and memory are measured apart from the harness.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use engagement_relay::db;
use engagement_relay::dev::DEV_JWT_SECRET;
use engagement_relay::pgcluster::{Cluster, ClusterOptions};

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
        .map_err(|e| anyhow::anyhow!(db::describe(&e)))?;
    db::migrate::migrate(&mut client).await?;
    Ok(cluster)
}

/// The relay running as a child process.
pub struct RelayProcess {
    child: Child,
    /// WebSocket/HTTP address.
    pub addr: SocketAddr,
    /// Metrics address.
    pub metrics: SocketAddr,
}

/// Environment of a child relay: which database and slot, and which secret.
pub struct RelayEnv<'a> {
    /// Database URL.
    pub database_url: &'a str,
    /// Replication slot name.
    pub slot: &'a str,
    /// Further `RELAY_*` variables.
    pub extra: &'a [(&'a str, &'a str)],
}

/// Starts `relay-soak __relay` with the given database, on free loopback ports, and waits (at
/// most 60 s) until `/readyz` says the stream is connected.
pub async fn spawn_relay(env: RelayEnv<'_>) -> anyhow::Result<RelayProcess> {
    let addr = free_port()?;
    let metrics = free_port()?;
    let child = Command::new(std::env::current_exe()?)
        .arg("__relay")
        .env("RELAY_DATABASE_URL", env.database_url)
        .env("RELAY_DATABASE__SLOT", env.slot)
        .env("RELAY_JWT_SECRET", DEV_JWT_SECRET)
        .env("RELAY_LISTEN", addr.to_string())
        .env("RELAY_METRICS_LISTEN", metrics.to_string())
        .env("RELAY_LOG__LEVEL", "warn")
        .envs(env.extra.iter().copied())
        .stdin(Stdio::null())
        .spawn()
        .context("starting the relay child process")?;
    let relay = RelayProcess {
        child,
        addr,
        metrics,
    };
    let ready = format!("http://{addr}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(&ready).await {
            if r.status().is_success() {
                return Ok(relay);
            }
        }
        if Instant::now() > deadline {
            bail!("the relay did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl RelayProcess {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait up to 15 s (the relay drains and acknowledges), then SIGKILL.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        bail!("the relay did not stop within 15 s of SIGTERM")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
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
