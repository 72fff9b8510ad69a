//! The replay window: the most recent events in commit order, bounded by age
//! (`replay.window`), count (`replay.max_events`) and estimated bytes (`replay.max_bytes`).
//!
//! The router keeps one [`Window`] of every event (service-role resumes, eviction order) and a
//! per-user deque beside each user's sessions (user resumes find their events without scanning
//! anyone else's). Both are sorted by cursor, so "events after a cursor" is a binary search.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::config::ReplayConfig;
use crate::model::{Cursor, Event};

/// Events older than this many positions behind the newest lose their cached Supabase
/// encodings: every live session has long written them by then.
const DROP_ENCODINGS_AFTER: usize = 4096;

/// All recent events, oldest first.
#[derive(Debug)]
pub struct Window {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    window_us: i64,
    max_events: usize,
    max_bytes: usize,
}

impl Window {
    /// An empty window with `config`'s bounds.
    pub fn new(config: &ReplayConfig) -> Window {
        Window {
            events: VecDeque::new(),
            bytes: 0,
            window_us: i64::try_from(config.window.as_micros()).unwrap_or(i64::MAX),
            max_events: config.max_events,
            max_bytes: config.max_bytes,
        }
    }

    /// Appends the newest event (events arrive in cursor order).
    pub fn push(&mut self, event: Arc<Event>) {
        self.bytes += event.approx_bytes();
        self.events.push_back(event);
        if let Some(old) = self
            .events
            .len()
            .checked_sub(DROP_ENCODINGS_AFTER + 1)
            .and_then(|i| self.events.get(i))
        {
            old.drop_encodings();
        }
    }

    /// Removes, oldest first, every event that is out of bounds at `now_us` (Unix µs) and hands
    /// each to `evicted`: committed `replay.window` ago or earlier, or beyond the count or byte
    /// bound.
    pub fn evict(&mut self, now_us: i64, mut evicted: impl FnMut(Arc<Event>)) {
        let horizon = now_us.saturating_sub(self.window_us);
        while let Some(oldest) = self.events.front() {
            let out = oldest.commit_time_us <= horizon
                || self.events.len() > self.max_events
                || self.bytes > self.max_bytes;
            if !out {
                break;
            }
            if let Some(event) = self.events.pop_front() {
                self.bytes = self.bytes.saturating_sub(event.approx_bytes());
                evicted(event);
            }
        }
    }

    /// Forgets everything (a new WAL history).
    pub fn clear(&mut self) {
        self.events.clear();
        self.bytes = 0;
    }

    /// The events after `since`, oldest first.
    pub fn after(&self, since: Cursor) -> impl Iterator<Item = &Arc<Event>> {
        after(&self.events, since)
    }

    /// The oldest event kept.
    pub fn oldest(&self) -> Option<&Arc<Event>> {
        self.events.front()
    }

    /// Events kept.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
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
        window.evict(100_000_000, |e| gone.push(e.cursor.lsn));
        assert_eq!(gone, [1], "committed 60 s or more before now");
        for lsn in 4..=6 {
            window.push(event(lsn, 90_000_000));
        }
        window.evict(100_000_000, |e| gone.push(e.cursor.lsn));
        assert_eq!(gone, [1, 2, 3], "at most 3 events");
        assert_eq!(window.len(), 3);

        let one = event(1, 0).approx_bytes();
        let mut window = Window::new(&config(60, 100, 2 * one));
        for lsn in 1..=3 {
            window.push(event(lsn, 90_000_000));
        }
        window.evict(100_000_000, |_| {});
        assert_eq!(lsns(&window, Cursor::default()), [2, 3]);
        assert_eq!(window.bytes(), 2 * one);
    }

    #[test]
    fn a_zero_window_keeps_nothing() {
        let mut window = Window::new(&config(0, 100, usize::MAX));
        window.push(event(1, 5));
        let mut gone = 0;
        window.evict(5, |_| gone += 1);
        assert_eq!((gone, window.len()), (1, 0));
    }
}
