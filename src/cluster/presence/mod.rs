//! Cluster-wide presence (issue 16; docs/ARCHITECTURE.md, "Presence and admin actions across
//! nodes"): every node writes its users' socket counts to a JetStream key-value bucket and
//! reads the other nodes' back into its [`Registry`].
//!
//! - **Bucket.** `<cluster.stream>_PRESENCE` ([`bucket`]): history 1, memory storage,
//!   `cluster.replicas`, entries older than [`MAX_AGE`] dropped; created when missing, never
//!   changed.
//! - **Keys.** `u.<user>.<node>` = this node's [`Counts`] of the user as JSON (deleted when the
//!   user has no socket left here); `n.<node>` = the node's heartbeat, put every third of
//!   `presence.node_timeout`.
//! - **Writing** (`Writer`). Every [`TICK`] the users whose local counts changed
//!   ([`Registry::take_dirty`]) are written, one put or delete per user whatever the churn, up
//!   to [`IN_FLIGHT`] at a time. After a reconnect (keys may be gone: memory storage) every key
//!   of this node is put again, then the heartbeat; keys are put again before they age out.
//! - **Reading** (`watcher`). A watch of the whole bucket from its current values on feeds
//!   [`Registry::apply_remote`] with the other nodes' keys. A node whose heartbeat has not been
//!   seen (local receipt time) for `presence.node_timeout` is dropped
//!   ([`Registry::drop_node`]) and its keys removed, so nodes that start later never see them.
//!   A deleted heartbeat drops its node at once: what a graceful stop ([`leave`]) ends with.
//! - **Repair.** A node that finds its own heartbeat deleted (another node took it for gone)
//!   or the bucket re-created puts all its keys again. After a re-watch, a user of another
//!   node that nothing confirms within `presence.node_timeout` leaves presence (its delete was
//!   lost with the bucket's memory while this node was not watching).

mod watcher;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv::Store;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::config::Config;
use crate::presence::{Counts, Registry};
use watcher::Watcher;

/// How often changed users are written.
pub const TICK: Duration = Duration::from_millis(100);
/// Entries older than this leave the bucket (delete markers of users gone offline included);
/// a node puts its keys again after a third of it.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// Puts and deletes awaiting their acknowledgement at once.
pub const IN_FLIGHT: usize = 256;
/// How often the writer looks for keys to put again before they age out.
const REFRESH_SCAN: Duration = Duration::from_secs(10);
/// The longest a graceful stop waits to remove this node's keys.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The bucket of `cluster.stream` `stream`: `<stream>_PRESENCE`, a character a bucket name
/// may not hold (anything but `[A-Za-z0-9_-]`) replaced by `_`.
pub fn bucket_name(stream: &str) -> String {
    let name: String = stream
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    format!("{name}_PRESENCE")
}

/// The presence bucket: its name and the JetStream stream under it.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// [`bucket_name`].
    pub name: String,
    /// `KV_<name>`, as a key-value bucket's stream is configured.
    pub stream: stream::Config,
}

