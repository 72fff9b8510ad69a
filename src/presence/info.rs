//! One socket's registry record: what `GET /v1/status/users/{id}` reports about it, and the
//! switch that closes it from outside.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{lock, now_us, Endpoint};
use crate::auth::Principal;
use crate::model::Cursor;

/// Why a socket is closed from outside: the close code and reason its close frame carries,
/// and the `error` frame's code sent before it (native protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kick {
    /// WebSocket close code (docs/PROTOCOL.md "Close codes").
    pub code: u16,
    /// Close reason (at most 123 bytes once sent).
    pub reason: String,
    /// Machine-readable code of the `error` frame.
    pub error: &'static str,
}

/// One router subscription of a socket, as the status API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// The router ticket's id ([`crate::router::Ticket::id`]), for its queue depth.
    pub ticket: u64,
    /// Whose events it receives (`None`: the service role, every owner); where the router
    /// keeps its queue.
    pub owner: Option<Uuid>,
    /// Tables it is narrowed to (`schema.table`; `None`: every streamed table).
    pub tables: Option<Vec<String>>,
    /// Event types it is narrowed to (`None`: every type).
    pub event_types: Option<Vec<String>>,
    /// The Realtime channel's topic (`None` on the native endpoint).
    pub topic: Option<String>,
}

/// A socket's registry record; shared by the session task (which updates it) and the
/// registry (which reads it).
#[derive(Debug)]
pub struct SessionInfo {
    /// The session id (the native `ready` frame's `session_id`; a UUID).
    pub id: String,
    /// Which endpoint it came through.
    pub endpoint: Endpoint,
    /// When the socket opened.
    pub connected_at: DateTime<Utc>,
    /// The `sub` of the first token it acted for (a service-role token's too).
    sub: OnceLock<Uuid>,
    delivered: AtomicU64,
    last_cursor: Mutex<Option<Cursor>>,
    subscriptions: Mutex<Vec<SubscriptionInfo>>,
    kick: CancellationToken,
    kicked: OnceLock<Kick>,
}

impl SessionInfo {
    pub(super) fn new(id: String, endpoint: Endpoint) -> SessionInfo {
        SessionInfo {
            id,
            endpoint,
            connected_at: now_us(),
            sub: OnceLock::new(),
            delivered: AtomicU64::new(0),
            last_cursor: Mutex::new(None),
            subscriptions: Mutex::new(Vec::new()),
            kick: CancellationToken::new(),
            kicked: OnceLock::new(),
        }
    }

    pub(super) fn note_principal(&self, principal: &Principal) {
        if let Some(sub) = principal.user_id {
            let _ = self.sub.set(sub);
        }
    }

    /// The `sub` it acts for, if any.
    pub fn sub(&self) -> Option<Uuid> {
        self.sub.get().copied()
    }

    /// Counts `n` events written to the socket, the last at `cursor` (`None`: not known,
    /// e.g. replayed frames).
    pub fn record_delivered(&self, n: usize, cursor: Option<Cursor>) {
        if n == 0 {
            return;
        }
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(cursor) = cursor {
            *lock(&self.last_cursor) = Some(cursor);
        }
    }

    /// Events written to the socket so far (replayed ones included).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// The cursor of the last event written (`None` before any).
    pub fn last_cursor(&self) -> Option<Cursor> {
        *lock(&self.last_cursor)
    }

    /// Notes a new subscription.
    pub fn add_subscription(&self, sub: SubscriptionInfo) {
        lock(&self.subscriptions).push(sub);
    }

    /// Forgets the subscription of router ticket `ticket`.
    pub fn remove_subscription(&self, ticket: u64) {
        lock(&self.subscriptions).retain(|s| s.ticket != ticket);
    }

    /// The socket's subscriptions now.
    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        lock(&self.subscriptions).clone()
    }

    /// Asks the session to close with `kick`; false when it was already asked.
    pub fn kick(&self, kick: Kick) -> bool {
        let first = self.kicked.set(kick).is_ok();
        self.kick.cancel();
        first
    }

    /// Cancelled when the session is asked to close ([`SessionInfo::kicked`] says why).
    pub fn kick_signal(&self) -> CancellationToken {
        self.kick.clone()
    }

    /// Why the session was asked to close, once it was.
    pub fn kicked(&self) -> Option<&Kick> {
        self.kicked.get()
    }
}
