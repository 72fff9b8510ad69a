//! Routing: `user_id → sessions` plus the service-role sessions, and the replay window.
//!
//! Delivery never waits: each event is offered to each receiving session's bounded queue with
//! `try_send`. A full queue marks that session a slow consumer (its `overflow` token is
//! cancelled, the session closes with 4008) and removes it from the table, so the stream and
//! the other sessions never slow down. Routing a user's event is one map lookup.
//!
//! Resume (docs/ARCHITECTURE.md, "Cursor and replay window"): every event is also kept in the replay
//! window, and in a per-user deque beside that user's sessions. A subscription with a `since`
//! cursor is registered and handed the events after its cursor under the same lock that
//! dispatch takes to append and offer, so each event is either in the replay or queued live:
//! no gap and no duplicate at the seam.
//!
//! Fairness (issue 12): each user's deque holds at most `replay.max_events_per_user` events;
//! beyond it the user's oldest are removed from the deque and from the window (freeing their
//! memory and their place under the window's count and byte bounds) and the user's own
//! eviction floor moves past them, so only that user's older cursors resume `complete:false`.
//! Every subscription holds a [`Slot`] (`router/slots.rs`), so one user's event reaches at most
//! `limits.max_sessions_per_user` queues.
//!
//! Erasure (issue 13): a delete removes the earlier events of its row (same
//! [`Event::row`]: table and primary key) from its owner's deque and from the window as it is
//! dispatched, and stays itself. A resume after it is therefore `complete` as usual: it never
//! replays an erased event, it replays the delete (the client drops a row it may hold, or
//! ignores a row it never saw), and nothing else is missing (the removed events' rows no
//! longer exist, so no floor moves). docs/RETENTION.md, "engagement-relay".
//!
//! Locks: `global` (the window and the service-role sessions) may be held while taking a user's
//! map entry (DashMap shard) — eviction trims user deques that way — so never take `global`
//! while holding an entry (dispatch releases the entry first). `positions` and `restart` are
//! leaves: nothing else is taken while holding them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use metrics::{counter, gauge, Counter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::config::ReplayConfig;
use crate::filter::Interest;
use crate::metrics as m;
use crate::model::{now_unix_us, Cursor, Event, Operation};
use crate::replay::{self, Evicted, Window};
use crate::replication::Dispatch;

mod inspect;
mod slots;

pub use self::inspect::WindowStats;
use self::slots::Slots;
pub use self::slots::{Slot, SlotRefused};

/// The router's side of a session.
#[derive(Debug)]
struct SessionHandle {
    id: u64,
    tx: mpsc::Sender<Arc<Event>>,
    interest: Interest,
    overflow: CancellationToken,
}

impl SessionHandle {
    fn wants(&self, event: &Event) -> bool {
        self.interest.matches(event)
    }
}

/// One user's sessions and recent events.
#[derive(Debug, Default)]
struct UserEntry {
    sessions: Vec<SessionHandle>,
    /// The user's events still in the replay window, oldest first.
    recent: VecDeque<Arc<Event>>,
    /// The newest of the user's events evicted because the deque held
    /// `replay.max_events_per_user` (default before any): a resume from before it missed
    /// something. The entry is removed only once `recent` is empty, which happens only by the
    /// window's own eviction (the share keeps the newest event), and that moves the window's
    /// floor past every event of the deque, so the floor is never lost while it matters.
    floor: Cursor,
}

/// The window of every event and the service-role sessions (which receive every event).
#[derive(Debug)]
struct Global {
    window: Window,
    service: Vec<SessionHandle>,
}

