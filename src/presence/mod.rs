//! Presence and the registry of open sessions (issue 16; docs/ARCHITECTURE.md, "Presence"):
//! who is connected right now, on which endpoint, since when; each session's subscriptions and
//! delivery counters (`GET /v1/status/users/{id}`); and the switch that closes a session from
//! outside (disconnect and revocation).
//!
//! A WebSocket is registered when it opens ([`Registry::open`]) and counted under a user when it
//! acts for one ([`Registry::join`]): a native session at once, a Realtime socket at the first
//! channel it joins with that user's token. A user is online while at least one socket counts
//! under them, on this node or (cluster mode) on another node: other nodes' counts arrive
//! through [`Registry::apply_remote`]. When a user's first socket opens or last one closes,
//! a [`Change`] is broadcast (the `presence` frames of service-role sessions) and, on going
//! offline, the user's `last_seen` is queued for the database ([`Registry::take_last_seen`]).
//!
//! Locks: one user's entry (a DashMap shard) at a time; `service` and `last_seen` are leaves.

mod info;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::auth::{Principal, Role};

pub use info::{Kick, SessionInfo, SubscriptionInfo};

/// Presence changes a slow listener may fall behind by before it misses some (then its
/// session is closed as a slow consumer).
const CHANGES_CAPACITY: usize = 4096;

/// Which endpoint a socket came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `/v1/events`.
    Native,
    /// `/realtime/v1/websocket` (Supabase Realtime).
    Realtime,
}

impl Endpoint {
    fn index(self) -> usize {
        match self {
            Endpoint::Native => 0,
            Endpoint::Realtime => 1,
        }
    }
}

/// A user's sockets on one node, by endpoint, and since when the user has been online there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct Counts {
    /// Native sockets.
    pub native: u32,
    /// Realtime sockets (a socket counts once per user, whatever its channels).
    pub realtime: u32,
    /// When the first of them opened (UTC).
    pub online_since: DateTime<Utc>,
}

impl Counts {
    /// `native + realtime`.
    pub fn sessions(&self) -> u32 {
        self.native + self.realtime
    }
}

/// A user's presence, over every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    /// Sockets of the user, by endpoint, and the earliest `online_since`.
    pub counts: Counts,
}

/// A user came online (first socket) or went offline (last socket closed), cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The user.
    pub user_id: Uuid,
    /// Online after the change.
    pub online: bool,
    /// Sockets after the change (0 when offline).
    pub sessions: u32,
}

/// One user's entry: this node's sockets and the other nodes' counts.
#[derive(Debug, Default)]
struct Entry {
    local: Vec<Arc<SessionInfo>>,
    /// When the first local socket opened.
    local_since: Option<DateTime<Utc>>,
    /// Other nodes' counts, by node id.
    remote: HashMap<String, Counts>,
}

impl Entry {
    fn local_counts(&self) -> Option<Counts> {
        let since = self.local_since?;
        let mut counts = Counts {
            native: 0,
            realtime: 0,
            online_since: since,
        };
        for info in &self.local {
            match info.endpoint {
                Endpoint::Native => counts.native += 1,
                Endpoint::Realtime => counts.realtime += 1,
            }
        }
        Some(counts)
    }

    fn total(&self) -> Option<Counts> {
        let mut total = self.local_counts();
        for counts in self.remote.values() {
            total = Some(match total {
                None => *counts,
                Some(t) => Counts {
                    native: t.native + counts.native,
                    realtime: t.realtime + counts.realtime,
                    online_since: t.online_since.min(counts.online_since),
                },
            });
        }
        total.filter(|t| t.sessions() > 0)
    }

    fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.is_empty()
    }
}

/// The registry of open sessions and the presence view. Shared (`Arc`) by every session, the
/// HTTP API and (cluster mode) the presence exchange.
#[derive(Debug)]
pub struct Registry {
    /// This node's id (random per process; what other nodes key its counts by).
    node: String,
    users: DashMap<Uuid, Entry>,
    /// Service-role sockets (never present: presence is about users).
    service: Mutex<Vec<Arc<SessionInfo>>>,
    /// Open sockets by endpoint ([`Endpoint::index`]).
    open: [AtomicUsize; 2],
    changes: broadcast::Sender<Change>,
    /// Users whose last socket closed here, and when: written to `relay.presence`.
    last_seen: Mutex<HashMap<Uuid, DateTime<Utc>>>,
    /// Users whose local counts changed since the last [`Registry::take_dirty`] (cluster mode).
    dirty: Mutex<HashSet<Uuid>>,
    /// Set by the first [`Registry::take_dirty`]: until someone drains `dirty` (a single node
    /// never does), nothing is added to it.
    exchanged: AtomicBool,
    /// `presence.enabled`: when false, sockets are still registered (status, disconnect) but
    /// no user is counted as present.
    enabled: bool,
}

