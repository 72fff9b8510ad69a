//! Turns what the sessions saw into the report: loss, duplicates, leaks, latency quantiles,
//! the relay's CPU and memory, and its own latency histogram from `/metrics`.

use anyhow::Context;
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

pub use crate::histograms::RelayMetrics;
use crate::load::Sent;
use crate::sessions::SessionOutcome;

/// Latency quantiles, milliseconds.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// The connect ramp: every session opened and its `ready` frame read.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Ramp {
    /// Sessions connected over `wss://`.
    pub tls: bool,
    /// Sessions that reached `ready`.
    pub connected: usize,
    /// From the first connect to the last `ready` (or the ramp's 120 s bound), seconds.
    pub seconds: f64,
    /// `connected / seconds`: the connect rate achieved.
    pub per_second: f64,
    /// The relay's CPU seconds over the ramp (0 when its pid is unknown).
    pub relay_cpu_seconds: f64,
}

/// The steady phase: from a second after the ramp to the end of the drain, before any session
/// closes, so neither the connect ramp nor the closing handshakes are in its CPU.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Steady {
    /// Wall time of the phase, seconds.
    pub seconds: f64,
    /// The relay's CPU seconds over the phase (summed over nodes; 0 when no pid is known).
    pub relay_cpu_seconds: f64,
    /// `relay_cpu_seconds / sent`, microseconds per committed event.
    pub cpu_us_per_event: f64,
    /// `relay_cpu_seconds / delivered`, microseconds per delivered event (one event delivered
    /// to n sessions counts n).
    pub cpu_us_per_delivery: f64,
    /// The relay's RSS growth over the phase, bytes: mostly the replay window filling.
    pub rss_growth_bytes: u64,
    /// `relay_replay_window_bytes` at the end (the window's own estimate), bytes.
    pub replay_window_bytes: u64,
}

impl Steady {
    /// The phase between the samples `start` and `end` (one per node), `seconds` apart;
    /// `metrics` are the nodes' `/metrics` texts at its end (their replay windows are summed).
    pub fn between(
        start: &[crate::procstat::Sample],
        end: &[crate::procstat::Sample],
        seconds: f64,
        (sent, delivered): (u64, u64),
        metrics: &[&str],
    ) -> Steady {
        let cpu: f64 = start
            .iter()
            .zip(end)
            .map(|(s, e)| (e.cpu_seconds - s.cpu_seconds).max(0.0))
            .sum();
        let rss: u64 = start
            .iter()
            .zip(end)
            .map(|(s, e)| e.rss_bytes.saturating_sub(s.rss_bytes))
            .sum();
        let per = |n: u64| cpu * 1e6 / n.max(1) as f64;
        Steady {
            seconds,
            relay_cpu_seconds: cpu,
            cpu_us_per_event: per(sent),
            cpu_us_per_delivery: per(delivered),
            rss_growth_bytes: rss,
            replay_window_bytes: metrics
                .iter()
                .filter_map(|m| crate::nodes::gauge(m, "relay_replay_window_bytes"))
                .sum::<f64>() as u64,
        }
    }
}

/// The relay process over the run (runs with harness workers or several nodes: CPU and RSS
/// summed over the nodes, the peak the largest node's; each node is in [`Report::nodes`]).
#[derive(Debug, Default, Clone, Serialize)]
pub struct RelayUsage {
    /// Pid measured (0 when unknown).
    pub pid: u32,
    /// CPU seconds used from the start of the ramp to the end of the drain.
    pub cpu_seconds: f64,
    /// Peak resident set size, bytes.
    pub max_rss_bytes: u64,
    /// RSS before the first session connected, bytes.
    pub rss_before_ramp_bytes: u64,
    /// RSS once every session was connected, before any event, bytes.
    pub rss_after_ramp_bytes: u64,
    /// (after − before) / connected sessions, bytes.
    pub rss_per_connection_bytes: u64,
    /// RSS `--settle` after every session closed, bytes (0 without `--settle`).
    pub rss_settled_bytes: u64,
}

