//! Process limits for many sockets: the open-file limit, and how the relay divides it.
//!
//! Each WebSocket session and each HTTP connection holds one file descriptor. The relay takes
//! the hard `RLIMIT_NOFILE` its supervisor gives it (systemd's `LimitNOFILE=`, a container's
//! `ulimit`, `prlimit`) as the operator's word: it raises its soft limit up to that, and never
//! the hard limit itself, even as root. [`budget`] then splits the limit into sessions and a
//! reserve, so that health checks, metrics, the database and new connections still get a
//! descriptor while every session slot is taken.

/// Descriptors the reserve keeps besides pending connections and the API's pool: stdio, the
/// two listeners, the runtime's epoll and wake-up descriptors, the replication stream, the slot
/// watcher and start-up checks, the metrics port's pending connections
/// ([`METRICS_MAX_PENDING`]) and API requests in flight.
pub const FIXED_RESERVE: u64 = 128;

/// Connections of the metrics port that may be reading a request head at once (a Prometheus
/// server uses one).
pub const METRICS_MAX_PENDING: usize = 16;

/// Largest default `server.max_pending`.
pub const MAX_PENDING_DEFAULT: usize = 1024;

/// Raises the soft open-file limit to the hard limit and returns the new soft limit (the
/// current one if it cannot be raised).
///
/// The hard limit is left alone, even as root: it is the supervisor's decision (systemd
/// `LimitNOFILE=`), and raising it would make `server.max_sessions`' default ignore it.
pub fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or_else(|_| nofile_limit())
}

/// The current soft open-file limit; `u64::MAX` when unlimited or unknown.
pub fn nofile_limit() -> u64 {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) if soft != rlimit::INFINITY => soft,
        _ => u64::MAX,
    }
}

/// How the open-file limit is divided ([`budget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft open-file limit it was derived from (`u64::MAX`: unlimited).
    pub files: u64,
    /// Connections that may wait for a request head at once (`server.max_pending`).
    pub max_pending: usize,
    /// Descriptors kept out of the sessions' share: `max_pending` + the API pool +
    /// [`FIXED_RESERVE`].
    pub reserve: u64,
    /// Concurrent WebSocket sessions (`server.max_sessions`).
    pub max_sessions: usize,
    /// Whether `max_sessions` was configured (else derived from `files` − `reserve`).
    pub sessions_configured: bool,
    /// Whether `max_pending` was configured (else derived: `files` / 8, at most
    /// [`MAX_PENDING_DEFAULT`]).
    pub pending_configured: bool,
}

impl Budget {
    /// Sessions the descriptors allow beyond the reserve (at least 1).
    pub fn sessions_allowed(&self) -> usize {
        let allowed = self.files.saturating_sub(self.reserve).max(1);
        usize::try_from(allowed).unwrap_or(usize::MAX)
    }
}

/// Divides `files` descriptors: `max_pending` (configured, else `files` / 8 between 16 and
/// [`MAX_PENDING_DEFAULT`]), a reserve of `max_pending` + `pool_size` + [`FIXED_RESERVE`], and
/// `max_sessions` (configured, else what remains, at least 1). Explicit values always win, even
/// past what the descriptors allow (the relay warns about it at start).
pub fn budget(
    files: u64,
    max_sessions: Option<usize>,
    max_pending: Option<usize>,
    pool_size: usize,
) -> Budget {
    let derived_pending = usize::try_from(files / 8)
        .unwrap_or(usize::MAX)
        .clamp(16, MAX_PENDING_DEFAULT);
    let pending = max_pending.unwrap_or(derived_pending);
    let reserve = (pending as u64)
        .saturating_add(pool_size as u64)
        .saturating_add(FIXED_RESERVE);
    let mut budget = Budget {
        files,
        max_pending: pending,
        reserve,
        max_sessions: 0,
        sessions_configured: max_sessions.is_some(),
        pending_configured: max_pending.is_some(),
    };
    budget.max_sessions = max_sessions.unwrap_or_else(|| budget.sessions_allowed());
    budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_limit_keeps_a_reserve_for_pending_connections_the_pool_and_the_rest() {
        let b = budget(1024, None, None, 8);
        assert_eq!(b.max_pending, 128);
        assert_eq!(b.reserve, 128 + 8 + FIXED_RESERVE);
        assert_eq!(b.max_sessions, 1024 - 264);
        assert!(!b.sessions_configured && !b.pending_configured);
    }

    #[test]
    fn a_high_limit_caps_pending_at_the_default() {
        let b = budget(1 << 20, None, None, 8);
        assert_eq!(b.max_pending, MAX_PENDING_DEFAULT);
        assert_eq!(b.max_sessions as u64, (1 << 20) - 1024 - 8 - FIXED_RESERVE);
        // Unlimited descriptors: as many sessions as a usize holds.
        assert_eq!(
            budget(u64::MAX, None, None, 8).max_pending,
            MAX_PENDING_DEFAULT
        );
    }

    #[test]
    fn explicit_values_win_and_a_tiny_limit_still_allows_one_session() {
        let b = budget(1024, Some(5000), Some(10), 8);
        assert_eq!((b.max_sessions, b.max_pending), (5000, 10));
        assert!(b.sessions_configured && b.pending_configured);
        assert_eq!(b.sessions_allowed(), 1024 - 10 - 8 - 128);
        assert_eq!(budget(64, None, None, 8).max_sessions, 1);
        assert_eq!(budget(64, None, None, 8).max_pending, 16);
    }
}
