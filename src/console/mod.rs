//! The operator's console (issue 16; docs/OPERATIONS.md, "Operator's console"): disconnects,
//! token revocations and the audit log, and the background work that keeps presence and
//! revocations in the database.
//!
//! An admin action is applied on this node at once ([`Console::apply`]), told to the other
//! nodes in cluster mode ([`Peers`]), logged, counted in `relay_admin_actions_total` and
//! written to `relay.audit_log`. Revocations are stored in `relay.revocations` first: every
//! node loads them at start and polls them every [`REVOCATION_POLL`], so one survives
//! restarts and reaches a node that missed the announcement.

pub mod store;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use metrics::{counter, gauge};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::auth::revocations::{Revocation, Revocations};
use crate::metrics as m;
use crate::presence::Registry;
use crate::session::{kick_disconnected, kick_revoked};

pub use store::StoreError;

/// How often `relay.revocations` is read again (and `last_seen` flushed every second).
pub const REVOCATION_POLL: Duration = Duration::from_secs(5);
/// How often old `last_seen` rows and expired revocations are deleted.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);

/// An admin action, as applied on every node (and sent between nodes as JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Close every session of `user_id` (4004).
    Disconnect {
        /// The user.
        user_id: Uuid,
    },
    /// Refuse `user_id`'s tokens issued before `issued_before_us` and close their sessions
    /// (4001).
    Revoke {
        /// The user.
        user_id: Uuid,
        /// µs since the Unix epoch.
        issued_before_us: i64,
        /// µs since the Unix epoch.
        expires_at_us: i64,
    },
}

/// Tells the other nodes of an action (cluster mode); implemented by the cluster's control
/// subject.
pub trait Peers: Send + Sync {
    /// Sends `action` to every other node; best effort (a node that misses a revocation
    /// still reads it from the database within [`REVOCATION_POLL`]).
    fn announce(&self, action: Action);
}

/// Who acted: the service token's `sub` and `kid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// The token's `sub` claim.
    pub sub: Option<String>,
    /// The token's header `kid`.
    pub kid: Option<String>,
}

/// What an action did on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Sessions on this node asked to close.
    pub closed: usize,
}

/// The console: the registry, the revocations, the database, the other nodes.
pub struct Console {
    registry: Arc<Registry>,
    revocations: Arc<Revocations>,
    pool: Pool,
    /// `auth.max_token_lifetime`.
    max_token_lifetime: Duration,
    /// `presence.retention`.
    retention: Duration,
    peers: std::sync::OnceLock<Arc<dyn Peers>>,
}

impl Console {
    /// A console over `registry` and `revocations`, storing on `pool`.
    pub fn new(
        registry: Arc<Registry>,
        revocations: Arc<Revocations>,
        pool: Pool,
        max_token_lifetime: Duration,
        retention: Duration,
    ) -> Arc<Console> {
        Arc::new(Console {
            registry,
            revocations,
            pool,
            max_token_lifetime,
            retention,
            peers: std::sync::OnceLock::new(),
        })
    }