/// Where the stream stands, for cursors handed to sessions.
#[derive(Debug, Default, Clone, Copy)]
struct Positions {
    /// Newest event whose dispatch has finished (or the floor before any).
    latest: Cursor,
    /// Every event after this one is in the window.
    floor: Cursor,
    /// The newest WAL position the server reported: a cursor past it was not issued by it.
    wal_end: u64,
    /// Commit LSN of the newest event evicted (0 before any).
    evicted: u64,
    /// The newest event evicted for its owner's share ([`UserEntry::floor`]) of any user: a
    /// service-role resume from before it is incomplete (conservative).
    shared: Cursor,
    /// Commit → dispatch of the newest event, µs (the status API's replication lag).
    latest_lag_us: i64,
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

/// The events a resuming subscription missed.
#[derive(Debug)]
pub struct Replay {
    /// The window reached back to the cursor: `events` is everything missed. When false the
    /// client must reload its history (and `events` is empty).
    pub complete: bool,
    /// The missed events of this subscription, oldest first.
    pub events: Vec<Arc<Event>>,
}

/// The subscriber's side: its ticket and its queue.
#[derive(Debug)]
pub struct Subscription {
    /// For [`Router::unsubscribe`].
    pub ticket: Ticket,
    /// Events routed to this subscription, in commit order.
    pub rx: mpsc::Receiver<Arc<Event>>,
    /// Every event of this subscription up to this cursor was before it (or is in `replay`);
    /// every later one arrives on `rx`.
    pub position: Cursor,
    /// With a `since` cursor: what was missed.
    pub replay: Option<Replay>,
}

/// Routes events to sessions and keeps the replay window. Shared (`Arc`) by the replication
/// task and every session.
#[derive(Debug)]
pub struct Router {
    users: DashMap<Uuid, UserEntry>,
    global: Mutex<Global>,
    positions: Mutex<Positions>,
    /// Cancelled when the window starts over while sessions run ([`Router::begin`]).
    restart: Mutex<CancellationToken>,
    next_id: AtomicU64,
    queue_capacity: usize,
    /// `replay.max_events_per_user`.
    max_per_user: usize,
    /// Subscriptions held per user and by the service role ([`Router::take_slot`]).
    slots: Arc<Slots>,
    dropped_slow: Counter,
    dropped_closed: Counter,
    /// `relay_replay_evicted_total` by reason.
    evicted: EvictedCounters,
}

/// The `relay_replay_evicted_total` counter of each reason an event leaves the window.
#[derive(Debug)]
struct EvictedCounters {
    /// Over its owner's share (`replay.max_events_per_user`).
    user_share: Counter,
    /// [`Evicted::Age`], [`Evicted::Count`], [`Evicted::Bytes`].
    age: Counter,
    count: Counter,
    bytes: Counter,
    /// Events of a row a delete removed.
    erased: Counter,
}

impl EvictedCounters {
    fn new() -> EvictedCounters {
        let reason = |reason: &'static str| counter!(m::REPLAY_EVICTED, "reason" => reason);
        EvictedCounters {
            user_share: reason("user_share"),
            age: reason("age"),
            count: reason("count"),
            bytes: reason("bytes"),
            erased: reason("erased"),
        }
    }

    fn of(&self, reason: Evicted) -> &Counter {
        match reason {
            Evicted::Age => &self.age,
            Evicted::Count => &self.count,
            Evicted::Bytes => &self.bytes,
        }
    }
}

impl Router {
    /// A router whose sessions queue at most `queue_capacity` events (`limits.session_queue`)
    /// and whose replay window has `replay`'s bounds (with `replay.max_events_per_user`).
    pub fn new(queue_capacity: usize, replay: &ReplayConfig) -> Router {
        Router {
            users: DashMap::new(),
            global: Mutex::new(Global {
                window: Window::new(replay),
                service: Vec::new(),
            }),
            positions: Mutex::new(Positions::default()),
            restart: Mutex::new(CancellationToken::new()),
            next_id: AtomicU64::new(1),
            queue_capacity: queue_capacity.max(1),
            max_per_user: replay.max_events_per_user.get(),
            slots: Arc::default(),
            dropped_slow: counter!(m::EVENTS_DROPPED, "reason" => "slow_consumer"),
            dropped_closed: counter!(m::EVENTS_DROPPED, "reason" => "session_closed"),
            evicted: EvictedCounters::new(),
        }
    }