/// The presence bucket for `config`: [`bucket_name`], history 1, memory storage (presence is
/// rebuilt by the nodes after any loss, and a churn of puts never touches a disk), `max_age`
/// [`MAX_AGE`], `cluster.replicas`.
///
/// The stream is created directly, as the client's `create_key_value` would (subjects
/// `$KV.<name>.>`, rollups allowed, deletes denied, direct gets, discard new): that call asks
/// for the account's information first, which the client cannot read from a 2.9 server.
pub fn bucket(config: &Config) -> Bucket {
    let name = bucket_name(&config.cluster.stream);
    let stream = stream::Config {
        name: format!("KV_{name}"),
        description: Some("engagement-relay presence (docs/ARCHITECTURE.md, Cluster mode)".into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: MAX_AGE,
        max_bytes: -1,
        max_message_size: -1,
        storage: StorageType::Memory,
        num_replicas: config.cluster.replicas.get(),
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    Bucket { name, stream }
}

/// Key of node `node`'s counts of `user`: `u.<user>.<node>`.
pub fn user_key(user: Uuid, node: &str) -> String {
    format!("u.{user}.{node}")
}

/// Key of node `node`'s heartbeat: `n.<node>`.
pub fn node_key(node: &str) -> String {
    format!("n.{node}")
}

/// A presence key, read back.
#[derive(Debug, PartialEq, Eq)]
enum Key<'a> {
    /// `u.<user>.<node>`.
    User(Uuid, &'a str),
    /// `n.<node>`.
    Node(&'a str),
}

fn parse_key(key: &str) -> Option<Key<'_>> {
    let mut tokens = key.split('.');
    let key = match (tokens.next()?, tokens.next()?, tokens.next()) {
        ("n", node, None) => Key::Node(node),
        ("u", user, Some(node)) => Key::User(user.parse().ok()?, node),
        _ => return None,
    };
    (tokens.next().is_none()).then_some(key)
}

/// What presence works with.
pub struct PresenceContext {
    /// The node's NATS connection.
    pub client: Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// The registry whose local counts are written and into which other nodes' are read.
    pub registry: Arc<Registry>,
    /// [`bucket`].
    pub bucket: Bucket,
    /// `presence.node_timeout`.
    pub node_timeout: Duration,
}

/// Spawns the writer and the watcher on `tasks` (the relay waits for them before it stops);
/// both run until `stop`, then the writer removes this node's keys ([`leave`]).
pub fn start(ctx: PresenceContext, tasks: &TaskTracker, stop: CancellationToken) {
    let repair = Arc::new(AtomicBool::new(false));
    let writer = Writer {
        client: ctx.client.clone(),
        js: ctx.js.clone(),
        registry: ctx.registry.clone(),
        bucket: ctx.bucket.clone(),
        heartbeat_every: ctx.node_timeout / 3,
        owned: HashMap::new(),
        pending: HashSet::new(),
        repair: repair.clone(),
        failing: false,
    };
    let watcher = Watcher::new(
        ctx.client,
        ctx.js,
        ctx.registry,
        ctx.bucket,
        ctx.node_timeout,
        repair,
    );
    tasks.spawn(writer.run(stop.clone()));
    tasks.spawn(watcher.run(stop));
}

/// Binds the bucket, creating it when missing; says whether it was created.
async fn bind(js: &jetstream::Context, bucket: &Bucket) -> Result<(Store, bool), String> {
    if let Ok(store) = js.get_key_value(&bucket.name).await {
        return Ok((store, false));
    }
    let failed = |e: &dyn std::fmt::Display| format!("presence bucket {}: {e}", bucket.name);
    let created = match js.create_stream(bucket.stream.clone()).await {
        Ok(_) => {
            info!(bucket = bucket.name, "presence bucket created");
            true
        }
        // Another node may have created it meanwhile.
        Err(e) if js.get_stream(&bucket.stream.name).await.is_ok() => {
            debug!(
                bucket = bucket.name,
                "presence bucket created elsewhere: {e}"
            );
            false
        }
        Err(e) => return Err(failed(&e)),
    };
    let store = js
        .get_key_value(&bucket.name)
        .await
        .map_err(|e| failed(&e))?;
    Ok((store, created))
}

fn connects(client: &Client) -> u64 {
    client.statistics().connects.load(Ordering::Relaxed)
}

fn connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// This node's side: its keys, kept equal to its registry's local counts.
struct Writer {
    client: Client,
    js: jetstream::Context,
    registry: Arc<Registry>,
    bucket: Bucket,
    heartbeat_every: Duration,
    /// Users whose key may be in the bucket, and when it was last put.
    owned: HashMap<Uuid, Instant>,
    /// Users whose key is to be written (their counts changed, or a write failed).
    pending: HashSet<Uuid>,
    /// Set by the watcher: put every key again.
    repair: Arc<AtomicBool>,
    /// Writes are failing (logged once per streak).
    failing: bool,
}

impl Writer {
    async fn run(mut self, stop: CancellationToken) {
        let node = self.registry.node().to_string();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut store: Option<Store> = None;
        let mut seen_connects = 0;
        let mut beat_at: Option<Instant> = None;
        let mut scanned_at = Instant::now();
        // Every key is to be put again (at start, after a reconnect or a repair), until done.
        let mut resync = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.pending.extend(self.registry.take_dirty());
            if !connected(&self.client) {
                continue;
            }
            let now_connects = connects(&self.client);
            if now_connects != seen_connects {
                seen_connects = now_connects;
                resync = true;
            }
            resync |= self.repair.swap(false, Ordering::Relaxed);
            if store.is_none() || resync {
                match bind(&self.js, &self.bucket).await {
                    Ok((bound, created)) => {
                        store = Some(bound);
                        resync |= created;
                    }
                    Err(e) => {
                        self.failed(&e);
                        continue;
                    }
                }
            }
            let Some(bound) = store.as_ref() else {
                continue;
            };
            if resync {
                // Every key again, then the heartbeat (a node that sees the heartbeat has the
                // keys put before it).
                resync = false;
                self.pending.extend(self.owned.keys().copied());
                beat_at = None;
                debug!(
                    users = self.pending.len(),
                    "presence: putting this node's keys again"
                );
            }
            let mut ok = self.write(bound, &node).await;
            if ok && beat_at.is_none_or(|t| t.elapsed() >= self.heartbeat_every) {
                let beat = serde_json::json!({ "at": chrono::Utc::now() }).to_string();
                match bound.put(node_key(&node), Bytes::from(beat)).await {
                    Ok(_) => beat_at = Some(Instant::now()),
                    Err(e) => {
                        ok = false;
                        self.failed(&format!("heartbeat: {e}"));
                    }
                }
            }
            if !ok {
                // Bound again at the next tick: the bucket may be gone.
                store = None;
            } else if self.failing {
                self.failing = false;
                info!("presence is written to NATS again");
            }
            if scanned_at.elapsed() >= REFRESH_SCAN {
                scanned_at = Instant::now();
                let refresh = MAX_AGE / 3;
                let old = self.owned.iter().filter(|(_, at)| at.elapsed() >= refresh);
                self.pending.extend(old.map(|(user, _)| *user));
            }
        }
        // Disconnected, the keys could not be removed: the other nodes drop them after
        // presence.node_timeout.
        if let Some(store) = store.filter(|_| connected(&self.client)) {
            match tokio::time::timeout(LEAVE_TIMEOUT, leave(&store, &node)).await {
                Ok(Ok(())) => info!("presence: this node's keys removed"),
                Ok(Err(e)) => warn!("presence: this node's keys could not be removed ({e}); the other nodes drop them after presence.node_timeout"),
                Err(_) => warn!("presence: removing this node's keys timed out; the other nodes drop them after presence.node_timeout"),
            }
        }
    }

    /// Writes the pending users' keys: a put of their local counts, or a delete when they
    /// have none left here. Returns false when any write failed (those stay pending).
    async fn write(&mut self, store: &Store, node: &str) -> bool {
        let registry = &self.registry;
        let owned = &self.owned;
        let ops: Vec<(Uuid, Option<Counts>)> = self
            .pending
            .drain()
            .filter_map(|user| match registry.local_counts(user) {
                Some(counts) => Some((user, Some(counts))),
                None => owned.contains_key(&user).then_some((user, None)),
            })
            .collect();
        if ops.is_empty() {
            return true;
        }
        let results: Vec<(Uuid, bool, Result<(), String>)> = futures_util::stream::iter(ops)
            .map(|(user, counts)| async move {
                let key = user_key(user, node);
                let result = match counts {
                    Some(counts) => {
                        let value = serde_json::to_vec(&counts).unwrap_or_default();
                        store
                            .put(key, value.into())
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                    None => store.delete(key).await.map_err(|e| e.to_string()),
                };
                (user, counts.is_some(), result)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut error = None;
        for (user, put, result) in results {
            // A failed put may have been stored all the same: the key counts as present.
            if put || result.is_err() {
                self.owned.insert(user, Instant::now());
            } else {
                self.owned.remove(&user);
            }
            if let Err(e) = result {
                self.pending.insert(user);
                error = Some(e);
            }
        }
        match error {
            Some(e) => {
                self.failed(&e);
                false
            }
            None => true,
        }
    }

    fn failed(&mut self, error: &str) {
        if !self.failing {
            self.failing = true;
            warn!("presence could not be written to NATS ({error}); retrying");
        }
    }
}

/// Removes node `node`'s keys from `store`: its users' (a purge, which watchers do not see),
/// then its heartbeat (a delete, on which every watcher drops the node at once).
///
/// Errors: JetStream refused or did not answer.
pub async fn leave(store: &Store, node: &str) -> Result<(), async_nats::Error> {
    store
        .stream
        .purge()
        .filter(format!("{}{}", store.prefix, user_key_filter(node)))
        .await?;
    store.delete(node_key(node)).await?;
    Ok(())
}

/// Every user key of node `node`: `u.*.<node>`.
fn user_key_filter(node: &str) -> String {
    format!("u.*.{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_fit_the_kv_key_alphabet() {
        let user = Uuid::new_v4();
        let key = user_key(user, "0a1b2c3d");
        assert_eq!(parse_key(&key), Some(Key::User(user, "0a1b2c3d")));
        assert_eq!(
            parse_key(&node_key("0a1b2c3d")),
            Some(Key::Node("0a1b2c3d"))
        );
        let alphabet = |c: char| c.is_ascii_alphanumeric() || "-/_=.".contains(c);
        assert!(key.chars().all(alphabet), "{key}");
        for bad in ["u.x.n", "u.", "n", "n.a.b", "x.y", "", "u.{user}.n.extra"] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
        let extra = format!("u.{user}.n.extra");
        assert_eq!(parse_key(&extra), None);
        assert_eq!(user_key_filter("n1"), "u.*.n1");
    }

    #[test]
    fn the_bucket_is_named_after_the_stream_in_the_bucket_alphabet() {
        assert_eq!(bucket_name("ENGAGEMENT_RELAY"), "ENGAGEMENT_RELAY_PRESENCE");
        assert_eq!(bucket_name("a$b:c-d"), "a_b_c-d_PRESENCE");
        let bucket = bucket(&Config::default());
        assert_eq!(bucket.name, "ENGAGEMENT_RELAY_PRESENCE");
        assert_eq!(bucket.stream.name, "KV_ENGAGEMENT_RELAY_PRESENCE");
        assert_eq!(bucket.stream.subjects, ["$KV.ENGAGEMENT_RELAY_PRESENCE.>"]);
        assert_eq!(bucket.stream.max_messages_per_subject, 1);
        assert_eq!(bucket.stream.storage, StorageType::Memory);
        assert_eq!(bucket.stream.num_replicas, 1);
        assert_eq!(bucket.stream.max_age, MAX_AGE);
    }
}
