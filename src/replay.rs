//! The replay window: the most recent events in commit order, bounded by age
//! (`replay.window`), count (`replay.max_events`) and estimated bytes (`replay.max_bytes`).
//!
//! The router keeps one [`Window`] of every event (service-role resumes, eviction order) and a
//! per-user deque beside each user's sessions (user resumes find their events without scanning
//! anyone else's). Both are sorted by cursor, so "events after a cursor" is a binary search.
//! When one user's deque exceeds `replay.max_events_per_user`, the router removes that user's
//! oldest from the window too ([`Window::remove`]: a binary search and a tombstone), so the
//! memory is freed and the window's count and byte bounds stay for everyone else.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::config::ReplayConfig;
use crate::model::{Cursor, Event};

/// Events older than this many positions behind the newest lose their cached Supabase
/// encodings: every live session has long written them by then.
const DROP_ENCODINGS_AFTER: usize = 4096;

/// Why an event left the window ([`Window::evict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// Committed `replay.window` ago or earlier.
    Age,
    /// Beyond `replay.max_events`.
    Count,
    /// Beyond `replay.max_bytes`.
    Bytes,
}

/// A place in the window: an event, or the tombstone of one removed out of order (a user's
/// share exceeded, [`Window::remove`]). Tombstones keep the deque sorted and removal a binary
/// search; they are popped at the front and compacted when they outnumber the events.
#[derive(Debug)]
struct Slot {
    cursor: Cursor,
    event: Option<Arc<Event>>,
}

/// All recent events, oldest first.
#[derive(Debug)]
pub struct Window {
    /// Sorted by cursor; the front is never a tombstone.
    slots: VecDeque<Slot>,
    /// Events (not tombstones) in `slots`.
    live: usize,
    bytes: usize,
    window_us: i64,
    max_events: usize,
    max_bytes: usize,
}

impl Window {
    /// An empty window with `config`'s bounds.
    pub fn new(config: &ReplayConfig) -> Window {
        Window {
            slots: VecDeque::new(),
            live: 0,
            bytes: 0,
            window_us: i64::try_from(config.window.as_micros()).unwrap_or(i64::MAX),
            max_events: config.max_events,
            max_bytes: config.max_bytes,
        }
    }

    /// Appends the newest event (events arrive in cursor order).
    pub fn push(&mut self, event: Arc<Event>) {
        self.bytes += event.approx_bytes();
        self.live += 1;
        self.slots.push_back(Slot {
            cursor: event.cursor,
            event: Some(event),
        });
        if let Some(old) = self
            .slots
            .len()
            .checked_sub(DROP_ENCODINGS_AFTER + 1)
            .and_then(|i| self.slots.get(i))
            .and_then(|s| s.event.as_ref())
        {
            old.drop_encodings();
        }
    }

    /// Removes the event at `cursor` out of order (its owner's share of the window is full),
    /// freeing it and its bytes: a binary search and a tombstone. Returns it; `None` when the
    /// window does not hold it (already evicted).
    pub fn remove(&mut self, cursor: Cursor) -> Option<Arc<Event>> {
        let at = self.slots.partition_point(|s| s.cursor < cursor);
        let slot = self.slots.get_mut(at).filter(|s| s.cursor == cursor)?;
        let event = slot.event.take()?;
        self.live -= 1;
        self.bytes = self.bytes.saturating_sub(event.approx_bytes());
        self.pop_tombstones();
        let tombstones = self.slots.len() - self.live;
        if tombstones > self.live.max(1024) {
            self.slots.retain(|s| s.event.is_some());
        }
        Some(event)
    }

    /// Keeps the front an event (or the window empty).
    fn pop_tombstones(&mut self) {
        while self.slots.front().is_some_and(|s| s.event.is_none()) {
            self.slots.pop_front();
        }
    }

