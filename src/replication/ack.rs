//! Which LSN to confirm to PostgreSQL: only what is older than the replay window, never beyond
//! what was dispatched (docs/ARCHITECTURE.md, "Cursor and replay window").
//!
//! The relay notes checkpoints (time, LSN) as it goes: the commit LSN of each transaction it
//! dispatched, at its commit timestamp (confirming it makes a restarted relay read that last
//! transaction again), and the WAL end of idle keepalives, at the relay's clock. A checkpoint `replay.window` old is safe to confirm: everything before it
//! has left the window. Confirming it lets PostgreSQL recycle that WAL, while a restarted relay
//! still reads the whole window again from its slot.

use std::collections::VecDeque;
use std::time::Duration;

/// Checkpoints closer together than this are merged (bounds memory to window / 100 ms).
const GRANULARITY_US: i64 = 100_000;

/// The confirmable position, advanced as checkpoints age out of the window.
#[derive(Debug, Clone)]
pub struct AckPolicy {
    window_us: i64,
    /// (Unix µs, LSN) in LSN order, younger than the window.
    checkpoints: VecDeque<(i64, u64)>,
    /// The newest checkpoint that aged out: confirmable.
    aged: u64,
}

impl AckPolicy {
    /// A policy for `window` that starts confirmable at `start` (the slot's position).
    pub fn new(window: Duration, start: u64) -> AckPolicy {
        AckPolicy {
            window_us: i64::try_from(window.as_micros()).unwrap_or(i64::MAX),
            checkpoints: VecDeque::new(),
            aged: start,
        }
    }

    /// Notes that everything before `lsn` was dispatched, as of `time_us` (Unix µs).
    pub fn record(&mut self, time_us: i64, lsn: u64) {
        match self.checkpoints.back_mut() {
            Some(last) if lsn <= last.1 => {}
            Some(last) if time_us - last.0 < GRANULARITY_US => last.1 = lsn,
            _ => self.checkpoints.push_back((time_us, lsn)),
        }
    }

    /// The LSN that may be confirmed at `now_us`: the newest checkpoint at least one window
    /// old, but not past `oldest_kept` (the commit LSN of the oldest event still in the window,
    /// which a restarted relay must read again); and at least `evicted` (the commit LSN of the
    /// newest event the window's count or byte cap already dropped: memory no longer has what
    /// is before it, so the slot need not keep it either).
    pub fn confirmable(&mut self, now_us: i64, oldest_kept: Option<u64>, evicted: u64) -> u64 {
        let horizon = now_us.saturating_sub(self.window_us);
        while let Some(&(time, lsn)) = self.checkpoints.front() {
            if time > horizon {
                break;
            }
            self.aged = self.aged.max(lsn);
            self.checkpoints.pop_front();
        }
        oldest_kept
            .map_or(self.aged, |kept| self.aged.min(kept))
            .max(evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn only_checkpoints_older_than_the_window_are_confirmable() {
        let mut policy = AckPolicy::new(Duration::from_secs(60), 100);
        policy.record(10 * S, 200);
        policy.record(50 * S, 300);
        assert_eq!(policy.confirmable(60 * S, None, 0), 100, "nothing aged yet");
        assert_eq!(policy.confirmable(70 * S, None, 0), 200);
        assert_eq!(policy.confirmable(200 * S, None, 0), 300);
        let kept = policy.confirmable(200 * S, Some(250), 0);
        assert_eq!(kept, 250, "an older event is kept");
        let capped = policy.confirmable(200 * S, Some(450), 400);
        assert_eq!(capped, 400, "a cap dropped the event at 400 already");
    }

    #[test]
    fn close_checkpoints_merge_and_a_zero_window_confirms_at_once() {
        let mut policy = AckPolicy::new(Duration::ZERO, 0);
        for (i, lsn) in [10, 20, 30].into_iter().enumerate() {
            policy.record(S + i as i64, lsn);
        }
        assert_eq!(policy.checkpoints.len(), 1);
        assert_eq!(policy.confirmable(S + 5, None, 0), 30);
    }
}