/// One node of a multi-node run (`--nodes`, `--target`).
#[derive(Debug, Default, Clone, Serialize)]
pub struct NodeUsage {
    /// Its WebSocket base URL.
    pub url: String,
    /// Pid measured (0 when unknown).
    pub pid: u32,
    /// Sessions assigned to it that reached `ready`.
    pub sessions: usize,
    /// CPU seconds from the start of the ramp to the end of the drain.
    pub cpu_seconds: f64,
    /// Peak resident set size, bytes.
    pub max_rss_bytes: u64,
    /// RSS before the first session connected, bytes.
    pub rss_before_ramp_bytes: u64,
    /// RSS once every session was connected, before any event, bytes.
    pub rss_after_ramp_bytes: u64,
    /// (after − before) / its connected sessions, bytes.
    pub rss_per_connection_bytes: u64,
}

/// The whole report (`--out report.json`).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Events committed by the load generator.
    pub sent: u64,
    /// Deliveries expected: each event once per session of its user, plus once per firehose.
    pub expected: u64,
    /// Distinct expected events received.
    pub delivered: u64,
    /// Expected deliveries never received.
    pub lost: u64,
    /// Events received more than once by the same session.
    pub duplicates: u64,
    /// Events received by a session whose `sub` is not the row's `user_id`.
    pub leaks: u64,
    /// Sessions that never reached `ready`.
    pub connection_errors: u64,
    /// Those sessions by error (its first 80 characters), with counts.
    pub connection_error_kinds: BTreeMap<String, u64>,
    /// The connect ramp.
    pub ramp: Ramp,
    /// The steady phase (the insert load and the drain).
    pub steady: Steady,
    /// Sessions closed by the relay, by close code.
    pub closes: BTreeMap<String, u64>,
    /// Commit timestamp → client receive.
    pub latency_ms: Quantiles,
    /// Insert sent → client receive.
    pub send_latency_ms: Quantiles,
    /// Relay CPU and memory.
    pub relay: RelayUsage,
    /// The relay's own histograms.
    pub relay_metrics: RelayMetrics,
    /// The run's parameters.
    pub params: serde_json::Value,
    /// Sessions whose events of one user arrived out of sequence (commit) order.
    pub out_of_order: u64,
    /// Resumes (`since`) on another node after a node dropped a session.
    pub resumes: u64,
    /// Resumes answered `complete:false`.
    pub incomplete_resumes: u64,
    /// Per node (multi-node runs only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeUsage>,
    /// Harness worker processes (0: the sessions ran in this process).
    pub harness_workers: usize,
    /// The workers' RSS summed after the ramp, bytes.
    pub harness_rss_bytes: u64,
    /// `--kill-publisher-after`: the takeover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub takeover: Option<crate::nodes::Takeover>,
    /// `--sample-wal`: WAL the slot retained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<crate::wal::WalReport>,
    /// Why the run failed (empty when it passed).
    pub failures: Vec<String>,
}

