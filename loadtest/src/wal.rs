//! `--sample-wal`: how much WAL the relay's slot keeps on the primary during the run. Every
//! second: `pg_current_wal_lsn()` and the slot's `restart_lsn` and `confirmed_flush_lsn`; the
//! report gives the WAL rate and the retained bytes as bytes and as seconds of WAL.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Retained WAL over the run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct WalReport {
    /// Samples taken (one a second).
    pub samples: u64,
    /// WAL written per second over the sampling, bytes/s.
    pub rate_bytes_per_second: f64,
    /// Largest `pg_current_wal_lsn() - restart_lsn` (WAL the slot keeps), bytes.
    pub max_retained_bytes: u64,
    /// Mean of the same over the samples, bytes.
    pub mean_retained_bytes: f64,
    /// Largest `pg_current_wal_lsn() - confirmed_flush_lsn` (not yet confirmed), bytes.
    pub max_unconfirmed_bytes: u64,
    /// `max_retained_bytes / rate_bytes_per_second`: seconds of WAL kept at the peak.
    pub max_retained_seconds: f64,
    /// `max_unconfirmed_bytes / rate_bytes_per_second`, seconds.
    pub max_unconfirmed_seconds: f64,
}

const SQL: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8, \
     (pg_current_wal_lsn() - restart_lsn)::float8, \
     (pg_current_wal_lsn() - confirmed_flush_lsn)::float8 \
     FROM pg_replication_slots WHERE slot_name = $1";

/// Samples slot `slot` once a second on `database_url` until `stop`; `None` when it cannot
/// connect. Starts counting at the first sample (call it when the load starts).
pub async fn sample(
    database_url: String,
    slot: String,
    stop: CancellationToken,
) -> Option<WalReport> {
    let client = engagement_relay::db::connect(&database_url).await.ok()?;
    let mut report = WalReport::default();
    let mut first: Option<(Instant, f64)> = None;
    let mut last = (Instant::now(), 0.0);
    let mut sum = 0.0;
    loop {
        if let Ok(Some(row)) = client.query_opt(SQL, &[&slot]).await {
            let now: f64 = row
                .try_get::<_, Option<f64>>(0)
                .ok()
                .flatten()
                .unwrap_or(0.0);
            let retained = row
                .try_get::<_, Option<f64>>(1)
                .ok()
                .flatten()
                .unwrap_or(0.0)
                .max(0.0) as u64;
            let unconfirmed = row
                .try_get::<_, Option<f64>>(2)
                .ok()
                .flatten()
                .unwrap_or(0.0)
                .max(0.0) as u64;
            first.get_or_insert((Instant::now(), now));
            last = (Instant::now(), now);
            report.samples += 1;
            sum += retained as f64;
            report.max_retained_bytes = report.max_retained_bytes.max(retained);
            report.max_unconfirmed_bytes = report.max_unconfirmed_bytes.max(unconfirmed);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    if let Some((t0, lsn0)) = first {
        let secs = last.0.duration_since(t0).as_secs_f64();
        if secs > 0.0 {
            report.rate_bytes_per_second = (last.1 - lsn0) / secs;
        }
    }
    report.mean_retained_bytes = sum / report.samples.max(1) as f64;
    if report.rate_bytes_per_second > 0.0 {
        report.max_retained_seconds =
            report.max_retained_bytes as f64 / report.rate_bytes_per_second;
        report.max_unconfirmed_seconds =
            report.max_unconfirmed_bytes as f64 / report.rate_bytes_per_second;
    }
    Some(report)
}
