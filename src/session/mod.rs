//! WebSocket sessions: one engine ([`engine`]) drives every socket, and each protocol plugs in
//! as an implementation of [`engine::Protocol`]:
//!
//! - [`native`]: `/v1/events`, one subscription per socket, optional resume with `since`;
//! - [`realtime`]: `/realtime/v1/websocket`, Supabase Realtime–compatible Phoenix channels,
//!   one subscription per joined channel.
//!
//! The engine owns what both must do alike: shutdown (deliver what is queued, then 1001),
//! overflow (4008), restart (1012), token expiry, the client-frame size limit (1009), the
//! close handshake, pings and the idle timeout, and batched writes (one flush per wake-up).
//!
//! Close codes (README "Close codes"): 1000 normal (also the echo of a client's close), 1001
//! server shutting down, 1007 a text frame that is not UTF-8, 1008 malformed client frame, bad `since` cursor or (Realtime) no channel joined within `limits.join_timeout`, 1009 client frame
//! over `limits.max_client_frame_bytes`, 1012 the stream restarted, 4001 token expired,
//! invalid or revoked, 4003 refresh changed identity, 4004 disconnected by an operator,
//! 4008 slow consumer.

pub mod engine;
pub mod native;
pub mod protocol;
pub mod realtime;
pub mod subscriptions;

pub use native::run_native;

use std::sync::Arc;

use crate::auth::{AuthError, Principal, Verifier};
use crate::config::LimitsConfig;
use crate::presence::{Kick, Registry, SessionInfo};
use crate::router::Router;
use crate::tables::Tables;
use tokio_util::sync::CancellationToken;

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code (RFC 6455 §7.4.1): a text frame that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code: a malformed client frame (or a bad `since` cursor, or a Realtime socket that
/// joined no channel within `limits.join_timeout`).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code (RFC 6455 §7.4.1): a client frame larger than `limits.max_client_frame_bytes`.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code (RFC 6455 registry: Service Restart): the replay window started over (the
/// database was restored, or the slot moved on without this relay); reconnect with `since`.
pub const CLOSE_RESTART: u16 = 1012;
/// Close code: the token expired or a refresh was invalid.
pub const CLOSE_TOKEN: u16 = 4001;
/// Close code: a refreshed token changed `sub` or role.
pub const CLOSE_IDENTITY: u16 = 4003;
/// Close code: an operator disconnected the user (`POST /v1/admin/users/{id}/disconnect`).
/// Clients must not reconnect at once: wait for a user action, or at least a minute.
pub const CLOSE_DISCONNECTED: u16 = 4004;
/// Close code: the session's queue filled up.
pub const CLOSE_SLOW: u16 = 4008;

/// What a session needs besides its socket.
pub struct SessionContext {
    /// The router the session is subscribed to.
    pub router: Arc<Router>,
    /// The streamed tables and their columns (Supabase bindings name them).
    pub tables: Arc<Tables>,
    /// Validates refreshed tokens.
    pub verifier: Arc<Verifier>,
    /// Ping interval, idle timeout, queue size.
    pub limits: LimitsConfig,
    /// Cancelled when the relay shuts down.
    pub shutdown: CancellationToken,
    /// Cancelled when the replay window starts over ([`Router::restart_signal`]).
    pub restart: CancellationToken,
    /// Cluster node: resumes older than the in-memory window are answered from the stream.
    pub archive: Option<Arc<crate::cluster::Archive>>,
    /// The registry of open sessions and presence.
    pub registry: Arc<Registry>,
    /// This socket's registry record (delivery counters, subscriptions, the kick switch).
    pub info: Arc<SessionInfo>,
}

/// Takes a value out of its box, freeing the box at once.
///
/// A session's async fns take their arguments in one box: an async fn keeps each argument for
/// its whole life beside whatever the argument was moved into (a generator never reuses its
/// arguments' space), so a socket and a context passed one by one would be held twice in every
/// idle socket's future. Unboxed through this call, the box is freed before the first await
/// rather than at the end of the session (issue 17).
#[allow(clippy::boxed_local)] // The box is the point: it is freed here, not at the caller's end.
pub(crate) fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// 4004 with `disconnected`: an operator closed the user's sessions; reconnecting at once
/// would be refused by nothing, so clients should wait for a user action.
pub fn kick_disconnected() -> Kick {
    Kick {
        code: CLOSE_DISCONNECTED,
        reason: "disconnected by an operator; do not reconnect automatically".into(),
        error: "disconnected",
    }
}

/// 4001 with `token_revoked`: the user's tokens were revoked; a freshly issued token works.
pub fn kick_revoked() -> Kick {
    Kick {
        code: CLOSE_TOKEN,
        reason: "token revoked; sign in again for a new token".into(),
        error: "token_revoked",
    }
}

/// Why a session ended, as the close frame sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The close code (one of the `CLOSE_*` constants).
    pub code: u16,
    /// The reason, at most 123 bytes once sent (longer ones are cut).
    pub reason: String,
}

impl Close {
    /// A close with `code` and `reason`.
    pub fn new(code: u16, reason: impl Into<String>) -> Close {
        Close {
            code,
            reason: reason.into(),
        }
    }

    /// 1001: the relay is shutting down (sent after what was queued).
    pub fn going_away() -> Close {
        Close::new(CLOSE_GOING_AWAY, "server shutting down")
    }

    /// 4008: the session's queue filled up.
    pub fn slow() -> Close {
        Close::new(CLOSE_SLOW, "slow consumer: queue full")
    }

    /// 1012: the stream started over; the client must resume with `since`.
    pub fn restarted() -> Close {
        Close::new(CLOSE_RESTART, "the stream restarted; reconnect with since")
    }

    /// 1009 (RFC 6455 §7.4.1): a client frame over the size limit.
    pub fn too_big() -> Close {
        Close::new(CLOSE_TOO_BIG, "message too big")
    }
}

/// Why a token refresh was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// A valid token of another `sub` or role (including `anon`).
    #[error("a refreshed token must keep the same sub and role")]
    IdentityChanged,
    /// The token itself was refused.
    #[error(transparent)]
    Invalid(AuthError),
}

/// The one refresh rule of both protocols: a refresh may extend `principal`'s expiry and
/// change nothing else. On success `principal.expires_at` is the new token's `exp`.
///
/// Errors: [`RefreshError::IdentityChanged`] when `sub` or role differ (or the role is one the
/// relay refuses; counted in `relay_rls_denials_total{source="token_refresh"}`),
/// [`RefreshError::Invalid`] for a token that does not verify.
pub fn refresh(
    verifier: &Verifier,
    principal: &mut Principal,
    token: &str,
) -> Result<(), RefreshError> {
    match verifier.verify(token) {
        Ok(new) if new.user_id == principal.user_id && new.role == principal.role => {
            principal.expires_at = new.expires_at;
            Ok(())
        }
        Ok(_) | Err(AuthError::Forbidden(_)) => {
            // Another user's (or role's) token on this session: a cross-user attempt.
            metrics::counter!(crate::metrics::RLS_DENIALS, "source" => "token_refresh")
                .increment(1);
            Err(RefreshError::IdentityChanged)
        }
        Err(e) => Err(RefreshError::Invalid(e)),
    }
}
