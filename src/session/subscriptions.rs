//! A session's router subscriptions, merged into one queue the engine drains.
//!
//! The native protocol holds one subscription; a Realtime socket one per joined channel, each
//! under its channel token's principal. All share one overflow token: any queue filling closes
//! the socket (4008), so no subscription silently misses an event.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::filter::Interest;
use crate::model::{Cursor, Event};
use crate::presence::{SessionInfo, SubscriptionInfo};
use crate::router::{Replay, Router, Ticket};

/// Identifies one router subscription of a session.
pub type Key = u64;

/// A session's router subscriptions and their merged queues. Dropping it unsubscribes them.
pub struct Subscriptions {
    router: Arc<Router>,
    /// The socket's registry record, where each subscription is described.
    info: Arc<SessionInfo>,
    /// Cancelled by the router when any of these queues fills (shared by all of them).
    overflow: CancellationToken,
    streams: StreamMap<Key, ReceiverStream<Arc<Event>>>,
    tickets: Vec<(Key, Ticket)>,
    next: Key,
}

impl Subscriptions {
    /// No subscriptions yet, on `router`, described in `info`.
    pub fn new(router: Arc<Router>, info: Arc<SessionInfo>) -> Subscriptions {
        Subscriptions {
            router,
            info,
            overflow: CancellationToken::new(),
            streams: StreamMap::new(),
            tickets: Vec::new(),
            next: 0,
        }
    }

    /// Subscribes under `principal` ([`Router::subscribe`]); returns its key, the position
    /// it starts after, and with `since` what it missed. `topic` is the Realtime channel's.
    pub fn subscribe(
        &mut self,
        principal: &Principal,
        interest: Interest,
        since: Option<Cursor>,
        topic: Option<String>,
    ) -> (Key, Cursor, Option<Replay>) {
        let tables = interest.tables.as_ref().map(|s| {
            s.iter()
                .map(|(schema, t)| format!("{schema}.{t}"))
                .collect()
        });
        let event_types = interest
            .event_types
            .as_ref()
            .map(|t| t.iter().map(|e| e.to_string()).collect());
        let sub = self
            .router
            .subscribe(principal, interest, self.overflow.clone(), since);
        self.info.add_subscription(SubscriptionInfo {
            ticket: sub.ticket.id,
            owner: principal.owner(),
            tables,
            event_types,
            topic,
        });
        let key = self.next;
        self.next += 1;
        self.streams.insert(key, ReceiverStream::new(sub.rx));
        self.tickets.push((key, sub.ticket));
        (key, sub.position, sub.replay)
    }

    /// Ends subscription `key` (a no-op for an unknown key); what it had queued is dropped.
    pub fn unsubscribe(&mut self, key: Key) {
        self.streams.remove(&key);
        if let Some(at) = self.tickets.iter().position(|(k, _)| *k == key) {
            let (_, ticket) = self.tickets.swap_remove(at);
            self.info.remove_subscription(ticket.id);
            self.router.unsubscribe(ticket);
        }
    }

    /// The token the router cancels when any of these queues fills.
    pub(super) fn overflow(&self) -> CancellationToken {
        self.overflow.clone()
    }

    /// Whether no subscription is left (none made yet, all ended, or all dropped on overflow).
    pub(super) fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Ends every subscription, dropping what they had queued.
    pub fn clear(&mut self) {
        self.streams.clear();
        for (_, ticket) in self.tickets.drain(..) {
            self.info.remove_subscription(ticket.id);
            self.router.unsubscribe(ticket);
        }
    }

    /// Waits for at least one event, then takes what else is ready, up to `limit` in all.
    /// Returns how many were added to `out` (0 only when every queue was dropped). Cancel-safe.
    pub(super) async fn recv_many(
        &mut self,
        out: &mut Vec<(Key, Arc<Event>)>,
        limit: usize,
    ) -> usize {
        let Some(first) = self.streams.next().await else {
            return 0;
        };
        out.push(first);
        1 + self.take_ready(out, limit.saturating_sub(1))
    }

    /// Takes everything queued now (a shutdown: nothing more will come).
    pub(super) fn drain(&mut self, out: &mut Vec<(Key, Arc<Event>)>) {
        self.take_ready(out, usize::MAX);
    }

    /// Takes up to `limit` events that are ready now, without waiting; returns how many.
    ///
    /// Each read of a tokio channel spends the task's cooperative budget (128 reads), after
    /// which the channel answers "pending" although events wait: polled as it is, a shutdown
    /// drain would stop after ~128 events and lose the rest. The reads therefore run outside
    /// the budget (`tokio::task::unconstrained`); they are bounded by `limit` and by what is
    /// queued, and the caller yields when it writes.
    fn take_ready(&mut self, out: &mut Vec<(Key, Arc<Event>)>, limit: usize) -> usize {
        let streams = &mut self.streams;
        let take = tokio::task::unconstrained(async move {
            let mut n = 0;
            while n < limit {
                match streams.next().now_or_never() {
                    Some(Some(item)) => out.push(item),
                    _ => break,
                }
                n += 1;
            }
            n
        });
        // The future above never awaits: it is ready at its first poll.
        take.now_or_never().unwrap_or(0)
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        self.clear();
    }
}
