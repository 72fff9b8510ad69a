//! Refusals under load: every connection, session, request or row the relay turns away to
//! protect itself or other users is counted (`relay_refused_total{reason}`) and logged at a
//! rate-limited level (one `warn` per reason at most every [`LOG_EVERY`], with the number
//! refused since), so an SRE sees an attack on the dashboard and in the log without the log
//! itself becoming the attack's amplifier.
//!
//! `reason` is one of the [`Reason`] values: a small, fixed set (never a user id), safe as a
//! Prometheus label.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::metrics as m;

/// At most one log line per reason this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why something was refused: the `reason` label of `relay_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A connection did not finish its request head within `server.header_timeout`.
    HeaderTimeout,
    /// A keep-alive HTTP connection stayed idle past `server.idle_timeout`.
    IdleTimeout,
    /// An HTTP request's body had not fully arrived `server.request_timeout` after its head (408).
    RequestTimeout,
    /// `server.max_pending` connections were already reading their request head.
    MaxPending,
    /// `accept` failed for lack of file descriptors (`EMFILE`/`ENFILE`); the loop backed off.
    Descriptors,
    /// Every `server.max_sessions` permit was held (HTTP 503 `too_many_sessions`).
    MaxSessions,
    /// A user already held `limits.max_sessions_per_user` sessions (HTTP 429).
    UserSessions,
    /// The service role already held `limits.max_service_sessions` sessions (HTTP 429).
    ServiceSessions,
    /// A Realtime socket joined no channel within `limits.join_timeout` (closed).
    JoinTimeout,
    /// An API request over `ingest.user_rate`/`key_rate`, or an ingest request while the
    /// `Retry-After` of its caller's last rows refusal runs (HTTP 429).
    Requests,
    /// Ingested rows over `ingest.user_rows_per_second`/`key_rows_per_second` (HTTP 429; counted
    /// by rows).
    Rows,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 11] = [
        Reason::HeaderTimeout,
        Reason::IdleTimeout,
        Reason::RequestTimeout,
        Reason::MaxPending,
        Reason::Descriptors,
        Reason::MaxSessions,
        Reason::UserSessions,
        Reason::ServiceSessions,
        Reason::JoinTimeout,
        Reason::Requests,
        Reason::Rows,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HeaderTimeout => "header_timeout",
            Reason::IdleTimeout => "idle_timeout",
            Reason::RequestTimeout => "request_timeout",
            Reason::MaxPending => "max_pending",
            Reason::Descriptors => "descriptors",
            Reason::MaxSessions => "max_sessions",
            Reason::UserSessions => "user_sessions",
            Reason::ServiceSessions => "service_sessions",
            Reason::JoinTimeout => "join_timeout",
            Reason::Requests => "requests",
            Reason::Rows => "rows",
        }
    }

    /// What the log line says.
    fn describe(self) -> &'static str {
        match self {
            Reason::HeaderTimeout => "connections closed: no request head within server.header_timeout",
            Reason::IdleTimeout => "keep-alive connections closed: idle past server.idle_timeout",
            Reason::RequestTimeout => "requests answered 408: body not complete within server.request_timeout",
            Reason::MaxPending => "connections closed: server.max_pending connections were still reading a request head",
            Reason::Descriptors => "accept failed: out of file descriptors (backing off)",
            Reason::MaxSessions => "upgrades refused (503): server.max_sessions sessions are open",
            Reason::UserSessions => "upgrades refused (429): a user holds limits.max_sessions_per_user sessions",
            Reason::ServiceSessions => "upgrades refused (429): the service role holds limits.max_service_sessions sessions",
            Reason::JoinTimeout => "Realtime sockets closed: no channel joined within limits.join_timeout",
            Reason::Requests => "API requests refused (429): over ingest.user_rate/key_rate, or within a rows refusal's Retry-After",
            Reason::Rows => "ingested rows refused (429): over ingest.user_rows_per_second/key_rows_per_second",
        }
    }
}

/// Per reason: refusals not yet logged, and when the last line was written.
struct LogState {
    pending: [AtomicU64; Reason::ALL.len()],
    last: Mutex<[Option<Instant>; Reason::ALL.len()]>,
}

static LOG: LogState = LogState {
    pending: [const { AtomicU64::new(0) }; Reason::ALL.len()],
    last: Mutex::new([None; Reason::ALL.len()]),
};

/// Exports `relay_refused_total` at 0 for every reason, so dashboards and alerts see the
/// series before the first refusal (the Prometheus practice of initialising label sets).
pub fn register() {
    for reason in Reason::ALL {
        metrics::counter!(m::REFUSED, "reason" => reason.as_str()).increment(0);
    }
}

/// Counts `n` refusals for `reason` and logs them, at most once per [`LOG_EVERY`] per reason.
pub fn count(reason: Reason, n: u64) {
    metrics::counter!(m::REFUSED, "reason" => reason.as_str()).increment(n);
    let i = reason as usize;
    LOG.pending[i].fetch_add(n, Ordering::Relaxed);
    let now = Instant::now();
    let mut last = LOG.last.lock().unwrap_or_else(|e| e.into_inner());
    if last[i].is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
        return;
    }
    last[i] = Some(now);
    drop(last);
    let refused = LOG.pending[i].swap(0, Ordering::Relaxed);
    warn!(
        reason = reason.as_str(),
        refused,
        "{} ({refused} since the last report)",
        reason.describe()
    );
}

/// Counts one refusal for `reason` ([`count`]).
pub fn one(reason: Reason) {
    count(reason, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_indexed_in_order() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
        let labels: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