    /// Starts the window over: the stream begins at `lsn` of WAL history `history`, so every
    /// event after `Cursor::before(lsn)` will be in the window. Called when the stream first
    /// connects and when the history changed (the database was restored): the old window, if
    /// any, is dropped.
    pub fn begin(&self, history: u32, lsn: u64) {
        let mut global = lock(&self.global);
        if !global.window.is_empty() {
            warn!("the replay window starts over: sessions are closed so that clients resume");
        }
        let floor = Cursor::before(lsn, history);
        // The floor moves first: a resume that reads an emptied deque sees it.
        let mut positions = lock(&self.positions);
        // Sessions opened before the first begin (a cluster node serving an empty stream)
        // missed nothing: only a window that existed starts over.
        let started = positions.floor != Cursor::default();
        *positions = Positions {
            latest: floor,
            floor,
            wal_end: lsn,
            evicted: 0,
            shared: Cursor::default(),
            latest_lag_us: 0,
        };
        drop(positions);
        global.window.clear();
        for mut entry in self.users.iter_mut() {
            entry.recent.clear();
            entry.floor = Cursor::default();
        }
        if started {
            let mut restart = lock(&self.restart);
            restart.cancel();
            *restart = CancellationToken::new();
        }
    }

    /// Cancelled when the window starts over (a new WAL history, or the slot moved on without
    /// this relay): a session holding it must close (1012) so its client resumes.
    pub fn restart_signal(&self) -> CancellationToken {
        lock(&self.restart).clone()
    }

    /// Takes one of `principal`'s session slots: a user holds at most `per_user`
    /// (`limits.max_sessions_per_user`), the service role at most `service`
    /// (`limits.max_service_sessions`). Hold the [`Slot`] for as long as the subscription it
    /// stands for; dropping it gives it back.
    ///
    /// Errors: [`SlotRefused`] naming the cap reached (counted in `relay_refused_total`).
    pub fn take_slot(
        &self,
        principal: &Principal,
        per_user: usize,
        service: usize,
    ) -> Result<Slot, SlotRefused> {
        self.slots.take(principal, per_user, service)
    }

    /// Slots held: by `user` (`Some`), or by the service role (`None`).
    pub fn slots_held(&self, user: Option<Uuid>) -> usize {
        user.map_or_else(|| self.slots.held_by_service(), |u| self.slots.held(u))
    }

    /// Notes the server's WAL end (keepalives): cursors up to it are plausible.
    pub fn note_wal_end(&self, lsn: u64) {
        let mut positions = lock(&self.positions);
        positions.wal_end = positions.wal_end.max(lsn);
    }

    /// Registers a subscription for `principal`: a user's receives the events whose owner is
    /// its `sub`, a service-role one every event. `interest` narrows to tables and event types.
    /// `overflow` is cancelled if its queue fills (the session must then close, 4008); several
    /// subscriptions of one socket may share it. With `since`, the subscription also gets the
    /// events after that cursor that the window still holds ([`Subscription::replay`]).
    pub fn subscribe(
        &self,
        principal: &Principal,
        interest: Interest,
        overflow: CancellationToken,
        since: Option<Cursor>,
    ) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let handle = SessionHandle {
            id,
            tx,
            interest,
            overflow,
        };
        let user_id = principal.owner();
        let (position, replay) = match user_id {
            Some(user) => {
                let mut entry = self.users.entry(user).or_default();
                let replay = since.map(|c| Self::replay(&handle, replay::after(&entry.recent, c)));
                let newest = entry.recent.back().map(|e| e.cursor);
                let floor = entry.floor;
                entry.sessions.push(handle);
                self.settle(since, replay, newest, Some(floor))
            }
            None => {
                let mut global = lock(&self.global);
                let replay = since.map(|c| Self::replay(&handle, global.window.after(c)));
                global.service.push(handle);
                self.settle(since, replay, None, None)
            }
        };
        gauge!(m::SESSIONS, "role" => principal.role.as_str()).increment(1.0);
        Subscription {
            ticket: Ticket {
                id,
                user_id,
                role: principal.role,
            },
            rx,
            position,
            replay,
        }
    }

