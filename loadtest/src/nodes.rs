//! `--nodes N`: a private `nats-server -js` and N relay children in cluster mode on the same
//! PostgreSQL and slot (every node runs the same configuration plus `cluster.nats_url`), or
//! the nodes named by `--target`. Finds the publisher (`relay_cluster_publisher 1`) and
//! SIGKILLs it for the takeover measurement.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use relay_testkit::nats::{NatsOptions, NatsServer};
use relay_testkit::RelayProcess;
use tracing::info;

use crate::spawn;

/// One relay node the sessions are spread over.
#[derive(Debug, Clone)]
pub struct Node {
    /// WebSocket base URL, `ws://127.0.0.1:<port>`.
    pub url: String,
    /// Its address (loopback only).
    pub addr: SocketAddr,
    /// Its metrics URL (`http://…/metrics`), when known.
    pub metrics_url: Option<String>,
    /// Its pid, when known (spawned, or found from the port).
    pub pid: Option<u32>,
}

/// The spawned cluster: NATS and the relay children (index = node index). Dropping it
/// SIGKILLs the relays and nats-server.
pub struct Spawned {
    /// The relay children; `None` once killed (dropped first: fields drop in order).
    pub relays: Vec<Option<RelayProcess>>,
    /// The private nats-server, kept running until the relays are gone.
    _nats: NatsServer,
}

/// Starts a private `nats-server -js` (blocking, in a blocking task) and `n` relays on
/// `database_url` sharing slot `relay_soak` and `cluster.nats_url`, each with `extra`
/// variables; the first started usually takes the slot. Waits for each node's `/readyz`.
pub async fn spawn_cluster(
    n: usize,
    database_url: &str,
    extra: &[(String, String)],
) -> anyhow::Result<(Spawned, Vec<Node>)> {
    let nats = tokio::task::spawn_blocking(|| NatsServer::start(NatsOptions::default()))
        .await?
        .context("starting nats-server -js")?;
    info!(url = %nats.url(), "private nats-server running");
    let mut env: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let nats_url = nats.url();
    env.push(("RELAY_CLUSTER__NATS_URL", nats_url.as_str()));
    let mut relays = Vec::with_capacity(n);
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let relay = spawn::spawn_relay(spawn::RelayEnv {
            database_url,
            slot: "relay_soak",
            extra: &env,
            https: None,
        })
        .await
        .with_context(|| format!("starting relay node {i}"))?;
        info!(node = i, addr = %relay.addr, pid = relay.pid(), "relay node ready");
        nodes.push(Node {
            url: format!("ws://{}", relay.addr),
            addr: relay.addr,
            metrics_url: Some(format!("http://{}/metrics", relay.metrics_addr)),
            pid: Some(relay.pid()),
        });
        relays.push(Some(relay));
    }
    Ok((
        Spawned {
            relays,
            _nats: nats,
        },
        nodes,
    ))
}

/// The value of gauge `name` (no labels) in a `/metrics` text.
pub fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// The count of histogram `name` in a `/metrics` text (0 when absent).
pub fn histogram_count(metrics: &str, name: &str) -> f64 {
    gauge(metrics, &format!("{name}_count")).unwrap_or(0.0)
}

async fn scrape(url: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .ok()?;
    client.get(url).send().await.ok()?.text().await.ok()
}

/// Index of the node whose `relay_cluster_publisher` is 1, if any answers so.
pub async fn publisher(nodes: &[Node], skip: Option<usize>) -> Option<usize> {
    for (i, node) in nodes.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        let Some(url) = &node.metrics_url else {
            continue;
        };
        if let Some(text) = scrape(url).await {
            if gauge(&text, "relay_cluster_publisher") == Some(1.0) {
                return Some(i);
            }
        }
    }
    None
}

/// What one takeover looked like (`--kill-publisher-after`).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Takeover {
    /// The node SIGKILLed (the publisher then).
    pub killed_node: usize,
    /// The node that took the slot.
    pub new_publisher: Option<usize>,
    /// SIGKILL → `relay_cluster_publisher 1` on another node, seconds (50 ms polling).
    pub to_publisher_seconds: Option<f64>,
    /// SIGKILL → the new publisher's first PubAck (`relay_cluster_publish_seconds_count`
    /// rises), seconds (50 ms polling): when events flow again.
    pub to_first_publish_seconds: Option<f64>,
}

/// SIGKILLs the publisher among `spawned`'s relays, then polls the others every 50 ms (at
/// most `bound`) for the new publisher and its first published event.
pub async fn kill_publisher(
    spawned: &mut Spawned,
    nodes: &[Node],
    bound: Duration,
) -> anyhow::Result<Takeover> {
    let killed = publisher(nodes, None)
        .await
        .context("no node says it is the publisher (relay_cluster_publisher)")?;
    // Publish counts before the kill, so a rise on the new publisher is its own.
    let mut counts = Vec::with_capacity(nodes.len());
    for node in nodes {
        let text = match &node.metrics_url {
            Some(url) => scrape(url).await.unwrap_or_default(),
            None => String::new(),
        };
        counts.push(histogram_count(&text, "relay_cluster_publish_seconds"));
    }
    let relay = spawned.relays[killed]
        .take()
        .context("the publisher was already killed")?;
    let at = Instant::now();
    relay.kill().context("SIGKILL of the publisher")?;
    info!(node = killed, "publisher SIGKILLed");
    let mut takeover = Takeover {
        killed_node: killed,
        ..Takeover::default()
    };
    while at.elapsed() < bound {
        for (i, node) in nodes.iter().enumerate() {
            let Some(url) = node.metrics_url.as_ref().filter(|_| i != killed) else {
                continue;
            };
            let Some(text) = scrape(url).await else {
                continue;
            };
            if gauge(&text, "relay_cluster_publisher") == Some(1.0)
                && takeover.new_publisher.is_none()
            {
                takeover.new_publisher = Some(i);
                takeover.to_publisher_seconds = Some(at.elapsed().as_secs_f64());
            }
            if takeover.new_publisher == Some(i)
                && histogram_count(&text, "relay_cluster_publish_seconds") > counts[i]
            {
                takeover.to_first_publish_seconds = Some(at.elapsed().as_secs_f64());
                info!(?takeover, "new publisher publishing");
                return Ok(takeover);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(takeover)
}
