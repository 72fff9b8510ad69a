//! The reading side of presence: a watch of the whole bucket feeding the other nodes' counts
//! into the registry, and the nodes that fell silent dropped (see the parent module).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, Operation, Store};
use async_nats::Client;
use futures_util::StreamExt;
use metrics::gauge;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{bind, connected, connects, leave, parse_key, Bucket, Key, LEAVE_TIMEOUT};
use crate::metrics as m;
use crate::presence::{Counts, Registry};

/// How often the watcher looks for silent nodes (and refreshes the nodes gauge).
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

/// Another node, as the watch has seen it.
#[derive(Debug)]
struct Peer {
    /// When its heartbeat was last received (or the node first seen, or the watch restarted).
    heard: Instant,
    /// A heartbeat of it has been received.
    beating: bool,
    /// Its users with counts, and whether the current watch has confirmed them.
    users: HashMap<Uuid, bool>,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            heard: Instant::now(),
            beating: false,
            users: HashMap::new(),
        }
    }
}

/// The reading side: the other nodes' keys into the registry, silent nodes out.
pub(super) struct Watcher {
    client: Client,
    js: jetstream::Context,
    registry: Arc<Registry>,
    bucket: Bucket,
    node_timeout: Duration,
    peers: HashMap<String, Peer>,
    /// When this node's own heartbeat was last seen in the watch (proof the watch is live).
    own_heard: Option<Instant>,
    /// After a re-watch: when users nothing confirmed leave presence.
    reconcile_at: Option<Instant>,
    repair: Arc<AtomicBool>,
    /// Watching fails (logged once per streak).
    failing: bool,
}

impl Watcher {
    /// A watcher of `bucket` for `registry`'s node; it sets `repair` when this node's keys
    /// must be put again.
    pub(super) fn new(
        client: Client,
        js: jetstream::Context,
        registry: Arc<Registry>,
        bucket: Bucket,
        node_timeout: Duration,
        repair: Arc<AtomicBool>,
    ) -> Watcher {
        Watcher {
            client,
            js,
            registry,
            bucket,
            node_timeout,
            peers: HashMap::new(),
            own_heard: None,
            reconcile_at: None,
            repair,
            failing: false,
        }
    }

