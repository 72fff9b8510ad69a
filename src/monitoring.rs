//! Database health, as the deployment procedures ask ("Monitoring and Alerts"): every
//! `monitoring.interval` the streamed tables' size, index size, live and dead tuples and scans
//! are read on the API's pool (never the replication connection, which must not wait behind a
//! statistics query) and exported as `relay_table_*` metrics ([`crate::metrics`]).
//!
//! Shape as `doctor`'s: one query ([`TABLE_STATS_SQL`]) → facts ([`TableStats`]) → export
//! ([`export`]). Each poll also samples the pool itself ([`pool_gauges`], as every API request
//! does). The statistics come from `pg_stat_user_tables`, the source of the
//! `engagement_events_performance` view, because that view (service role only) covers one
//! table and the pool's user is whatever `database.url` names. A failed poll keeps the last
//! values and logs a warning at most every [`WARN_EVERY`]; the task ends on shutdown.

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use metrics::{counter, gauge};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics as m;
use crate::tables::TableConfig;

/// Least time between two warnings about failing polls.
pub const WARN_EVERY: Duration = Duration::from_secs(600);

/// Size, tuples and scans of the tables named by `$1` (schemas) and `$2` (names), pairwise;
/// tables that do not exist are left out. Sizes and tuples as `float8`, scans as `int8`
/// (`idx_scan` NULL for a table without an index).
pub const TABLE_STATS_SQL: &str = "SELECT n.nspname::text, c.relname::text, \
       pg_table_size(c.oid)::float8, pg_indexes_size(c.oid)::float8, \
       s.n_live_tup::float8, s.n_dead_tup::float8, s.seq_scan, s.idx_scan \
     FROM unnest($1::text[], $2::text[]) AS t(schema_name, table_name) \
     JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name \
     JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name \
     LEFT JOIN pg_catalog.pg_stat_user_tables s ON s.relid = c.oid";

/// One table's health facts, as read by [`TABLE_STATS_SQL`].
#[derive(Debug, Clone, PartialEq)]
pub struct TableStats {
    /// The `table` label ([`table_label`]).
    pub table: String,
    /// `pg_table_size`, bytes.
    pub size_bytes: f64,
    /// `pg_indexes_size`, bytes.
    pub index_size_bytes: f64,
    /// `n_live_tup` (absent without statistics).
    pub live: Option<f64>,
    /// `n_dead_tup`.
    pub dead: Option<f64>,
    /// `seq_scan`.
    pub seq_scans: Option<i64>,
    /// `idx_scan` (absent for a table without an index).
    pub index_scans: Option<i64>,
}

/// The `table` label of a `[[tables]]` entry: its name, qualified (`schema.table`) outside
/// `public`.
pub fn table_label(schema: &str, table: &str) -> String {
    if schema == "public" {
        table.to_string()
    } else {
        format!("{schema}.{table}")
    }
}

/// Every `every` (first at once), until `stop`: reads the health of `tables` on `pool` and
/// exports it. Never panics; a failed poll is logged (rate-limited) and retried next tick.
pub async fn run(pool: Pool, tables: Vec<TableConfig>, every: Duration, stop: CancellationToken) {
    let schemas: Vec<String> = tables.iter().map(|t| t.schema.clone()).collect();
    let names: Vec<String> = tables.iter().map(|t| t.table.clone()).collect();
    let mut warned = Warnings::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let polled = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = poll(&pool, &schemas, &names) => r,
        };
        pool_gauges(&pool);
        match polled {
            Ok(stats) => {
                stats.iter().for_each(export);
                if let Some(failed) = warned.recovered() {
                    info!(
                        failed,
                        "database health poll recovered after {failed} failed polls"
                    );
                }
            }
            Err(e) => {
                if let Some(failed) = warned.failed(Instant::now()) {
                    warn!(
                        failed,
                        "database health poll failed ({e}); the relay_table_* metrics keep their last values ({failed} failed polls since the last warning)"
                    );
                }
            }
        }
    }
}

