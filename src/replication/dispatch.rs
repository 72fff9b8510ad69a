//! The seam between the replication task and whatever receives its rows.
//!
//! The replication task owns the slot and decodes it; a [`Dispatch`] owns what happens to the
//! rows. Today that is the [`Router`](crate::router::Router) (WebSocket sessions and the
//! replay window); a message-broker destination plugs in here too. The replication task names
//! no concrete destination: `relay` wires one in ([`super::ReplicationContext::dispatch`]).
//!
//! Besides the rows, a destination tells the task how far PostgreSQL may be confirmed: the
//! task confirms nothing at or past [`Dispatch::oldest_lsn`] (a restarted relay must read it
//! again) and may confirm up to [`Dispatch::evicted_lsn`] (the destination no longer needs
//! what is before it), within the replay window's age rule ([`super::ack`]).

use std::sync::Arc;

use crate::model::Event;

/// Receives the decoded row changes of the stream, in commit order, and says what of the WAL
/// it still holds. Called from the replication task only: implementations must not block
/// (a slow receiver is the destination's to handle, e.g. the router's overflow policy).
pub trait Dispatch: Send + Sync {
    /// The stream (re)starts at `lsn` of WAL history `history` (a [`crate::model::history_id`]):
    /// every row after `Cursor::before(lsn, history)` follows. Called at the first connection
    /// and when the history changed (a restore or failover); what was held before is void.
    fn begin(&self, history: u32, lsn: u64);

    /// One row change of a streamed table, in commit order (cursor order).
    fn dispatch(&self, event: Arc<Event>);

    /// The server's WAL end as keepalives report it: nothing before it is still to come.
    fn note_wal_end(&self, lsn: u64);

    /// Periodic upkeep, about once a second even while the stream is idle; `now_us` is Unix µs.
    fn maintain(&self, now_us: i64);

    /// Commit LSN of the oldest row the destination still holds and would need again after a
    /// restart (`None`: it holds nothing). Never confirmed to PostgreSQL.
    fn oldest_lsn(&self) -> Option<u64>;

    /// Commit LSN of the newest row the destination gave up (0 before any): PostgreSQL may
    /// recycle the WAL before it.
    fn evicted_lsn(&self) -> u64;

    /// True while the destination holds as much as it may (a publisher whose broker is
    /// unreachable): the task stops reading the slot, which keeps the WAL, and still sends its
    /// status updates, until this turns false. Default: never.
    fn is_full(&self) -> bool {
        false
    }

    /// Whether a row, once dispatched, no longer needs the slot when PostgreSQL shuts down.
    /// True for the router (default): its window lives in this process, which a database
    /// shutdown does not touch, so the task confirms everything dispatched and lets a fast
    /// shutdown finish. False for a destination that stores rows elsewhere and acknowledges
    /// them later (the cluster publisher): until [`Dispatch::oldest_lsn`] is `None` the slot
    /// is the only copy of those rows, so the task leaves instead of confirming them.
    fn keeps_dispatched(&self) -> bool {
        true
    }
}
