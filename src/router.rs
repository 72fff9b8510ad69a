//! Routing: `user_id → sessions` plus the service-role sessions.
//!
//! Delivery never waits: each event is offered to each receiving session's bounded queue with
//! `try_send`. A full queue marks that session a slow consumer (its `overflow` token is
//! cancelled, the session closes with 4008) and removes it from the table, so the stream and
//! the other sessions never slow down. Routing a user's event is one map lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use dashmap::DashMap;
use metrics::{counter, gauge, Counter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::event::{Cursor, Event};
use crate::metrics as m;

/// The router's side of a session.
#[derive(Debug)]
struct SessionHandle {
    id: u64,
    tx: mpsc::Sender<Arc<Event>>,
    event_types: Option<Arc<[Box<str>]>>,
    overflow: CancellationToken,
}

/// Identifies a registration; hand it back to [`Router::unsubscribe`] exactly once.
#[derive(Debug)]
pub struct Ticket {
    /// Subscription id, unique in this process.
    pub id: u64,
    /// The owner it receives events of (`None`: service role, all events).
    pub user_id: Option<Uuid>,
    /// Role of the token.
    pub role: Role,
}

/// The subscriber's side: its ticket and its queue.
#[derive(Debug)]
pub struct Subscription {
    /// For [`Router::unsubscribe`].
    pub ticket: Ticket,
    /// Events routed to this subscription, in commit order.
    pub rx: mpsc::Receiver<Arc<Event>>,
}

/// Routes events to sessions. Shared (`Arc`) by the replication task and every session.
#[derive(Debug)]
pub struct Router {
    users: DashMap<Uuid, Vec<SessionHandle>>,
    /// Service-role sessions: read-locked per event, write-locked only to add or remove one.
    service: RwLock<Vec<SessionHandle>>,
    next_id: AtomicU64,
    latest: Mutex<Cursor>,
    queue_capacity: usize,
    dropped_slow: Counter,
    dropped_closed: Counter,
}

impl Router {
    /// A router whose sessions queue at most `queue_capacity` events (`limits.session_queue`).
    pub fn new(queue_capacity: usize) -> Router {
        Router {
            users: DashMap::new(),
            service: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(1),
            latest: Mutex::new(Cursor::default()),
            queue_capacity: queue_capacity.max(1),
            dropped_slow: counter!(m::EVENTS_DROPPED, "reason" => "slow_consumer"),
            dropped_closed: counter!(m::EVENTS_DROPPED, "reason" => "session_closed"),
        }
    }

    /// Registers a subscription for `principal`: a user's receives the events whose owner is
    /// its `sub`, a service-role one every event. `event_types` narrows to those types.
    /// `overflow` is cancelled if its queue fills (the session must then close, 4008); several
    /// subscriptions of one socket may share it.
    pub fn subscribe(
        &self,
        principal: &Principal,
        event_types: Option<Vec<String>>,
        overflow: CancellationToken,
    ) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let handle = SessionHandle {
            id,
            tx,
            event_types: event_types.map(|t| t.into_iter().map(Box::from).collect()),
            overflow,
        };
        let user_id = match principal.role {
            Role::Authenticated => principal.user_id,
            Role::ServiceRole => None,
        };
        match user_id {
            Some(user) => self.users.entry(user).or_default().push(handle),
            None => write(&self.service).push(handle),
        }
        gauge!(m::SESSIONS, "role" => principal.role.as_str()).increment(1.0);
        Subscription {
            ticket: Ticket {
                id,
                user_id,
                role: principal.role,
            },
            rx,
        }
    }

    /// Removes a subscription; it consumes the ticket, so it happens once (the router may
    /// already have dropped the handle on overflow).
    pub fn unsubscribe(&self, subscription: Ticket) {
        match subscription.user_id {
            Some(user) => {
                if let Some(mut list) = self.users.get_mut(&user) {
                    list.retain(|h| h.id != subscription.id);
                }
                self.users.remove_if(&user, |_, list| list.is_empty());
            }
            None => write(&self.service).retain(|h| h.id != subscription.id),
        }
        gauge!(m::SESSIONS, "role" => subscription.role.as_str()).decrement(1.0);
    }

    /// Offers `event` to every session that may receive it; returns how many queued it.
    /// Never blocks.
    pub fn dispatch(&self, event: Arc<Event>) -> usize {
        let mut queued = 0;
        if let Some(owner) = event.owner {
            let mut emptied = false;
            if let Some(mut list) = self.users.get_mut(&owner) {
                list.retain(|h| self.offer(h, &event, &mut queued));
                emptied = list.is_empty();
            }
            if emptied {
                self.users.remove_if(&owner, |_, list| list.is_empty());
            }
        }
        let mut gone = Vec::new();
        for handle in read(&self.service).iter() {
            if !self.offer(handle, &event, &mut queued) {
                gone.push(handle.id);
            }
        }
        if !gone.is_empty() {
            write(&self.service).retain(|h| !gone.contains(&h.id));
        }
        if let Ok(mut latest) = self.latest.lock() {
            *latest = (*latest).max(event.cursor);
        }
        queued
    }

    /// Offers one event to one session; false when the session must leave the table.
    fn offer(&self, handle: &SessionHandle, event: &Arc<Event>, queued: &mut usize) -> bool {
        if let Some(types) = &handle.event_types {
            let wanted = event
                .event_type
                .as_deref()
                .is_some_and(|t| types.iter().any(|w| &**w == t));
            if !wanted {
                return true;
            }
        }
        match handle.tx.try_send(Arc::clone(event)) {
            Ok(()) => {
                *queued += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped_slow.increment(1);
                handle.overflow.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.dropped_closed.increment(1);
                false
            }
        }
    }

    /// The cursor of the newest event dispatched (zero before the first).
    pub fn latest_cursor(&self) -> Cursor {
        self.latest.lock().map(|c| *c).unwrap_or_default()
    }

    /// Sessions registered: (user sessions, service-role sessions).
    pub fn session_counts(&self) -> (usize, usize) {
        let users = self.users.iter().map(|e| e.value().len()).sum();
        (users, read(&self.service).len())
    }
}