    /// Removes, oldest first, every event that is out of bounds at `now_us` (Unix µs) and hands
    /// each to `evicted` with the bound it broke: committed `replay.window` ago or earlier, or
    /// beyond the count or byte bound (tombstones count for neither).
    pub fn evict(&mut self, now_us: i64, mut evicted: impl FnMut(Arc<Event>, Evicted)) {
        let horizon = now_us.saturating_sub(self.window_us);
        while let Some(oldest) = self.slots.front().and_then(|s| s.event.as_ref()) {
            let reason = if oldest.commit_time_us <= horizon {
                Evicted::Age
            } else if self.live > self.max_events {
                Evicted::Count
            } else if self.bytes > self.max_bytes {
                Evicted::Bytes
            } else {
                break;
            };
            if let Some(event) = self.slots.pop_front().and_then(|s| s.event) {
                self.live -= 1;
                self.bytes = self.bytes.saturating_sub(event.approx_bytes());
                evicted(event, reason);
            }
            self.pop_tombstones();
        }
    }

    /// Forgets everything (a new WAL history).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.live = 0;
        self.bytes = 0;
    }

    /// The events after `since`, oldest first.
    pub fn after(&self, since: Cursor) -> impl Iterator<Item = &Arc<Event>> {
        let start = self.slots.partition_point(|s| s.cursor <= since);
        self.slots.range(start..).filter_map(|s| s.event.as_ref())
    }

    /// The oldest event kept.
    pub fn oldest(&self) -> Option<&Arc<Event>> {
        self.slots.front().and_then(|s| s.event.as_ref())
    }

    /// The newest event kept.
    pub fn newest(&self) -> Option<&Arc<Event>> {
        self.slots.iter().rev().find_map(|s| s.event.as_ref())
    }

    /// Events kept (tombstones not counted).
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Estimated bytes kept ([`Event::approx_bytes`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The events of a cursor-sorted deque that come after `since`, oldest first.
pub fn after(events: &VecDeque<Arc<Event>>, since: Cursor) -> impl Iterator<Item = &Arc<Event>> {
    let start = events.partition_point(|e| e.cursor <= since);
    events.range(start..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Operation;
    use crate::model::Relation;
    use std::time::Duration;

    fn event(lsn: u64, commit_time_us: i64) -> Arc<Event> {
        let relation = Relation::fixture();
        let cursor = Cursor {
            lsn,
            index: 0,
            history: 7,
        };
        Arc::new(Event::new(
            cursor,
            commit_time_us,
            Operation::Insert,
            (relation, "user_id"),
            Default::default(),
        ))
    }

    fn config(window_s: u64, max_events: usize, max_bytes: usize) -> ReplayConfig {
        ReplayConfig {
            window: Duration::from_secs(window_s),
            max_events,
            max_bytes,
            ..ReplayConfig::default()
        }
    }

    fn lsns(window: &Window, since: Cursor) -> Vec<u64> {
        window.after(since).map(|e| e.cursor.lsn).collect()
    }

    #[test]
    fn after_a_cursor_is_a_binary_search_over_the_window() {
        let mut window = Window::new(&config(60, 100, usize::MAX));
        for lsn in [10, 20, 30] {
            window.push(event(lsn, 0));
        }
        assert_eq!(lsns(&window, Cursor::default()), [10, 20, 30]);
        assert_eq!(lsns(&window, Cursor::before(20, 7)), [20, 30]);
        assert_eq!(lsns(&window, event(20, 0).cursor), [30]);
        assert!(lsns(&window, event(99, 0).cursor).is_empty());
    }

    #[test]
    fn age_count_and_bytes_each_evict_the_oldest_first() {
        let mut window = Window::new(&config(60, 3, usize::MAX));
        let mut gone = Vec::new();
        for (lsn, t) in [(1, 0), (2, 50_000_000), (3, 70_000_000)] {
            window.push(event(lsn, t));
        }
        window.evict(100_000_000, |e, _| gone.push(e.cursor.lsn));
        assert_eq!(gone, [1], "committed 60 s or more before now");
        for lsn in 4..=6 {
            window.push(event(lsn, 90_000_000));
        }
        window.evict(100_000_000, |e, _| gone.push(e.cursor.lsn));
        assert_eq!(gone, [1, 2, 3], "at most 3 events");
        assert_eq!(window.len(), 3);

        let one = event(1, 0).approx_bytes();
        let mut window = Window::new(&config(60, 100, 2 * one));
        for lsn in 1..=3 {
            window.push(event(lsn, 90_000_000));
        }
        window.evict(100_000_000, |_, _| {});
        assert_eq!(lsns(&window, Cursor::default()), [2, 3]);
        assert_eq!(window.bytes(), 2 * one);
    }

    #[test]
    fn a_zero_window_keeps_nothing() {
        let mut window = Window::new(&config(0, 100, usize::MAX));
        window.push(event(1, 5));
        let mut gone = 0;
        window.evict(5, |_, _| gone += 1);
        assert_eq!((gone, window.len()), (1, 0));
    }

    #[test]
    fn a_removed_event_frees_its_place_and_bytes_and_is_skipped() {
        let mut window = Window::new(&config(60, 3, usize::MAX));
        for lsn in 1..=4 {
            window.push(event(lsn, 90_000_000));
        }
        let one = event(1, 0).approx_bytes();
        assert!(window.remove(event(2, 0).cursor).is_some());
        assert!(window.remove(event(2, 0).cursor).is_none(), "once");
        assert!(window.remove(event(9, 0).cursor).is_none(), "not held");
        assert_eq!((window.len(), window.bytes()), (3, 3 * one));
        assert_eq!(lsns(&window, Cursor::default()), [1, 3, 4]);
        assert_eq!(lsns(&window, event(1, 0).cursor), [3, 4]);
        // Three events fit the count bound: nothing goes.
        let mut gone = Vec::new();
        window.evict(100_000_000, |e, why| gone.push((e.cursor.lsn, why)));
        assert!(gone.is_empty());
        // Removing the oldest pops it and the tombstone behind it.
        assert!(window.remove(event(1, 0).cursor).is_some());
        assert_eq!(window.oldest().map(|e| e.cursor.lsn), Some(3));
        window.evict(100_000_000 + 60_000_000, |e, why| {
            gone.push((e.cursor.lsn, why))
        });
        assert_eq!(gone, [(3, Evicted::Age), (4, Evicted::Age)]);
        assert!(window.is_empty() && window.oldest().is_none());
    }

    #[test]
    fn tombstones_never_outgrow_the_events() {
        let mut window = Window::new(&config(60, usize::MAX, usize::MAX));
        window.push(event(1, 90_000_000));
        for lsn in 2..5000 {
            window.push(event(lsn, 90_000_000));
            window.remove(event(lsn - 1, 0).cursor);
            window.remove(event(lsn - 2, 0).cursor);
        }
        // Every other removal hit an event; what is left is sorted and small.
        assert!(window.slots.len() <= 2 * window.len().max(1024) + 1);
        assert_eq!(lsns(&window, Cursor::default()), [4999]);
    }

    proptest::proptest! {
        /// Whatever is removed, `after` yields exactly the events pushed and not removed, in
        /// order, and the counts and bytes match them.
        #[test]
        fn removal_keeps_the_window_exact(
            removed in proptest::collection::vec(proptest::bool::ANY, 1..300),
            since in 0u64..300,
        ) {
            let mut window = Window::new(&config(60, usize::MAX, usize::MAX));
            for lsn in 0..removed.len() as u64 {
                window.push(event(lsn, 90_000_000));
            }
            let mut kept = Vec::new();
            for (lsn, gone) in removed.iter().enumerate() {
                if *gone {
                    window.remove(event(lsn as u64, 0).cursor);
                } else {
                    kept.push(lsn as u64);
                }
            }
            let one = event(0, 0).approx_bytes();
            proptest::prop_assert_eq!(window.len(), kept.len());
            proptest::prop_assert_eq!(window.bytes(), kept.len() * one);
            proptest::prop_assert_eq!(window.oldest().map(|e| e.cursor.lsn), kept.first().copied());
            let after: Vec<u64> = kept.iter().copied().filter(|l| *l > since).collect();
            proptest::prop_assert_eq!(lsns(&window, event(since, 0).cursor), after);
        }
    }
}
