//! `engagement-relay dev --nodes N` (N > 1): a private `nats-server -js` and N relay nodes in
//! cluster mode, each this binary re-run as `run` with the same configuration file and
//! environment plus the private database, the secret, `cluster.nats_url` and its own ports
//! (`server.listen` and `metrics.listen` + node index, or free ports when the configured port
//! is 0) and the inspector page with `dev`'s token presets. Their logs go to this terminal's
//! stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use engagement_relay::config::InspectorPreset;
use relay_testkit::install::{apt_install, can_apt_install, install_hint};
use relay_testkit::nats::{find_nats_server, NatsOptions, NatsServer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a node may take to answer `/readyz` 200 before the URLs are printed anyway.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the nodes' configuration comes from: the parent's `--config` (when given) and the
/// values `dev` sets.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The `--config` file, when one was given explicitly (else the children read the default
    /// `config.toml` in the working directory, when present, as the parent did).
    pub config_file: Option<PathBuf>,
    /// The private database's URL.
    pub database_url: String,
    /// The JWT secret every node verifies with.
    pub jwt_secret: String,
    /// The first node's WebSocket listener; node i listens on its port + i (port 0: free).
    pub listen: SocketAddr,
    /// The first node's metrics listener; node i on its port + i (port 0: free).
    pub metrics_listen: SocketAddr,
    /// `server.inspector_presets` of every node (the inspector is on on each).
    pub inspector_presets: Vec<InspectorPreset>,
}

/// One running node.
#[derive(Debug)]
pub struct Node {
    child: Child,
    /// Its WebSocket/HTTP address.
    pub addr: SocketAddr,
    /// Its metrics address.
    pub metrics_addr: SocketAddr,
}

/// The private NATS server and the relay nodes; [`Nodes::stop`] ends them (drop kills
/// them).
#[derive(Debug)]
pub struct Nodes {
    /// The nodes, in port order.
    pub nodes: Vec<Node>,
    nats: Option<NatsServer>,
}

/// Finds `nats-server`; when it is missing, installs the Debian package if this process is
/// root with apt-get (services kept stopped), else fails with the one line to run.
pub fn ensure_nats_server() -> anyhow::Result<()> {
    match find_nats_server() {
        Ok(_) => Ok(()),
        Err(_) if std::env::var_os("RELAY_NATS_SERVER").is_some() => {
            Err(find_nats_server().err().map_or_else(
                || anyhow::anyhow!("RELAY_NATS_SERVER names no nats-server"),
                Into::into,
            ))
        }
        Err(_) if can_apt_install() => {
            let why = "engagement-relay dev --nodes needs nats-server";
            apt_install(&["nats-server"], why).context("installing nats-server")?;
            find_nats_server()?;
            Ok(())
        }
        Err(_) => anyhow::bail!(
            "nats-server not found; run: {} (or set RELAY_NATS_SERVER to the binary)",
            install_hint(&["nats-server"])
        ),
    }
}

/// Starts a private `nats-server -js` (a free port, a temp store removed at the end).
pub async fn start_nats() -> anyhow::Result<NatsServer> {
    tokio::task::spawn_blocking(ensure_nats_server).await??;
    let nats = tokio::task::spawn_blocking(|| NatsServer::start(NatsOptions::default()))
        .await?
        .context("starting the private nats-server -js")?;
    info!(url = %nats.url(), "private nats-server running");
    Ok(nats)
}

/// The address of node `i`: `base` with port + i, or a free port when `base`'s port is 0
/// (held in `held` until the nodes are spawned, so two nodes never get the same one).
fn node_addr(
    base: SocketAddr,
    i: usize,
    held: &mut Vec<relay_testkit::PortGuard>,
) -> anyhow::Result<SocketAddr> {
    if base.port() == 0 {
        let guard = relay_testkit::free_port().context("finding a free port")?;
        let port = guard.port();
        held.push(guard);
        return Ok(SocketAddr::new(base.ip(), port));
    }
    let port = u16::try_from(usize::from(base.port()) + i)
        .ok()
        .context("node ports run past 65535")?;
    Ok(SocketAddr::new(base.ip(), port))
}