    /// Cluster mode: where actions are announced (set once, at start).
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.peers.set(peers);
    }

    /// The registry of sessions and presence.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The API's pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Applies `action` on this node: closes the user's sessions here and, for a revocation,
    /// refuses their older tokens from now on.
    pub fn apply(&self, action: Action) -> Applied {
        let closed = match action {
            Action::Disconnect { user_id } => {
                let n = self.registry.disconnect(user_id, &kick_disconnected());
                counter!(m::SESSIONS_KICKED, "reason" => "disconnect").increment(n as u64);
                n
            }
            Action::Revoke {
                user_id,
                issued_before_us,
                expires_at_us,
            } => {
                self.revocations.insert(
                    user_id,
                    Revocation {
                        issued_before_us,
                        expires_at_us,
                    },
                );
                gauge!(m::REVOCATIONS).set(self.revocations.len() as f64);
                self.close_revoked(user_id)
            }
        };
        Applied { closed }
    }

    /// Closes `user`'s sessions on this node with 4001 `token_revoked`; returns how many.
    fn close_revoked(&self, user: Uuid) -> usize {
        let n = self.registry.disconnect(user, &kick_revoked());
        counter!(m::SESSIONS_KICKED, "reason" => "revoked").increment(n as u64);
        n
    }

    fn announce(&self, action: Action) {
        if let Some(peers) = self.peers.get() {
            peers.announce(action);
        }
    }

    /// `POST /v1/admin/users/{id}/disconnect`: closes every session of `user` on every node
    /// (4004) and audits it; returns the sessions closed on this node and the audit row's id.
    ///
    /// Errors: the audit row could not be written (the sessions are closed anyway).
    pub async fn disconnect(
        &self,
        actor: &Actor,
        user: Uuid,
    ) -> Result<(Applied, i64), StoreError> {
        let action = Action::Disconnect { user_id: user };
        let applied = self.apply(action);
        self.announce(action);
        let detail = json!({ "closed_on_node": applied.closed });
        let id = self.audit(actor, "disconnect", user, detail).await?;
        Ok((applied, id))
    }

    /// `POST /v1/admin/revocations`: stores the revocation (a later `issued_before` wins),
    /// applies it on every node and audits it; returns what is in force, what it did here and
    /// the audit row's id.
    ///
    /// Errors: the database refused (nothing was applied, nothing audited).
    pub async fn revoke(
        &self,
        actor: &Actor,
        user: Uuid,
        issued_before: DateTime<Utc>,
    ) -> Result<(Revocation, Applied, i64), StoreError> {
        let lifetime =
            chrono::Duration::from_std(self.max_token_lifetime).unwrap_or(chrono::Duration::MAX);
        let expires_at = issued_before
            .checked_add_signed(lifetime)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let stored = store::revoke(
            &self.pool,
            user,
            issued_before,
            expires_at,
            actor.sub.as_deref(),
        )
        .await
        .inspect_err(|_| {
            counter!(m::ADMIN_ACTIONS, "action" => "revoke", "outcome" => "error").increment(1);
        })?;
        let action = Action::Revoke {
            user_id: user,
            issued_before_us: stored.issued_before_us,
            expires_at_us: stored.expires_at_us,
        };
        let applied = self.apply(action);
        self.announce(action);
        let detail = json!({
            "issued_before": issued_before,
            "in_force_issued_before": DateTime::from_timestamp_micros(stored.issued_before_us),
            "expires_at": DateTime::from_timestamp_micros(stored.expires_at_us),
            "closed_on_node": applied.closed,
        });
        let id = self.audit(actor, "revoke", user, detail).await?;
        Ok((stored, applied, id))
    }

    /// Logs, counts and writes one admin action.
    async fn audit(
        &self,
        actor: &Actor,
        action: &'static str,
        user: Uuid,
        detail: serde_json::Value,
    ) -> Result<i64, StoreError> {
        info!(
            action,
            user_id = %user,
            actor_sub = actor.sub.as_deref().unwrap_or(""),
            actor_kid = actor.kid.as_deref().unwrap_or(""),
            %detail,
            "admin action"
        );
        let entry = store::AuditEntry {
            actor_sub: actor.sub.as_deref(),
            actor_kid: actor.kid.as_deref(),
            action,
            target_user: user,
            detail,
            node: self.registry.node(),
        };
        let written = store::audit(&self.pool, &entry).await;
        let outcome = if written.is_ok() { "ok" } else { "error" };
        counter!(m::ADMIN_ACTIONS, "action" => action, "outcome" => outcome).increment(1);
        if let Err(e) = &written {
            warn!(action, user_id = %user, "the admin action could not be audited: {e}");
        }
        written
    }

    /// Reads `relay.revocations` into the set (and drops expired ones from it).
    ///
    /// Errors: the database could not be read.
    pub async fn load_revocations(&self) -> Result<usize, StoreError> {
        let rows = store::revocations(&self.pool).await?;
        for (user, revocation) in &rows {
            if self.revocations.insert(*user, *revocation) {
                // Learned here rather than from an announcement: close what is still open.
                self.close_revoked(*user);
            }
        }
        self.revocations.expire(crate::model::now_unix_us());
        gauge!(m::REVOCATIONS).set(self.revocations.len() as f64);
        Ok(rows.len())
    }

    /// Until `stop`: flushes `last_seen` every second, reads revocations every
    /// [`REVOCATION_POLL`], deletes old rows every hour. Database errors are logged once per
    /// outage and retried.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_poll = tokio::time::Instant::now();
        let mut last_expire: Option<tokio::time::Instant> = None;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let (users, _) = self.registry.online_totals();
            gauge!(m::PRESENCE_ONLINE_USERS).set(users as f64);
            let mut result = self.flush_last_seen().await;
            if last_poll.elapsed() >= REVOCATION_POLL {
                last_poll = tokio::time::Instant::now();
                result = result.and(self.load_revocations().await.map(|_| ()));
            }
            if last_expire.is_none_or(|t| t.elapsed() >= EXPIRE_EVERY) {
                last_expire = Some(tokio::time::Instant::now());
                result = result.and(
                    store::expire(&self.pool, self.retention.as_secs_f64())
                        .await
                        .map(|_| ()),
                );
            }
            match result {
                Err(e) if !failing => {
                    failing = true;
                    warn!("presence and revocations could not be synchronised with the database ({e}); retrying");
                }
                Ok(()) if failing => {
                    failing = false;
                    info!("presence and revocations are synchronised with the database again");
                }
                _ => {}
            }
        }
        // What closed last is written before the relay stops (best effort).
        let _ = self.flush_last_seen().await;
    }

    /// Writes the `last_seen` of users who went offline; on failure they are kept for the
    /// next try.
    async fn flush_last_seen(&self) -> Result<(), StoreError> {
        let seen = self.registry.take_last_seen();
        if let Err(e) = store::last_seen(&self.pool, &seen).await {
            self.registry.requeue_last_seen(seen);
            return Err(e);
        }
        Ok(())
    }
}