    fn replay<'a>(
        handle: &SessionHandle,
        events: impl Iterator<Item = &'a Arc<Event>>,
    ) -> Vec<Arc<Event>> {
        events.filter(|e| handle.wants(e)).cloned().collect()
    }

    /// Decides completeness and the subscription's position, still under the lock that
    /// registered it. `newest` is the newest event already in the subscriber's deque;
    /// `user_floor` the user's own eviction floor ([`UserEntry::floor`]), `None` for the
    /// service role (whose resume must then be past every share eviction).
    fn settle(
        &self,
        since: Option<Cursor>,
        events: Option<Vec<Arc<Event>>>,
        newest: Option<Cursor>,
        user_floor: Option<Cursor>,
    ) -> (Cursor, Option<Replay>) {
        let positions = *lock(&self.positions);
        let position = newest.map_or(positions.latest, |n| n.max(positions.latest));
        let replay = since.zip(events).map(|(since, events)| {
            // A cursor ahead of everything the server reported was not issued on this WAL.
            let issued = since.lsn <= positions.wal_end.max(positions.latest.lsn);
            let shared = user_floor.unwrap_or(positions.shared);
            let complete = since.history == positions.floor.history
                && since >= positions.floor
                && since >= shared
                && issued;
            counter!(m::RESUMES, "complete" => if complete { "true" } else { "false" })
                .increment(1);
            Replay {
                complete,
                events: if complete { events } else { Vec::new() },
            }
        });
        (position, replay)
    }

    /// Removes a subscription; it consumes the ticket, so it happens once (the router may
    /// already have dropped the handle on overflow).
    pub fn unsubscribe(&self, subscription: Ticket) {
        match subscription.user_id {
            Some(user) => {
                if let Some(mut entry) = self.users.get_mut(&user) {
                    entry.sessions.retain(|h| h.id != subscription.id);
                }
                self.users
                    .remove_if(&user, |_, e| e.sessions.is_empty() && e.recent.is_empty());
            }
            None => lock(&self.global)
                .service
                .retain(|h| h.id != subscription.id),
        }
        gauge!(m::SESSIONS, "role" => subscription.role.as_str()).decrement(1.0);
    }

    /// Keeps `event` in the window and offers it to every session that may receive it;
    /// returns how many queued it. Never blocks on a session.
    pub fn dispatch(&self, event: Arc<Event>) -> usize {
        let mut queued = 0;
        // The owner's events beyond its share, oldest first: out of the deque now (under the
        // entry, with its floor), out of the window below (under `global`).
        let mut over_share = Vec::new();
        // The earlier events of the row a delete erases: out of the deque now, out of the
        // window below.
        let mut erased = Vec::new();
        // An update that moved the row to another owner: the old owner's earlier events of it
        // leave the window (done before the new owner's entry is held: one shard lock at a time).
        if let (Some(was), Some(row)) = (event.moved_from, event.row) {
            if let Some(mut entry) = self.users.get_mut(&was) {
                erase_row(&mut entry.recent, row, &mut erased);
            }
        }
        if let Some(owner) = event.owner {
            let mut entry = self.users.entry(owner).or_default();
            if let (Operation::Delete, Some(row)) = (event.operation, event.row) {
                erase_row(&mut entry.recent, row, &mut erased);
            }
            entry.recent.push_back(Arc::clone(&event));
            while entry.recent.len() > self.max_per_user {
                let Some(old) = entry.recent.pop_front() else {
                    break;
                };
                entry.floor = entry.floor.max(old.cursor);
                over_share.push(old.cursor);
            }
            entry
                .sessions
                .retain(|h| self.offer(h, &event, &mut queued));
        }
        let mut global = lock(&self.global);
        global.window.push(Arc::clone(&event));
        for cursor in erased {
            if global.window.remove(cursor).is_some() {
                self.evicted.erased.increment(1);
            }
        }
        if let Some(newest) = over_share.last() {
            {
                let mut positions = lock(&self.positions);
                positions.shared = positions.shared.max(*newest);
            }
            for cursor in over_share {
                if global.window.remove(cursor).is_some() {
                    self.evicted.user_share.increment(1);
                }
            }
        }
        let mut gone = Vec::new();
        for handle in &global.service {
            if !self.offer(handle, &event, &mut queued) {
                gone.push(handle.id);
            }
        }
        if !gone.is_empty() {
            global.service.retain(|h| !gone.contains(&h.id));
        }
        let now = now_unix_us();
        {
            let mut positions = lock(&self.positions);
            positions.latest = positions.latest.max(event.cursor);
            positions.wal_end = positions.wal_end.max(event.cursor.lsn);
            positions.latest_lag_us = now - event.commit_time_us;
        }
        self.evict(&mut global, now);
        queued
    }

    /// Evicts what is out of the window's bounds at `now_us` and updates the window gauges.
    /// The replication task calls it periodically so that age applies while the stream is idle.
    pub fn maintain(&self, now_us: i64) {
        let mut global = lock(&self.global);
        self.evict(&mut global, now_us);
        let window = &global.window;
        gauge!(m::REPLAY_WINDOW_EVENTS).set(window.len() as f64);
        gauge!(m::REPLAY_WINDOW_BYTES).set(window.bytes() as f64);
        let age_us = window
            .oldest()
            .map_or(0, |e| now_us.saturating_sub(e.commit_time_us).max(0));
        gauge!(m::REPLAY_OLDEST_AGE).set(age_us as f64 / 1e6);
    }

    /// Moves the floor past each evicted event, then drops it from its owner's deque.
    fn evict(&self, global: &mut Global, now_us: i64) {
        global.window.evict(now_us, |event, reason| {
            self.evicted.of(reason).increment(1);
            {
                let mut positions = lock(&self.positions);
                positions.floor = positions.floor.max(event.cursor);
                positions.evicted = positions.evicted.max(event.cursor.lsn);
            }
            let Some(owner) = event.owner else { return };
            if let Some(mut entry) = self.users.get_mut(&owner) {
                while entry
                    .recent
                    .front()
                    .is_some_and(|e| e.cursor <= event.cursor)
                {
                    entry.recent.pop_front();
                }
            }
            self.users
                .remove_if(&owner, |_, e| e.sessions.is_empty() && e.recent.is_empty());
        });
    }

    /// The commit LSN of the oldest event in the window: the replication task confirms
    /// nothing at or past it, so a restarted relay reads it again.
    pub fn oldest_lsn(&self) -> Option<u64> {
        lock(&self.global).window.oldest().map(|e| e.cursor.lsn)
    }

    /// The commit LSN of the newest event evicted from the window (0 before any): nothing
    /// before it can be replayed any more.
    pub fn evicted_lsn(&self) -> u64 {
        lock(&self.positions).evicted
    }

    /// Offers one event to one session; false when the session must leave the table.
    fn offer(&self, handle: &SessionHandle, event: &Arc<Event>, queued: &mut usize) -> bool {
        if !handle.wants(event) {
            return true;
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

    /// The cursor of the newest event dispatched (the window's start before the first).
    pub fn latest_cursor(&self) -> Cursor {
        lock(&self.positions).latest
    }

    /// Sessions registered: (user sessions, service-role sessions).
    pub fn session_counts(&self) -> (usize, usize) {
        let users = self.users.iter().map(|e| e.value().sessions.len()).sum();
        (users, lock(&self.global).service.len())
    }
}

/// The router is the relay's destination for the replication task: rows go to sessions and
/// the replay window; what the window holds bounds what PostgreSQL may recycle.
impl Dispatch for Router {
    fn begin(&self, history: u32, lsn: u64) {
        Router::begin(self, history, lsn);
    }

    fn dispatch(&self, event: Arc<Event>) {
        Router::dispatch(self, event);
    }

    fn note_wal_end(&self, lsn: u64) {
        Router::note_wal_end(self, lsn);
    }

    fn maintain(&self, now_us: i64) {
        Router::maintain(self, now_us);
    }

    fn oldest_lsn(&self) -> Option<u64> {
        Router::oldest_lsn(self)
    }

    fn evicted_lsn(&self) -> u64 {
        Router::evicted_lsn(self)
    }
}

/// A lock that survives poisoning (a panicked holder cannot leave the state inconsistent:
/// every critical section is a push, a retain, a pop or a read).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;

/// Removes the events of `row` from a user's deque, collecting their cursors in `erased` (to
/// leave the window too).
fn erase_row(recent: &mut VecDeque<Arc<Event>>, row: u64, erased: &mut Vec<Cursor>) {
    recent.retain(|e| {
        let keep = e.row != Some(row);
        if !keep {
            erased.push(e.cursor);
        }
        keep
    });
}