/// Starts `n` nodes on `nats` with `config`, then waits (at most 60 s each, or until
/// `shutdown`) until each answers `/readyz` 200. A node that exits or is not ready in time
/// is an error (the started ones are stopped by drop).
pub async fn start(
    n: usize,
    nats: NatsServer,
    config: &NodeConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Nodes> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut nodes = Nodes {
        nodes: Vec::with_capacity(n),
        nats: Some(nats),
    };
    let nats_url = nodes.nats.as_ref().map(NatsServer::url).unwrap_or_default();
    let mut held = Vec::new();
    let mut addrs = Vec::with_capacity(n);
    for i in 0..n {
        addrs.push((
            node_addr(config.listen, i, &mut held)?,
            node_addr(config.metrics_listen, i, &mut held)?,
        ));
    }
    drop(held);
    let presets = InspectorPreset::env_value(&config.inspector_presets);
    for (i, (addr, metrics_addr)) in addrs.into_iter().enumerate() {
        let mut command = Command::new(&exe);
        if let Some(file) = &config.config_file {
            command.arg("--config").arg(file);
        }
        let child = command
            .arg("run")
            .env("RELAY_DATABASE_URL", &config.database_url)
            .env("RELAY_JWT_SECRET", &config.jwt_secret)
            .env("RELAY_LISTEN", addr.to_string())
            .env("RELAY_METRICS_LISTEN", metrics_addr.to_string())
            .env("RELAY_CLUSTER__NATS_URL", &nats_url)
            .env("RELAY_SERVER__INSPECTOR", "true")
            .env("RELAY_SERVER__INSPECTOR_PRESETS", &presets)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting relay node {i}"))?;
        info!(node = i, %addr, %metrics_addr, pid = child.id(), "relay node started");
        nodes.nodes.push(Node {
            child,
            addr,
            metrics_addr,
        });
    }
    for (i, node) in nodes.nodes.iter_mut().enumerate() {
        wait_ready(i, node, shutdown).await?;
    }
    Ok(nodes)
}

/// Polls `http://127.0.0.1:<port>/readyz` every 200 ms until 200, `shutdown`, or
/// [`READY_TIMEOUT`]; errors when the node exits first or stays unready.
async fn wait_ready(i: usize, node: &mut Node, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{}/readyz", node.addr.port());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    loop {
        if let Some(status) = node.child.try_wait()? {
            anyhow::bail!("relay node {i} exited ({status}) before it was ready");
        }
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if started.elapsed() > READY_TIMEOUT {
            anyhow::bail!("relay node {i} not ready after {READY_TIMEOUT:?} ({url})");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

impl Nodes {
    /// The private NATS server's URL.
    pub fn nats_url(&self) -> String {
        self.nats.as_ref().map(NatsServer::url).unwrap_or_default()
    }

    /// Waits until `shutdown`, warning once for each node that exits meanwhile.
    pub async fn watch(&mut self, shutdown: &CancellationToken) {
        let mut reported = vec![false; self.nodes.len()];
        loop {
            for (i, node) in self.nodes.iter_mut().enumerate() {
                if let (false, Ok(Some(status))) = (reported[i], node.child.try_wait()) {
                    warn!(node = i, %status, "relay node exited");
                    reported[i] = true;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// SIGTERM to every node (they drain and close their sessions), waits up to 15 s for
    /// them (then SIGKILL), then stops nats-server. Never fails; problems are logged.
    pub async fn stop(mut self) {
        for node in &self.nodes {
            if let Err(e) = relay_testkit::sigterm(node.child.id()) {
                // Already gone (e.g. Ctrl-C reached the whole process group first).
                tracing::debug!("SIGTERM to node {}: {e}", node.child.id());
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for (i, node) in self.nodes.iter_mut().enumerate() {
            loop {
                match node.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        warn!(node = i, "relay node did not stop in time; killing it");
                        let _ = node.child.kill();
                        let _ = node.child.wait();
                        break;
                    }
                    Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        if let Some(mut nats) = self.nats.take() {
            let stopped = tokio::task::spawn_blocking(move || nats.stop()).await;
            if let Ok(Err(e)) = stopped {
                warn!("stopping the private nats-server: {e}");
            }
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Ok(None) = node.child.try_wait() {
                let _ = node.child.kill();
                let _ = node.child.wait();
            }
        }
    }
}