/// Compares what each session received with what it should have.
pub fn account(
    report: &mut Report,
    sent: &Sent,
    outcomes: &[SessionOutcome],
    users: &[Option<usize>],
) {
    let mut per_user: Vec<Vec<u64>> = Vec::new();
    for (seq, &owner) in sent.owner.iter().enumerate() {
        let owner = owner as usize;
        if per_user.len() <= owner {
            per_user.resize_with(owner + 1, Vec::new);
        }
        per_user[owner].push(seq as u64);
    }
    report.sent = sent.owner.len() as u64;
    let mut commit = histogram();
    let mut send = histogram();
    for (outcome, user) in outcomes.iter().zip(users) {
        if !outcome.connected {
            report.connection_errors += 1;
            let kind = error_kind(outcome.error.as_deref().unwrap_or("unknown"));
            *report.connection_error_kinds.entry(kind).or_default() += 1;
            continue;
        }
        if let Some(code) = outcome.close_code {
            *report.closes.entry(code.to_string()).or_default() += 1;
        }
        report.leaks += outcome.leaks;
        report.resumes += u64::from(outcome.resumes);
        report.incomplete_resumes += u64::from(outcome.incomplete_resumes);
        if outcome.seqs.windows(2).any(|w| w[1] < w[0]) {
            report.out_of_order += 1;
        }
        let mut got = outcome.seqs.clone();
        got.sort_unstable();
        let before = got.len();
        got.dedup();
        report.duplicates += (before - got.len()) as u64;
        let expected: &[u64] = match user {
            Some(u) => per_user.get(*u).map(Vec::as_slice).unwrap_or(&[]),
            None => &[],
        };
        let expected_len = if user.is_some() {
            expected.len()
        } else {
            sent.owner.len()
        };
        let received = if user.is_some() {
            expected
                .iter()
                .filter(|s| got.binary_search(s).is_ok())
                .count()
        } else {
            got.iter()
                .filter(|s| (**s as usize) < sent.owner.len())
                .count()
        };
        report.expected += expected_len as u64;
        report.delivered += received as u64;
        report.lost += (expected_len - received) as u64;
        for &us in &outcome.commit_latency_us {
            let _ = commit.record(us.max(1) as u64);
        }
        for &us in &outcome.send_latency_us {
            let _ = send.record(us.max(1) as u64);
        }
    }
    report.latency_ms = quantiles(&commit);
    report.send_latency_ms = quantiles(&send);
}

// Constant bounds (1 µs to 1 h, 3 significant figures) that hdrhistogram accepts: the error
// case cannot happen.
#[allow(clippy::expect_used)]
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