/// One poll: a pooled connection, [`TABLE_STATS_SQL`], the rows as facts.
async fn poll(
    pool: &Pool,
    schemas: &[String],
    names: &[String],
) -> Result<Vec<TableStats>, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(TABLE_STATS_SQL, &[&schemas, &names])
        .await
        .map_err(|e| crate::db::describe(&e))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let read = || -> Result<TableStats, tokio_postgres::Error> {
            Ok(TableStats {
                table: table_label(row.try_get(0)?, row.try_get(1)?),
                size_bytes: row.try_get(2)?,
                index_size_bytes: row.try_get(3)?,
                live: row.try_get(4)?,
                dead: row.try_get(5)?,
                seq_scans: row.try_get(6)?,
                index_scans: row.try_get(7)?,
            })
        };
        out.push(read().map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// Sets the pool gauges from `pool.status()`: `in_use` = open − idle, `idle`, `waiting`.
pub fn pool_gauges(pool: &Pool) {
    let status = pool.status();
    let (in_use, idle) = pool_counts(status.size, status.available);
    gauge!(m::DB_POOL_CONNECTIONS, "state" => "in_use").set(in_use as f64);
    gauge!(m::DB_POOL_CONNECTIONS, "state" => "idle").set(idle as f64);
    gauge!(m::DB_POOL_WAITING).set(status.waiting as f64);
}

/// `(in_use, idle)` of a pool of `size` open connections of which `available` are idle
/// (deadpool may briefly report more available than open: never negative).
pub fn pool_counts(size: usize, available: usize) -> (usize, usize) {
    let idle = available.min(size);
    (size - idle, idle)
}

/// Sets the `relay_table_*` metrics of one table.
pub fn export(stats: &TableStats) {
    let table = stats.table.clone();
    gauge!(m::TABLE_SIZE_BYTES, "table" => table.clone()).set(stats.size_bytes);
    gauge!(m::TABLE_INDEX_SIZE_BYTES, "table" => table.clone()).set(stats.index_size_bytes);
    for (state, value) in [("live", stats.live), ("dead", stats.dead)] {
        if let Some(value) = value {
            gauge!(m::TABLE_TUPLES, "table" => table.clone(), "state" => state).set(value);
        }
    }
    for (kind, value) in [("seq", stats.seq_scans), ("index", stats.index_scans)] {
        if let Some(value) = value.and_then(scan_count) {
            counter!(m::TABLE_SCANS, "table" => table.clone(), "kind" => kind).absolute(value);
        }
    }
}

/// A scan counter as a counter value (a negative one, which PostgreSQL does not report, is
/// left out).
pub fn scan_count(value: i64) -> Option<u64> {
    u64::try_from(value).ok()
}

/// Rate limit of the failure warnings: the first failure warns at once, later ones at most
/// every [`WARN_EVERY`], each with the number of failures since the last warning.
#[derive(Debug, Default)]
pub struct Warnings {
    last: Option<Instant>,
    failed: u64,
    since_ok: u64,
}

impl Warnings {
    /// Records a failure at `now`; `Some(failures since the last warning)` when it is time to
    /// warn.
    pub fn failed(&mut self, now: Instant) -> Option<u64> {
        self.failed += 1;
        self.since_ok += 1;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.failed))
    }

    /// Records a success; `Some(failures before it)` after a run of failures.
    pub fn recovered(&mut self) -> Option<u64> {
        self.failed = 0;
        self.last = None;
        Some(std::mem::take(&mut self.since_ok)).filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_of_public_keep_their_name_others_are_qualified() {
        assert_eq!(
            table_label("public", "engagement_events"),
            "engagement_events"
        );
        assert_eq!(table_label("audit", "events"), "audit.events");
    }

    #[test]
    fn pool_counts_split_open_connections_and_never_go_negative() {
        assert_eq!(pool_counts(0, 0), (0, 0));
        assert_eq!(pool_counts(8, 3), (5, 3));
        assert_eq!(pool_counts(2, 2), (0, 2));
        assert_eq!(pool_counts(1, 3), (0, 1));
    }

    #[test]
    fn scan_counts_are_never_negative() {
        assert_eq!(scan_count(0), Some(0));
        assert_eq!(scan_count(42), Some(42));
        assert_eq!(scan_count(-1), None);
    }

    #[test]
    fn failures_warn_first_then_at_most_every_ten_minutes_and_recovery_reports_the_run() {
        let mut w = Warnings::default();
        let t0 = Instant::now();
        assert_eq!(w.failed(t0), Some(1));
        assert_eq!(w.failed(t0 + Duration::from_secs(60)), None);
        assert_eq!(w.failed(t0 + Duration::from_secs(120)), None);
        assert_eq!(w.failed(t0 + WARN_EVERY), Some(3));
        assert_eq!(w.recovered(), Some(4));
        assert_eq!(w.recovered(), None);
        // After a recovery the next failure warns at once again.
        assert_eq!(w.failed(t0 + WARN_EVERY + Duration::from_secs(1)), Some(1));
    }
}
