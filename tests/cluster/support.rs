//! What the cluster tests share: a private `nats-server -js`, relay nodes on it (in this
//! process, or as a child process that can be SIGKILLed), the slot's and the WAL's positions,
//! `/readyz`, and recording clients spread over the nodes (each node's clients follow a
//! `watch` of its address, so a test moves them to another node when it takes one down).

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::process::{start_ready, RelayProcess};
use crate::common::workload::{settle, Load, Record, Recorder};
use crate::common::{metric, wait_until, wait_until_async, TestDb};
use engagement_relay::config::{Config, Secret};
use engagement_relay::Relay;
use relay_testkit::nats::{NatsOptions, NatsServer};
use tokio::sync::watch;
use uuid::Uuid;

/// The longest any single step of a cluster test may take.
pub const T: Duration = Duration::from_secs(30);

/// How often a standby tries to take the slot in these tests (and as the environment says it).
const TAKEOVER: Duration = Duration::from_millis(200);
const TAKEOVER_ENV: &str = "200ms";

/// A private `nats-server -js` on free ports with a store dir of its own.
pub async fn nats() -> NatsServer {
    tokio::task::spawn_blocking(|| NatsServer::start(NatsOptions::default()))
        .await
        .unwrap()
        .expect("nats-server starts (apt-get install -y nats-server)")
}

/// Sets cluster mode on `config`: NATS at `url`, a fast takeover.
pub fn cluster_mode(config: &mut Config, url: &str) {
    config.cluster.nats_url = Secret::new(url.to_string());
    config.cluster.takeover_interval = TAKEOVER;
}

/// A cluster node in this process on `db` and NATS `url`, once ready (consuming the stream).
pub async fn node(db: &TestDb, url: &str) -> Relay {
    node_with(db, url, |_| {}).await
}

/// [`node`] with an adjusted configuration.
pub async fn node_with(db: &TestDb, url: &str, adjust: impl FnOnce(&mut Config)) -> Relay {
    db.relay_with(|c| {
        cluster_mode(c, url);
        adjust(c);
    })
    .await
}

/// `n` cluster nodes in this process, started one after the other (the first takes the slot).
pub async fn nodes(db: &TestDb, url: &str, n: usize) -> Vec<Relay> {
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(node(db, url).await);
    }
    nodes
}

/// A cluster node as a child process (the real binary, to SIGKILL or to read its log), once
/// ready.
pub async fn process_node(db: &TestDb, url: &str) -> RelayProcess {
    start_ready(
        db,
        &[
            ("RELAY_CLUSTER__NATS_URL", url),
            ("RELAY_CLUSTER__TAKEOVER_INTERVAL", TAKEOVER_ENV),
        ],
    )
    .await
}

/// Waits until the node `process` holds the slot (`relay_cluster_publisher` 1).
pub async fn process_publishes(process: &RelayProcess) {
    wait_until_async("the node's process holds the slot", T, || async {
        metric(&process.scrape().await, "relay_cluster_publisher") == 1.0
    })
    .await;
}

/// Waits until exactly one of `nodes` holds the slot; returns its index.
pub async fn publisher(nodes: &[Relay]) -> usize {
    wait_until("exactly one node holds the slot", T, || {
        nodes.iter().filter(|n| n.holds_slot()).count() == 1
    })
    .await;
    nodes.iter().position(|n| n.holds_slot()).unwrap()
}

/// `confirmed_flush_lsn` of `slot`, as a number.
pub async fn confirmed_lsn(pg: &tokio_postgres::Client, slot: &str) -> i64 {
    lsn(
        pg,
        "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots \
         WHERE slot_name = $1",
        &[&slot],
    )
    .await
}

/// `pg_current_wal_lsn()`, as a number: every transaction committed so far ends before it.
pub async fn wal_lsn(pg: &tokio_postgres::Client) -> i64 {
    lsn(pg, "SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[]).await
}

async fn lsn(
    pg: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    pg.query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The highest `seq` the load has committed so far (-1 before any).
pub async fn last_seq(pg: &tokio_postgres::Client) -> i64 {
    pg.query_one(
        "SELECT coalesce(max((value->>'seq')::int8), -1) FROM public.engagement_events",
        &[],
    )
    .await
    .expect("last seq")
    .get(0)
}

/// `GET /readyz` on `addr`: its status, 0 when nothing answers.
pub async fn readyz(addr: SocketAddr) -> u16 {
    match reqwest::get(format!("http://{addr}/readyz")).await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// Recording clients ([`Recorder`], resuming with `since` when their socket ends): every user
/// has one on every node. Node `i`'s clients connect to the address in `addrs[i]`.
pub struct Clients {
    addrs: Vec<watch::Sender<SocketAddr>>,
    /// `(node, recorder)`, node-major.
    recorders: Vec<(usize, Recorder)>,
}

impl Clients {
    /// One client per user per node at `nodes`, each subscribed (its `ready` arrived).
    pub async fn start(nodes: &[SocketAddr], users: &[Uuid]) -> Clients {
        let addrs: Vec<_> = nodes.iter().map(|a| watch::channel(*a).0).collect();
        let mut recorders = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            for user in users {
                recorders.push((i, Recorder::start(addr.subscribe(), *user, true)));
            }
        }
        for (_, r) in &recorders {
            r.subscribed().await;
        }
        Clients { addrs, recorders }
    }

    /// Node `node`'s clients reconnect to `to` from now on (when their socket ends).
    pub fn redirect(&self, node: usize, to: SocketAddr) {
        self.addrs[node].send_replace(to);
    }

    /// Waits until every client received at least `n` events.
    pub async fn received(&self, n: usize) {
        for (node, r) in &self.recorders {
            let got = r.wait(T, |rec| rec.seqs.len() >= n).await;
            assert!(got, "a client of node {node} got fewer than {n} events");
        }
    }

    /// Drops the sockets of `node`'s clients; each resumes with `since` 2 s later.
    pub fn cut(&self, node: usize) {
        for (_, r) in self.recorders.iter().filter(|(n, _)| *n == node) {
            r.cut();
        }
    }

    /// The first client of `node`, to watch deliveries on it.
    pub fn on(&self, node: usize) -> &Recorder {
        &self.recorders.iter().find(|(n, _)| *n == node).unwrap().1
    }

    /// Stops `load` and asserts every client's sequence exactly (each of its user's committed
    /// events once, in commit order, nobody else's, every resume complete); returns
    /// `(node, record)` per client.
    pub async fn settle(self, pg: &tokio_postgres::Client, load: Load) -> Vec<(usize, Record)> {
        let (nodes, recorders): (Vec<usize>, Vec<Recorder>) = self.recorders.into_iter().unzip();
        let records = settle(pg, load, recorders, T).await;
        nodes.into_iter().zip(records).collect()
    }
}