pub(crate) fn quantiles(h: &Histogram<u64>) -> Quantiles {
    if h.is_empty() {
        return Quantiles::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Quantiles {
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

/// Adds the run's failures: failed insert batches, leaks, loss, duplicates, sessions out of
/// order or never connected, incomplete resumes, and (unless `no_slo`) a p99 above `slo_ms`.
pub fn judge(report: &mut Report, sent: &Sent, slo_ms: f64, no_slo: bool) {
    if sent.failed_batches > 0 {
        report
            .failures
            .push(format!("{} insert batches failed", sent.failed_batches));
    }
    for (what, n) in [
        ("leaks", report.leaks),
        ("lost", report.lost),
        ("duplicates", report.duplicates),
        ("sessions saw events out of order", report.out_of_order),
        ("resumes were incomplete", report.incomplete_resumes),
    ] {
        if n > 0 {
            report.failures.push(format!("{n} {what}"));
        }
    }
    if report.connection_errors > 0 {
        report.failures.push(format!(
            "{} sessions never connected",
            report.connection_errors
        ));
    }
    if !no_slo && report.latency_ms.p99 > slo_ms {
        report.failures.push(format!(
            "p99 {:.2} ms is above --slo-ms {}",
            report.latency_ms.p99, slo_ms
        ));
    }
}

/// The human summary printed at the end of a run.
pub fn summary(r: &Report) -> String {
    let q = |q: &Quantiles| {
        format!(
            "{:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            q.p50, q.p90, q.p99, q.p999, q.max
        )
    };
    let mut s = String::new();
    s += &format!("events sent            {:>12}\n", r.sent);
    s += &format!("deliveries expected    {:>12}\n", r.expected);
    s += &format!("delivered              {:>12}\n", r.delivered);
    s += &format!("lost                   {:>12}\n", r.lost);
    s += &format!("duplicates             {:>12}\n", r.duplicates);
    s += &format!("leaks                  {:>12}\n", r.leaks);
    s += &format!("connection errors      {:>12}\n", r.connection_errors);
    for (kind, n) in &r.connection_error_kinds {
        s += &format!("  {n:>8} × {kind}\n");
    }
    s += &format!(
        "connect ramp           {} sessions ({}) in {:.2} s = {:.0}/s, relay cpu {:.2} s\n",
        r.ramp.connected,
        if r.ramp.tls { "wss" } else { "ws" },
        r.ramp.seconds,
        r.ramp.per_second,
        r.ramp.relay_cpu_seconds
    );
    s += &format!(
        "steady phase           {:.1} s, relay cpu {:.2} s = {:.1} µs per event, {:.1} µs per delivery\n",
        r.steady.seconds,
        r.steady.relay_cpu_seconds,
        r.steady.cpu_us_per_event,
        r.steady.cpu_us_per_delivery
    );
    s += &format!(
        "                       rss grew {:.1} MiB (replay window {:.1} MiB by its own count)\n",
        r.steady.rss_growth_bytes as f64 / 1048576.0,
        r.steady.replay_window_bytes as f64 / 1048576.0
    );
    s += &format!("closes by code         {:>12}\n", format!("{:?}", r.closes));
    s += "latency (ms)               p50      p90      p99    p99.9      max\n";
    s += &format!("  commit → receive  {}\n", q(&r.latency_ms));
    s += &format!("  send → receive    {}\n", q(&r.send_latency_ms));
    for (what, h) in [
        ("relay: commit → sent ", &r.relay_metrics.delivery),
        ("relay: commit → read ", &r.relay_metrics.replication),
    ] {
        s += &format!(
            "{what}  p50 {:.2} ms, p99 {:.2} ms over {} samples\n",
            h.p50_ms, h.p99_ms, h.count
        );
    }
    s += &format!(
        "relay process          pid {}, cpu {:.2} s, max rss {:.1} MiB, {} B per connection\n",
        r.relay.pid,
        r.relay.cpu_seconds,
        r.relay.max_rss_bytes as f64 / 1048576.0,
        r.relay.rss_per_connection_bytes
    );
    for (i, n) in r.nodes.iter().enumerate() {
        s += &format!(
            "node {i} {:<22} pid {}, {} sessions, cpu {:.2} s, max rss {:.1} MiB, {} B per connection\n",
            n.url,
            n.pid,
            n.sessions,
            n.cpu_seconds,
            n.max_rss_bytes as f64 / 1048576.0,
            n.rss_per_connection_bytes
        );
    }
    if r.harness_workers > 0 {
        s += &format!(
            "harness                {} worker processes, rss {:.1} MiB after the ramp\n",
            r.harness_workers,
            r.harness_rss_bytes as f64 / 1048576.0
        );
    }
    if r.out_of_order + r.resumes + r.incomplete_resumes > 0 {
        s += &format!(
            "order / resumes        {} sessions out of order, {} resumes ({} incomplete)\n",
            r.out_of_order, r.resumes, r.incomplete_resumes
        );
    }
    if let Some(t) = &r.takeover {
        s += &format!(
            "takeover               node {} killed; node {:?} publisher after {:?} s, first publish after {:?} s\n",
            t.killed_node, t.new_publisher, t.to_publisher_seconds, t.to_first_publish_seconds
        );
    }
    if let Some(w) = &r.wal {
        s += &format!(
            "retained WAL           {:.0} B/s written; max retained {} B = {:.2} s, mean {:.0} B; max unconfirmed {} B = {:.2} s ({} samples)\n",
            w.rate_bytes_per_second,
            w.max_retained_bytes,
            w.max_retained_seconds,
            w.mean_retained_bytes,
            w.max_unconfirmed_bytes,
            w.max_unconfirmed_seconds,
            w.samples
        );
    }
    if r.relay.rss_settled_bytes > 0 {
        s += &format!(
            "relay memory           rss {:.1} MiB before the ramp, {:.1} MiB settled after the sessions closed\n",
            r.relay.rss_before_ramp_bytes as f64 / 1048576.0,
            r.relay.rss_settled_bytes as f64 / 1048576.0
        );
    }
    s
}

/// Raw commit → receive latencies of every session, ms (for the plot).
pub fn latencies_ms(outcomes: &[SessionOutcome]) -> Vec<f64> {
    outcomes
        .iter()
        .flat_map(|o| o.commit_latency_us.iter().map(|&us| us as f64 / 1000.0))
        .collect()
}

/// An error's kind for counting: its first 80 characters.
pub(crate) fn error_kind(error: &str) -> String {
    error.chars().take(80).collect()
}

/// A flag's value that `--spawn-dev` (or whatever `filled_by` names) would have set, or the
/// error naming both.
pub fn required(value: &Option<String>, flag: &str, filled_by: &str) -> anyhow::Result<String> {
    value
        .clone()
        .with_context(|| format!("{flag} (or {filled_by}) is required"))
}

/// How every run ends: its summary on stdout, the whole report as JSON in `out` (when given),
/// one `FAIL:` line per failure on stderr; true when there was none.
///
/// Errors: `out` cannot be written.
pub fn conclude(
    summary: &str,
    report: &impl serde::Serialize,
    failures: &[String],
    out: Option<&std::path::Path>,
) -> anyhow::Result<bool> {
    println!("{summary}");
    if let Some(path) = out {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for failure in failures {
        eprintln!("FAIL: {failure}");
    }
    Ok(failures.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procstat::Sample;

    #[test]
    fn the_steady_phase_divides_its_cpu_by_events_and_by_deliveries() {
        let at = |cpu, rss| Sample {
            cpu_seconds: cpu,
            rss_bytes: rss,
        };
        // Two nodes: 1.5 s and 0.5 s of CPU over the phase; one node's RSS shrank.
        let s = Steady::between(
            &[at(10.0, 100), at(3.0, 500)],
            &[at(11.5, 400), at(3.5, 200)],
            30.0,
            (1_000, 4_000),
            &[
                "relay_replay_window_bytes 7000",
                "relay_replay_window_bytes 3000",
            ],
        );
        assert!((s.relay_cpu_seconds - 2.0).abs() < 1e-9);
        assert!((s.cpu_us_per_event - 2_000.0).abs() < 1e-6);
        assert!((s.cpu_us_per_delivery - 500.0).abs() < 1e-6);
        assert_eq!(s.rss_growth_bytes, 300);
        assert_eq!(s.replay_window_bytes, 10_000);
    }

    #[test]
    fn order_and_resumes_are_counted() {
        let sent = Sent {
            owner: vec![0, 0, 0],
            failed_batches: 0,
        };
        let a = SessionOutcome {
            connected: true,
            seqs: vec![0, 2, 1],
            resumes: 1,
            incomplete_resumes: 1,
            ..Default::default()
        };
        let mut r = Report::default();
        account(&mut r, &sent, &[a], &[Some(0)]);
        assert_eq!((r.lost, r.duplicates, r.out_of_order), (0, 0, 1));
        assert_eq!((r.resumes, r.incomplete_resumes), (1, 1));
    }

    #[test]
    fn loss_duplicates_and_leaks_are_counted_per_session() {
        let sent = Sent {
            owner: vec![0, 1, 0, 1],
            failed_batches: 0,
        };
        let a = SessionOutcome {
            connected: true,
            seqs: vec![0, 2, 2],
            ..Default::default()
        };
        let b = SessionOutcome {
            connected: true,
            seqs: vec![1],
            leaks: 1,
            ..Default::default()
        };
        let fire = SessionOutcome {
            connected: true,
            seqs: vec![0, 1, 2, 3],
            ..Default::default()
        };
        let mut r = Report::default();
        account(&mut r, &sent, &[a, b, fire], &[Some(0), Some(1), None]);
        assert_eq!((r.sent, r.expected, r.delivered), (4, 8, 7));
        assert_eq!((r.lost, r.duplicates, r.leaks), (1, 1, 1));
    }
}
