//! The churn's report: connects per phase with their time and failures, the relay's CPU and
//! memory, what presence did, and the pass/fail judgement.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::{self, Quantiles};

/// Connects of one phase (ramp or churn).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Phase {
    /// Wall time, seconds.
    pub seconds: f64,
    /// Sessions that reached `ready`.
    pub connects: u64,
    /// Connects that failed.
    pub failures: u64,
    /// Those by error (its first 80 characters).
    pub failure_kinds: BTreeMap<String, u64>,
    /// `connects / seconds`.
    pub per_second: f64,
    /// Socket created → `ready` read, of the connects that succeeded.
    pub connect_ms: Quantiles,
    /// The relay's CPU seconds over the phase (0 when its pid is unknown).
    pub relay_cpu_seconds: f64,
    /// `relay_cpu_seconds` per 1,000 connects (in the churn each comes with one close).
    pub relay_cpu_s_per_1000_connects: f64,
}

/// The relay's memory.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Memory {
    /// Pid measured (0 when unknown).
    pub pid: u32,
    /// RSS before the first session, bytes.
    pub rss_before_ramp_bytes: u64,
    /// RSS with every session held, before the churn, bytes.
    pub rss_after_ramp_bytes: u64,
    /// RSS at the end of the churn, bytes.
    pub rss_after_churn_bytes: u64,
    /// Peak RSS during the churn (sampled every 250 ms), bytes.
    pub max_rss_churn_bytes: u64,
}

/// The report of a churn run (`--out`).
#[derive(Debug, Default, Serialize)]
pub struct ChurnReport {
    /// The run's parameters (with the seed used).
    pub params: serde_json::Value,
    /// Opening the held sessions.
    pub ramp: Phase,
    /// The churn.
    pub churn: Phase,
    /// Sessions held when the churn ended.
    pub held_at_end: usize,
    /// Held sessions the relay closed (by close code, `dropped` without one).
    pub relay_closed: BTreeMap<String, u64>,
    /// `presence` frames the watchers received during the churn.
    pub presence_frames: u64,
    /// `relay_presence_online_users` at the end of the churn (`None`: no scrape).
    pub online_users: Option<f64>,
    /// Rows in `relay.presence` (`last_seen`) 2 s after every session closed.
    pub last_seen_rows: Option<i64>,
    /// Events inserted during the churn (`--rate`), and received by held sessions.
    pub events_sent: u64,
    /// Events received by the held sessions.
    pub events_received: u64,
    /// The relay's memory.
    pub relay: Memory,
    /// Why the run failed (empty when it passed).
    pub failures: Vec<String>,
}

/// One side's counts of connects: successes with their time, failures by kind.
pub(super) struct Tally {
    connects: u64,
    failures: BTreeMap<String, u64>,
    micros: Histogram<u64>,
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            connects: 0,
            failures: BTreeMap::new(),
            micros: report::histogram(),
        }
    }

    pub(super) fn record(&mut self, result: &Result<(), String>, took: Duration) {
        match result {
            Ok(()) => {
                self.connects += 1;
                let _ = self.micros.record((took.as_micros() as u64).max(1));
            }
            Err(e) => *self.failures.entry(report::error_kind(e)).or_default() += 1,
        }
    }

    pub(super) fn merge(&mut self, other: Tally) {
        self.connects += other.connects;
        for (kind, n) in other.failures {
            *self.failures.entry(kind).or_default() += n;
        }
        let _ = self.micros.add(&other.micros);
    }

    pub(super) fn phase(&self, seconds: f64, relay_cpu_seconds: f64) -> Phase {
        Phase {
            seconds,
            connects: self.connects,
            failures: self.failures.values().sum(),
            failure_kinds: self.failures.clone(),
            per_second: self.connects as f64 / seconds.max(1e-9),
            connect_ms: report::quantiles(&self.micros),
            relay_cpu_seconds,
            relay_cpu_s_per_1000_connects: relay_cpu_seconds * 1000.0 / self.connects.max(1) as f64,
        }
    }
}

/// Fills `failures`: no connect in the churn, any failed connect, any held session the relay
/// closed.
pub(super) fn judge(r: &mut ChurnReport) {
    if r.churn.connects == 0 {
        r.failures
            .push("no session connected during the churn".into());
    }
    let failed = r.ramp.failures + r.churn.failures;
    if failed > 0 {
        r.failures.push(format!("{failed} connects failed"));
    }
    let closed: u64 = r.relay_closed.values().sum();
    if closed > 0 {
        r.failures.push(format!(
            "the relay closed {closed} held sessions: {:?}",
            r.relay_closed
        ));
    }
}

/// The human summary printed at the end of a run.
pub fn summary(r: &ChurnReport) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut s = String::new();
    for (name, p) in [("ramp ", &r.ramp), ("churn", &r.churn)] {
        s += &format!(
            "{name}  {} connects in {:.2} s = {:.0}/s, {} failed; connect p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; relay cpu {:.2} s ({:.3} s per 1000 connects)\n",
            p.connects, p.seconds, p.per_second, p.failures, p.connect_ms.p50, p.connect_ms.p99,
            p.connect_ms.max, p.relay_cpu_seconds, p.relay_cpu_s_per_1000_connects
        );
        for (kind, n) in &p.failure_kinds {
            s += &format!("  {n:>8} × {kind}\n");
        }
    }
    s += &format!(
        "held at end            {} (closed by the relay: {:?})\n",
        r.held_at_end, r.relay_closed
    );
    s += &format!(
        "presence               {} frames to watchers during the churn, online users {:?} at its end, {:?} last_seen rows\n",
        r.presence_frames, r.online_users, r.last_seen_rows
    );
    if r.events_sent > 0 {
        s += &format!(
            "events                 {} inserted, {} received by held sessions\n",
            r.events_sent, r.events_received
        );
    }
    s += &format!(
        "relay process          pid {}, rss {:.1} MiB before the ramp, {:.1} after it, {:.1} after the churn, max {:.1} during it\n",
        r.relay.pid,
        mib(r.relay.rss_before_ramp_bytes),
        mib(r.relay.rss_after_ramp_bytes),
        mib(r.relay.rss_after_churn_bytes),
        mib(r.relay.max_rss_churn_bytes)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_divides_by_its_own_time_and_connects() {
        let mut a = Tally::new();
        a.record(&Ok(()), Duration::from_millis(2));
        a.record(&Err("connect: refused".into()), Duration::ZERO);
        let mut b = Tally::new();
        b.record(&Ok(()), Duration::from_millis(4));
        b.record(&Err("connect: refused".into()), Duration::ZERO);
        a.merge(b);
        let p = a.phase(0.5, 0.01);
        assert_eq!((p.connects, p.failures), (2, 2));
        assert_eq!(p.failure_kinds["connect: refused"], 2);
        assert!((p.per_second - 4.0).abs() < 1e-9);
        assert!((p.relay_cpu_s_per_1000_connects - 5.0).abs() < 1e-9);
        assert!(
            (p.connect_ms.p50 - 2.0).abs() < 0.01,
            "{}",
            p.connect_ms.p50
        );
        assert!((p.connect_ms.max - 4.0).abs() < 0.01);
    }
}
