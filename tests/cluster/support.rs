//! What the cluster tests share: a private `nats-server -js`, relay nodes on it (in this
//! process, or as a child process that can be SIGKILLed), the slot's and the WAL's positions,
//! `/readyz`, and recording clients spread over the nodes (each node's clients follow a
//! `watch` of its address, so a test moves them to another node when it takes one down).

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::process::{start_ready, RelayProcess};
use crate::common::workload::{settle, Load, Record, Recorder};
use crate::common::ws::connect;
use crate::common::{create_user, metric, user_token, wait_until, wait_until_async, TestDb};
use engagement_relay::config::{Config, Secret};
use engagement_relay::Relay;
use relay_testkit::nats::{NatsOptions, NatsServer};
use serde_json::Value;
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

/// A first cluster node on `db` and NATS `url`, once it holds the slot.
pub async fn first_node(db: &TestDb, url: &str) -> Relay {
    let first = node(db, url).await;
    wait_until("the first node holds the slot", T, || first.holds_slot()).await;
    first
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
    process_node_with(db, url, &[]).await
}

/// [`process_node`] with more `RELAY_*` variables.
pub async fn process_node_with(db: &TestDb, url: &str, env: &[(&str, &str)]) -> RelayProcess {
    let mut all = vec![
        ("RELAY_CLUSTER__NATS_URL", url),
        ("RELAY_CLUSTER__TAKEOVER_INTERVAL", TAKEOVER_ENV),
    ];
    all.extend_from_slice(env);
    start_ready(db, &all).await
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

/// Waits until `db`'s slot is confirmed past every transaction committed so far.
pub async fn slot_confirmed_past_commits(pg: &tokio_postgres::Client, db: &TestDb) {
    let last = wal_lsn(pg).await;
    wait_until_async("the slot is confirmed past the events", T, || async {
        confirmed_lsn(pg, &db.name).await >= last
    })
    .await;
}

/// Stops every node gracefully, one after the other.
pub async fn shutdown(nodes: Vec<Relay>) {
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// A new user and a token of theirs, valid for an hour.
pub async fn user_and_token(pg: &tokio_postgres::Client) -> (Uuid, String) {
    let user = create_user(pg).await;
    (user, user_token(user, Duration::from_secs(3600)))
}

/// Two cluster nodes on `db` and NATS `url` (one holding the slot), two users with a client
/// each on both nodes, and a steady insert load of theirs.
pub struct Loaded {
    pub nodes: Vec<Relay>,
    pub addrs: Vec<SocketAddr>,
    pub pg: tokio_postgres::Client,
    pub clients: Clients,
    pub load: Load,
}

impl Loaded {
    pub async fn start(db: &TestDb, url: &str) -> Loaded {
        let nodes = nodes(db, url, 2).await;
        publisher(&nodes).await;
        let pg = db.client().await;
        let users = [create_user(&pg).await, create_user(&pg).await];
        let addrs: Vec<_> = nodes.iter().map(|n| n.server_addr()).collect();
        let clients = Clients::start(&addrs, &users).await;
        let load = Load::start(&db.url, users.to_vec(), 50, 0);
        Loaded {
            nodes,
            addrs,
            pg,
            clients,
            load,
        }
    }
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

/// `pg_current_wal_insert_lsn()`, as a number: every transaction committed so far ends before
/// it. (Not `pg_current_wal_lsn()`, the write position: with `synchronous_commit = off`, as the
/// test clusters run, a commit returns before its record is written, so that can be behind it.)
pub async fn wal_lsn(pg: &tokio_postgres::Client) -> i64 {
    lsn(
        pg,
        "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint",
        &[],
    )
    .await
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

/// Waits until `/readyz` answers `status` on every one of `addrs` (`what`).
pub async fn readyz_on_all(addrs: &[SocketAddr], status: u16, what: &str) {
    for addr in addrs {
        wait_until_async(what, T, || async { readyz(*addr).await == status }).await;
    }
}

/// Reads a resume's replay up to its `recovered` frame: the events, then that frame.
pub async fn replay(relay: &Relay, token: &str, since: &str) -> (Vec<Value>, Value) {
    let (mut ws, _) = connect(relay, token, &format!("&since={since}")).await;
    let mut events = Vec::new();
    loop {
        let frame = ws.next_json(T).await.expect("a frame before recovered");
        if frame["type"] == "recovered" {
            return (events, frame);
        }
        events.push(frame);
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

    /// Waits until node `node`'s first client receives a row committed after now (`what`).
    pub async fn get_rows_after_now(&self, node: usize, pg: &tokio_postgres::Client, what: &str) {
        let after = last_seq(pg).await;
        wait_until(what, T, || {
            self.on(node)
                .record()
                .seqs
                .last()
                .is_some_and(|s| *s > after)
        })
        .await;
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