/// Read lock that survives poisoning (a panicked holder cannot leave the list inconsistent:
/// every critical section is a single push, retain or iteration).
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Cursor, Operation};
    use crate::replication::pgoutput::Relation;
    use serde_json::json;

    fn principal(user: Option<Uuid>) -> Principal {
        Principal {
            user_id: user,
            role: if user.is_some() {
                Role::Authenticated
            } else {
                Role::ServiceRole
            },
            expires_at: i64::MAX,
        }
    }

    fn token() -> CancellationToken {
        CancellationToken::new()
    }

    fn event(owner: Uuid, event_type: &str, index: u32) -> Arc<Event> {
        let relation = Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            name: "engagement_events".into(),
            replica_identity: b'd',
            columns: Vec::new(),
        });
        let record = json!({"user_id": owner, "event_type": event_type});
        let record = record.as_object().cloned().unwrap_or_default();
        let cursor = Cursor { lsn: 1, index };
        Arc::new(Event::new(cursor, 0, Operation::Insert, relation, record))
    }

    #[test]
    fn events_reach_their_owner_and_the_service_role_only() {
        let router = Router::new(8);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut sa = router.subscribe(&principal(Some(a)), None, token());
        let mut sb = router.subscribe(&principal(Some(b)), None, token());
        let mut all = router.subscribe(&principal(None), None, token());
        assert_eq!(router.dispatch(event(a, "app_open", 0)), 2);
        assert_eq!(sa.rx.try_recv().unwrap().owner, Some(a));
        assert!(sb.rx.try_recv().is_err());
        assert_eq!(all.rx.try_recv().unwrap().owner, Some(a));
        assert_eq!(router.latest_cursor(), Cursor { lsn: 1, index: 0 });
    }

    #[test]
    fn a_type_filter_narrows() {
        let router = Router::new(8);
        let a = Uuid::new_v4();
        let types = Some(vec!["goal_complete".into()]);
        let mut goals = router.subscribe(&principal(Some(a)), types, token());
        router.dispatch(event(a, "app_open", 0));
        router.dispatch(event(a, "goal_complete", 1));
        assert_eq!(goals.rx.try_recv().unwrap().cursor.index, 1);
        assert!(goals.rx.try_recv().is_err());
    }

    #[test]
    fn an_overflow_cancels_and_removes_only_that_session() {
        let router = Router::new(2);
        let a = Uuid::new_v4();
        let (slow_overflow, fast_overflow) = (token(), token());
        let slow = router.subscribe(&principal(Some(a)), None, slow_overflow.clone());
        let mut fast = router.subscribe(&principal(Some(a)), None, fast_overflow.clone());
        for i in 0..3 {
            router.dispatch(event(a, "app_open", i));
            while fast.rx.try_recv().is_ok() {}
        }
        assert!(slow_overflow.is_cancelled());
        assert!(!fast_overflow.is_cancelled());
        assert_eq!(router.session_counts(), (1, 0));
        router.unsubscribe(slow.ticket);
        assert_eq!(
            router.session_counts(),
            (1, 0),
            "after the router dropped it"
        );
        router.unsubscribe(fast.ticket);
        assert_eq!(router.session_counts(), (0, 0));
    }
}
