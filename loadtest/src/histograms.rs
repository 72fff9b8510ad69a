//! The relay's own latency histograms, read from its `/metrics` text: bucket counts between
//! two scrapes (summed over nodes), and their quantiles interpolated as Prometheus'
//! `histogram_quantile` does.

use serde::Serialize;

/// One of the relay's latency histograms over the run (bucket interpolation, as Prometheus'
/// `histogram_quantile`).
#[derive(Debug, Default, Clone, Serialize)]
pub struct RelayHistogram {
    /// Samples recorded during the run.
    pub count: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// The relay's own view, from `/metrics`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RelayMetrics {
    /// `relay_delivery_latency_seconds`: commit timestamp → frame written to the socket.
    pub delivery: RelayHistogram,
    /// `relay_replication_latency_seconds`: commit timestamp → row decoded by the relay (what
    /// PostgreSQL's WAL flush and walsender add before the relay sees the row).
    pub replication: RelayHistogram,
}

impl RelayMetrics {
    /// Both histograms between two scrapes.
    pub fn between(before: &str, after: &str) -> RelayMetrics {
        RelayMetrics {
            delivery: relay_histogram(before, after, "relay_delivery_latency_seconds"),
            replication: relay_histogram(before, after, "relay_replication_latency_seconds"),
        }
    }

    /// Both histograms over several nodes: each node's bucket counts between its two scrapes,
    /// summed bucket by bucket (the nodes share bucket bounds), then the quantiles.
    pub fn summed(scrapes: &[(&str, &str)]) -> RelayMetrics {
        RelayMetrics {
            delivery: summed_histogram(scrapes, "relay_delivery_latency_seconds"),
            replication: summed_histogram(scrapes, "relay_replication_latency_seconds"),
        }
    }
}

/// Cumulative bucket counts of histogram `name` in a `/metrics` text: (upper bound in seconds,
/// count), in order.
pub fn buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, tail) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, tail.trim().parse().ok()?))
        })
        .collect()
}

/// Histogram `name`'s quantiles between two scrapes.
pub fn relay_histogram(before: &str, after: &str, name: &str) -> RelayHistogram {
    summed_histogram(&[(before, after)], name)
}

/// Histogram `name` summed over several nodes' scrape pairs.
fn summed_histogram(scrapes: &[(&str, &str)], name: &str) -> RelayHistogram {
    let mut total: Vec<(f64, f64)> = Vec::new();
    for (before, after) in scrapes {
        let b = buckets(before, name);
        for (le, n) in buckets(after, name) {
            let n = n - b.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
            match total.iter_mut().find(|x| x.0 == le) {
                Some(slot) => slot.1 += n,
                None => total.push((le, n)),
            }
        }
    }
    total.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = total.last().map_or(0.0, |x| x.1);
    RelayHistogram {
        count,
        p50_ms: bucket_quantile(&total, 0.5) * 1000.0,
        p99_ms: bucket_quantile(&total, 0.99) * 1000.0,
    }
}

/// Linear interpolation inside the bucket holding quantile `q` (Prometheus semantics).
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let within = if n > prev.1 {
                (rank - prev.1) / (n - prev.1)
            } else {
                0.0
            };
            return prev.0 + (le - prev.0) * within;
        }
        prev = (le, n);
    }
    prev.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_quantiles_interpolate_like_prometheus() {
        let text = "relay_delivery_latency_seconds_bucket{le=\"0.001\"} 50\n\
                    relay_delivery_latency_seconds_bucket{le=\"0.002\"} 100\n\
                    relay_delivery_latency_seconds_bucket{le=\"+Inf\"} 100\n";
        let h = relay_histogram("", text, "relay_delivery_latency_seconds");
        assert_eq!(h.count, 100.0);
        assert!((h.p50_ms - 1.0).abs() < 1e-9);
        assert!((h.p99_ms - 1.98).abs() < 1e-9);
    }

    #[test]
    fn node_histograms_are_summed_bucket_by_bucket() {
        let a = "relay_delivery_latency_seconds_bucket{le=\"0.001\"} 90\n\
                 relay_delivery_latency_seconds_bucket{le=\"0.002\"} 100\n\
                 relay_delivery_latency_seconds_bucket{le=\"+Inf\"} 100\n";
        let b = "relay_delivery_latency_seconds_bucket{le=\"0.001\"} 0\n\
                 relay_delivery_latency_seconds_bucket{le=\"0.002\"} 100\n\
                 relay_delivery_latency_seconds_bucket{le=\"+Inf\"} 100\n";
        let m = RelayMetrics::summed(&[("", a), ("", b)]);
        assert_eq!(m.delivery.count, 200.0);
        // 90 of 200 samples under 1 ms: the median is in the second bucket, not the mean of
        // the nodes' medians.
        let expected = 1.0 + 10.0 / 110.0;
        assert!(
            (m.delivery.p50_ms - expected).abs() < 1e-9,
            "{}",
            m.delivery.p50_ms
        );
    }
}
