//! [`NatsCluster`]: several [`NatsServer`]s with JetStream, routed to each other in a full mesh.

use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{
    io_err, monitor, NatsError, NatsOptions, NatsServer, RouteOptions, POLL, PORT_ATTEMPTS,
    PORT_TAKEN, START_TIMEOUT,
};
use crate::net::free_port;

/// The `--cluster_name` of every [`NatsCluster`].
pub const CLUSTER_NAME: &str = "relay-test";
/// Most servers in one [`NatsCluster`] (each takes three ports and a process).
const MAX_SERVERS: usize = 16;

/// A private JetStream cluster on 127.0.0.1: servers `n1`…`nN` (indexes 0…N−1), each with its
/// own free client, monitoring and cluster ports and its own temp store dir, every one routed
/// to every other (`--routes`), `--cluster_name relay-test`.
///
/// Stop, kill or restart one member through [`NatsCluster::servers_mut`] or
/// [`NatsCluster::server_mut`]; [`NatsCluster::wait_ready`] waits until the running members
/// agree on a meta leader again. Stopping the meta leader hands leadership over within ~50 ms;
/// killing it leaves the others naming it until a Raft election, ~6 s later. Drop kills every member and removes their store dirs; it never
/// panics.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` servers (3 is typical: the smallest cluster that survives losing one) and
    /// waits (≤ 10 s to start, then ≤ 10 s more) until every one is healthy and all agree on a
    /// JetStream meta leader. Blocks for ~1–2 s.
    ///
    /// Errors: [`NatsError::InvalidOptions`] unless 1 ≤ `n` ≤ 16, [`NatsError::BinaryNotFound`],
    /// [`NatsError::Exited`] (a member exited; a port taken meanwhile is retried on fresh ports
    /// up to 5 times first), [`NatsError::Unhealthy`] (no meta leader in time),
    /// [`NatsError::Io`].
    pub fn start(n: usize) -> Result<NatsCluster, NatsError> {
        if !(1..=MAX_SERVERS).contains(&n) {
            let msg = format!("a cluster of {n} servers (1 to {MAX_SERVERS})");
            return Err(NatsError::InvalidOptions(msg));
        }
        let mut attempt = 1;
        loop {
            match NatsCluster::start_once(n) {
                Err(NatsError::Exited { log_tail, .. })
                    if attempt < PORT_ATTEMPTS && log_tail.contains(PORT_TAKEN) =>
                {
                    tracing::debug!("a cluster port got taken; retrying with others");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// One attempt: reserve 3 × `n` ports, release them all, spawn every member (so routes
    /// find their peers soon), then wait for each, then for a meta leader.
    fn start_once(n: usize) -> Result<NatsCluster, NatsError> {
        let mut guards = Vec::with_capacity(3 * n);
        for _ in 0..3 * n {
            guards.push(free_port().map_err(io_err("binding 127.0.0.1:0"))?);
        }
        let ports: Vec<u16> = guards.iter().map(|g| g.port()).collect();
        let route_ports: Vec<u16> = ports.chunks(3).map(|p| p[2]).collect();
        let mut servers = Vec::with_capacity(n);
        for (i, p) in ports.chunks(3).enumerate() {
            let opts = NatsOptions {
                port: Some(p[0]),
                monitor_port: Some(p[1]),
                name: Some(format!("n{}", i + 1)),
                cluster: Some(RouteOptions {
                    name: CLUSTER_NAME.into(),
                    port: p[2],
                    routes: route_ports.clone(),
                }),
                ..NatsOptions::default()
            };
            servers.push(NatsServer::prepare(opts)?);
        }
        drop(guards);
        let mut starts = Vec::with_capacity(n);
        for server in &mut servers {
            starts.push(server.spawn()?);
        }
        // Built now, so that a failure below drops (kills) every member.
        let mut cluster = NatsCluster { servers };
        for (server, from) in cluster.servers.iter_mut().zip(starts) {
            server.wait_started(from)?;
        }
        let leader = cluster.wait_ready(START_TIMEOUT)?;
        tracing::info!(urls = %cluster.urls(), %leader, "NATS cluster ready");
        Ok(cluster)
    }

    /// Waits up to `timeout` until every running member answers plain `/healthz` with 200
    /// (JetStream current, meta leader known) and all name the same meta leader in `/jsz`,
    /// itself a running member (right after the leader is killed the others still name it);
    /// returns that leader's server name (e.g. `"n2"`). Stopped or killed members are skipped.
    ///
    /// Errors: [`NatsError::Unhealthy`] with the last answer and the log of the first member
    /// not ready (also when no member runs).
    pub fn wait_ready(&self, timeout: Duration) -> Result<String, NatsError> {
        let deadline = Instant::now() + timeout;
        loop {
            let (last, culprit) = match self.readiness() {
                Ok(leader) => return Ok(leader),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                let log_tail = culprit.map(|s| s.log_tail(0)).unwrap_or_default();
                return Err(NatsError::Unhealthy {
                    what: format!("NATS cluster {}", self.urls()),
                    waited: timeout,
                    last,
                    log_tail,
                });
            }
            sleep(POLL);
        }
    }

    /// The agreed meta leader, or why not (and the first member not ready, if any).
    fn readiness(&self) -> Result<String, (String, Option<&NatsServer>)> {
        let mut agreed: Option<String> = None;
        for server in self.servers.iter().filter(|s| s.is_running()) {
            let not_ready = |why: String| (format!("{}: {why}", server.describe()), Some(server));
            match monitor::get(server.monitor_port(), "/healthz") {
                Ok((200, _)) => {}
                Ok((code, body)) => return Err(not_ready(format!("{code} {}", body.trim()))),
                Err(e) => return Err(not_ready(e.to_string())),
            }
            let leader = server
                .meta_leader()
                .ok_or_else(|| not_ready("no meta leader".into()))?;
            match &agreed {
                Some(other) if *other != leader => {
                    let why = format!("sees leader {leader}, another member {other}");
                    return Err(not_ready(why));
                }
                _ => agreed = Some(leader),
            }
        }
        let leader = agreed.ok_or_else(|| ("no member is running".to_string(), None))?;
        let running = |s: &&NatsServer| s.is_running() && s.name() == Some(leader.as_str());
        match self.servers.iter().find(running) {
            Some(_) => Ok(leader),
            None => Err((format!("meta leader {leader} is not running"), None)),
        }
    }

    /// The client URLs of every member, comma-separated
    /// (`nats://127.0.0.1:<p1>,nats://127.0.0.1:<p2>,…`), the form a NATS client (e.g.
    /// `async_nats::connect`) takes for a cluster.
    pub fn urls(&self) -> String {
        self.server_urls().join(",")
    }

    /// Every member's `nats://127.0.0.1:<port>`, in index order.
    pub fn server_urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// The members, `n1` at index 0.
    pub fn servers(&self) -> &[NatsServer] {
        &self.servers
    }

    /// The members, to stop, kill or restart one (`cluster.servers_mut()[1].kill()`).
    pub fn servers_mut(&mut self) -> &mut [NatsServer] {
        &mut self.servers
    }

    /// Member `index` (0-based), `None` past the end.
    pub fn server(&self, index: usize) -> Option<&NatsServer> {
        self.servers.get(index)
    }

    /// Member `index` (0-based), mutable; `None` past the end.
    pub fn server_mut(&mut self, index: usize) -> Option<&mut NatsServer> {
        self.servers.get_mut(index)
    }

    /// Number of members (running or not).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The meta leader's server name as the first running member sees it; `None` when no
    /// member runs or that one knows no leader (an election is under way).
    pub fn meta_leader(&self) -> Option<String> {
        let running = self.servers.iter().find(|s| s.is_running())?;
        running.meta_leader()
    }

    /// Index of the member that is the meta leader (see [`NatsCluster::meta_leader`]).
    pub fn meta_leader_index(&self) -> Option<usize> {
        let leader = self.meta_leader()?;
        self.servers
            .iter()
            .position(|s| s.name() == Some(leader.as_str()))
    }
}