/// Now, to the microsecond (the precision every time the relay sends has).
fn now_us() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registered socket; dropping it unregisters the socket (give it the socket's lifetime).
#[derive(Debug)]
pub struct Opened {
    registry: Arc<Registry>,
    /// The socket's registry record.
    pub info: Arc<SessionInfo>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.registry.open[self.info.endpoint.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket counted under a user (or among the service role's); dropping it uncounts it.
#[derive(Debug)]
pub struct Joined {
    registry: Arc<Registry>,
    info: Arc<SessionInfo>,
    user: Option<Uuid>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        match self.user {
            Some(user) => self.registry.leave(user, &self.info),
            None => lock(&self.registry.service).retain(|s| !Arc::ptr_eq(s, &self.info)),
        }
    }
}

impl Registry {
    /// An empty registry for node `node`; `enabled` is `presence.enabled`.
    pub fn new(node: String, enabled: bool) -> Arc<Registry> {
        Arc::new(Registry {
            node,
            users: DashMap::new(),
            service: Mutex::new(Vec::new()),
            open: [AtomicUsize::new(0), AtomicUsize::new(0)],
            changes: broadcast::channel(CHANGES_CAPACITY).0,
            last_seen: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            exchanged: AtomicBool::new(false),
            enabled,
        })
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether users are counted (`presence.enabled`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Registers a socket that just opened on `endpoint`.
    pub fn open(self: &Arc<Self>, endpoint: Endpoint, session_id: String) -> Opened {
        self.open[endpoint.index()].fetch_add(1, Ordering::Relaxed);
        Opened {
            registry: self.clone(),
            info: Arc::new(SessionInfo::new(session_id, endpoint)),
        }
    }

    /// Counts socket `info` under `principal`: under its user for a user's token (the user
    /// comes online with their first socket), among the service role's otherwise. `info`'s
    /// principal is noted for disconnects.
    pub fn join(self: &Arc<Self>, info: &Arc<SessionInfo>, principal: &Principal) -> Joined {
        info.note_principal(principal);
        let user = match (principal.role, principal.user_id) {
            (Role::Authenticated, Some(user)) => Some(user),
            _ => None,
        };
        match user {
            Some(user) if self.enabled => {
                let change = {
                    let mut entry = self.users.entry(user).or_default();
                    let before = entry.total().is_some();
                    if entry.local.is_empty() {
                        entry.local_since = Some(now_us());
                    }
                    entry.local.push(info.clone());
                    let after = entry.total();
                    (!before).then(|| Change {
                        user_id: user,
                        online: true,
                        sessions: after.map_or(0, |t| t.sessions()),
                    })
                };
                self.mark_dirty(user);
                if let Some(change) = change {
                    let _ = self.changes.send(change);
                }
            }
            Some(user) => {
                self.users.entry(user).or_default().local.push(info.clone());
            }
            None => lock(&self.service).push(info.clone()),
        }
        Joined {
            registry: self.clone(),
            info: info.clone(),
            user,
        }
    }

    fn leave(&self, user: Uuid, info: &Arc<SessionInfo>) {
        let mut change = None;
        let mut went_offline_here = false;
        if let Some(mut entry) = self.users.get_mut(&user) {
            let before = entry.total().is_some();
            if let Some(at) = entry.local.iter().position(|s| Arc::ptr_eq(s, info)) {
                entry.local.swap_remove(at);
            }
            if entry.local.is_empty() {
                entry.local_since = None;
                went_offline_here = true;
            }
            let after = entry.total();
            if before && after.is_none() {
                change = Some(Change {
                    user_id: user,
                    online: false,
                    sessions: 0,
                });
            }
        }
        self.users.remove_if(&user, |_, e| e.is_empty());
        if !self.enabled {
            return;
        }
        self.mark_dirty(user);
        if went_offline_here {
            lock(&self.last_seen).insert(user, Utc::now());
        }
        if let Some(change) = change {
            let _ = self.changes.send(change);
        }
    }

    /// Sets node `node`'s counts of `user` (`None`: it has none left), from the cluster's
    /// presence exchange. Broadcasts a [`Change`] when the user's total goes from or to zero;
    /// returns it.
    pub fn apply_remote(&self, node: &str, user: Uuid, counts: Option<Counts>) -> Option<Change> {
        if node == self.node || !self.enabled {
            return None;
        }
        let change = {
            let mut entry = self.users.entry(user).or_default();
            let before = entry.total().is_some();
            match counts.filter(|c| c.sessions() > 0) {
                Some(c) => entry.remote.insert(node.to_string(), c),
                None => entry.remote.remove(node),
            };
            let after = entry.total();
            match (before, after) {
                (false, Some(t)) => Some(Change {
                    user_id: user,
                    online: true,
                    sessions: t.sessions(),
                }),
                (true, None) => Some(Change {
                    user_id: user,
                    online: false,
                    sessions: 0,
                }),
                _ => None,
            }
        };
        self.users.remove_if(&user, |_, e| e.is_empty());
        if let Some(change) = change {
            if !change.online {
                lock(&self.last_seen).insert(user, Utc::now());
            }
            let _ = self.changes.send(change);
        }
        change
    }

    /// Forgets every count of node `node` (it stopped or its heartbeat timed out); its users
    /// without sessions elsewhere go offline. Returns how many users it held.
    pub fn drop_node(&self, node: &str) -> usize {
        let users: Vec<Uuid> = self
            .users
            .iter()
            .filter(|e| e.remote.contains_key(node))
            .map(|e| *e.key())
            .collect();
        for user in &users {
            self.apply_remote(node, *user, None);
        }
        users.len()
    }

    /// This node's counts of `user` (`None`: no socket here).
    pub fn local_counts(&self, user: Uuid) -> Option<Counts> {
        self.users.get(&user).and_then(|e| e.local_counts())
    }

    /// Users whose local counts changed since the last call (cluster mode publishes them).
    /// Changes are tracked from the first call on.
    pub fn take_dirty(&self) -> Vec<Uuid> {
        self.exchanged.store(true, Ordering::Relaxed);
        lock(&self.dirty).drain().collect()
    }

    fn mark_dirty(&self, user: Uuid) {
        if self.exchanged.load(Ordering::Relaxed) {
            lock(&self.dirty).insert(user);
        }
    }

    /// Users whose last socket closed (here, or cluster-wide through another node's
    /// counts) since the last call, with the instant: `relay.presence.last_seen`.
    pub fn take_last_seen(&self) -> Vec<(Uuid, DateTime<Utc>)> {
        lock(&self.last_seen).drain().collect()
    }

    /// Puts back `last_seen` instants a failed write took (a newer one already queued wins).
    pub fn requeue_last_seen(&self, seen: Vec<(Uuid, DateTime<Utc>)>) {
        let mut queued = lock(&self.last_seen);
        for (user, at) in seen {
            let slot = queued.entry(user).or_insert(at);
            *slot = (*slot).max(at);
        }
    }

    /// `user`'s presence over every node (`None`: offline).
    pub fn get(&self, user: Uuid) -> Option<Presence> {
        if !self.enabled {
            return None;
        }
        let counts = self.users.get(&user)?.total()?;
        Some(Presence { counts })
    }

    /// Up to `limit` online users after `after`, by user id.
    pub fn online(&self, after: Option<Uuid>, limit: usize) -> Vec<(Uuid, Presence)> {
        if !self.enabled {
            return Vec::new();
        }
        let mut page: Vec<(Uuid, Presence)> = self
            .users
            .iter()
            .filter(|e| after.is_none_or(|a| *e.key() > a))
            .filter_map(|e| e.total().map(|counts| (*e.key(), Presence { counts })))
            .collect();
        page.sort_unstable_by_key(|(id, _)| *id);
        page.truncate(limit);
        page
    }

    /// (online users, their sockets) over every node.
    pub fn online_totals(&self) -> (usize, u64) {
        if !self.enabled {
            return (0, 0);
        }
        self.users
            .iter()
            .filter_map(|e| e.total())
            .fold((0, 0), |(u, s), t| (u + 1, s + u64::from(t.sessions())))
    }

    /// Open sockets on this node: (native, realtime).
    pub fn open_counts(&self) -> (usize, usize) {
        (
            self.open[0].load(Ordering::Relaxed),
            self.open[1].load(Ordering::Relaxed),
        )
    }

    /// This node's sockets acting for `user` (as the user, or a service-role token whose
    /// `sub` is the user).
    pub fn sessions_of(&self, user: Uuid) -> Vec<Arc<SessionInfo>> {
        let mut sessions: Vec<Arc<SessionInfo>> = self
            .users
            .get(&user)
            .map(|e| e.local.clone())
            .unwrap_or_default();
        sessions.extend(
            lock(&self.service)
                .iter()
                .filter(|s| s.sub() == Some(user))
                .cloned(),
        );
        sessions.sort_by(|a, b| a.id.cmp(&b.id));
        sessions.dedup_by(|a, b| Arc::ptr_eq(a, b));
        sessions
    }

    /// Closes every socket on this node acting for `user` with `kick`; returns how many.
    pub fn disconnect(&self, user: Uuid, kick: &Kick) -> usize {
        let sessions = self.sessions_of(user);
        sessions.iter().filter(|s| s.kick(kick.clone())).count()
    }

    /// Presence changes from now on.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests;
