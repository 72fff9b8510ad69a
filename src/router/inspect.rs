//! What the operator's status API reads from the router (issue 16): the replay window's
//! size and age, and the depth of given subscriptions' queues.

use std::collections::HashMap;

use uuid::Uuid;

use super::{lock, Router};

/// The replay window now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowStats {
    /// Events held.
    pub events: usize,
    /// Their frames' bytes (what `replay.max_bytes` bounds).
    pub bytes: usize,
    /// Commit time of the oldest event held, µs since the Unix epoch (`None`: empty).
    pub oldest_commit_us: Option<i64>,
    /// Commit time of the newest event held, µs since the Unix epoch (`None`: empty).
    pub newest_commit_us: Option<i64>,
}

impl Router {
    /// The replay window's size and oldest commit time.
    pub fn window_stats(&self) -> WindowStats {
        let global = lock(&self.global);
        WindowStats {
            events: global.window.len(),
            bytes: global.window.bytes(),
            oldest_commit_us: global.window.oldest().map(|e| e.commit_time_us),
            newest_commit_us: global.window.newest().map(|e| e.commit_time_us),
        }
    }

    /// Commit → dispatch delay of the newest event dispatched, µs (0 before any).
    pub fn latest_lag_us(&self) -> i64 {
        lock(&self.positions).latest_lag_us
    }

    /// Events queued, not yet taken by their session, by subscription id
    /// ([`super::Ticket::id`]), for the subscriptions of `user` (`None`: the service role's).
    pub fn queue_depths(&self, user: Option<Uuid>) -> HashMap<u64, usize> {
        let depth = |h: &super::SessionHandle| (h.id, h.tx.max_capacity() - h.tx.capacity());
        match user {
            Some(user) => self
                .users
                .get(&user)
                .map(|e| e.sessions.iter().map(depth).collect())
                .unwrap_or_default(),
            None => lock(&self.global).service.iter().map(depth).collect(),
        }
    }
}