    pub(super) async fn run(mut self, stop: CancellationToken) {
        loop {
            match self.watch(&stop).await {
                // Stopped, or reconnected: watched again at once.
                Ok(()) if stop.is_cancelled() => return,
                Ok(()) => continue,
                Err(e) => {
                    // Nothing is known about the other nodes meanwhile.
                    gauge!(m::CLUSTER_PRESENCE_NODES).set(0.0);
                    if !self.failing {
                        self.failing = true;
                        warn!("watching the presence bucket failed ({e}); retrying every second");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// One watch, from the bucket's current values, until `stop`, a reconnect (Ok) or a
    /// failure.
    async fn watch(&mut self, stop: &CancellationToken) -> Result<(), String> {
        let seen_connects = connects(&self.client);
        let (store, created) = bind(&self.js, &self.bucket).await?;
        if created {
            self.repair.store(true, Ordering::Relaxed);
        }
        let mut entries = store
            .watch_with_history(">")
            .await
            .map_err(|e| format!("watch: {e}"))?;
        self.restarted();
        let mut tick = tokio::time::interval(EXPIRE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    if connects(&self.client) != seen_connects {
                        // Watched again from the bucket's values: they may have been lost.
                        return Ok(());
                    }
                    self.expire(&store).await;
                    self.reconcile();
                    self.export();
                }
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => self.apply(&entry),
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the watch ended".into()),
                },
            }
        }
    }

    /// A watch (re)started: every node known gets a fresh `node_timeout`, every user known
    /// must be confirmed again within it.
    fn restarted(&mut self) {
        let now = Instant::now();
        for peer in self.peers.values_mut() {
            peer.heard = now;
            peer.users
                .values_mut()
                .for_each(|confirmed| *confirmed = false);
        }
        self.own_heard = Some(now);
        self.reconcile_at = Some(now + self.node_timeout);
        if self.failing {
            self.failing = false;
            info!("watching the presence bucket again");
        }
    }

    fn apply(&mut self, entry: &kv::Entry) {
        let own = self.registry.node();
        let gone = matches!(entry.operation, Operation::Delete | Operation::Purge);
        match parse_key(&entry.key) {
            Some(Key::Node(node)) if node == own => {
                if gone {
                    info!("presence: this node's heartbeat was deleted by another node; putting its keys again");
                    self.repair.store(true, Ordering::Relaxed);
                } else {
                    self.own_heard = Some(Instant::now());
                }
            }
            Some(Key::Node(node)) if gone => {
                if self.peers.remove(node).is_some() {
                    let users = self.registry.drop_node(node);
                    info!(node, users, "presence: node left");
                }
            }
            Some(Key::Node(node)) => {
                let peer = self.peers.entry(node.to_string()).or_insert_with(Peer::new);
                peer.heard = Instant::now();
                peer.beating = true;
            }
            Some(Key::User(_, node)) if node == own => {}
            Some(Key::User(user, node)) if gone => {
                self.registry.apply_remote(node, user, None);
                if let Some(peer) = self.peers.get_mut(node) {
                    peer.users.remove(&user);
                }
            }
            Some(Key::User(user, node)) => match serde_json::from_slice::<Counts>(&entry.value) {
                Ok(counts) => {
                    self.registry.apply_remote(node, user, Some(counts));
                    let peer = self.peers.entry(node.to_string()).or_insert_with(Peer::new);
                    peer.users.insert(user, true);
                }
                Err(e) => warn!(key = entry.key, "presence: unreadable counts skipped: {e}"),
            },
            None => debug!(key = entry.key, "presence: unknown key skipped"),
        }
    }

    /// Drops the nodes silent for longer than `node_timeout` and removes their keys; only
    /// while this node's own heartbeats come back (else the watch, not the nodes, is silent).
    async fn expire(&mut self, store: &Store) {
        let live = |at: Option<Instant>| at.is_some_and(|t| t.elapsed() <= self.node_timeout);
        if !connected(&self.client) || !live(self.own_heard) {
            return;
        }
        let silent: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.heard.elapsed() > self.node_timeout)
            .map(|(node, _)| node.clone())
            .collect();
        for node in silent {
            self.peers.remove(&node);
            let users = self.registry.drop_node(&node);
            info!(
                node,
                users,
                timeout = ?self.node_timeout,
                "presence: node silent for longer than presence.node_timeout; its sessions leave presence"
            );
            match tokio::time::timeout(LEAVE_TIMEOUT, leave(store, &node)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(
                    node,
                    "presence: the silent node's keys could not be removed ({e})"
                ),
                Err(_) => warn!(node, "presence: removing the silent node's keys timed out"),
            }
        }
    }

    /// After a re-watch's grace: users nothing confirmed leave presence.
    fn reconcile(&mut self) {
        if self.reconcile_at.is_none_or(|at| Instant::now() < at) {
            return;
        }
        self.reconcile_at = None;
        for (node, peer) in &mut self.peers {
            peer.users.retain(|user, confirmed| {
                if !*confirmed {
                    self.registry.apply_remote(node, *user, None);
                }
                *confirmed
            });
        }
    }

    /// `relay_cluster_presence_nodes`: nodes, this one included, whose heartbeat was seen
    /// within `node_timeout`.
    fn export(&self) {
        let live = |at: Instant| at.elapsed() <= self.node_timeout;
        let others = self
            .peers
            .values()
            .filter(|p| p.beating && live(p.heard))
            .count();
        let own = usize::from(self.own_heard.is_some_and(live));
        gauge!(m::CLUSTER_PRESENCE_NODES).set((others + own) as f64);
    }
}
