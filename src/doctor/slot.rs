//! The replication slot `database.slot`: what it is, who holds it, whether PostgreSQL still
//! keeps its WAL, how far its confirmed position lags and how much WAL it retains.
//!
//! Source: PostgreSQL 15 docs, view `pg_replication_slots`
//! (<https://www.postgresql.org/docs/15/view-pg-replication-slots.html>): `wal_status` is
//! `reserved` (within `max_wal_size`), `extended` (beyond it, kept for the slot or
//! `wal_keep_size`), `unreserved` (WAL will be removed at the next checkpoint) or `lost`
//! (removed: the slot is unusable); `safe_wal_size` is the WAL that can still be written
//! before the slot risks `lost` (NULL when `max_slot_wal_keep_size` is -1).

use tokio_postgres::Client;

use super::report::{format_bytes, Check};
use super::{literal, Options, SLOT, SLOT_LAG, SLOT_RETAINED};
use crate::catalog::{evaluate, Mismatch, SlotKind};
use crate::replication::stream::APPLICATION_NAME;

/// One row of `pg_replication_slots` with byte distances from `pg_current_wal_lsn()`.
#[derive(Debug, Clone, Default)]
pub(super) struct SlotFacts {
    pub slot_type: String,
    pub plugin: Option<String>,
    /// The slot's database is the connected one.
    pub same_database: bool,
    pub temporary: bool,
    pub active: bool,
    pub active_pid: Option<i32>,
    /// `application_name` of the holding session, when visible.
    pub holder_application: Option<String>,
    /// `user application from address` of the holding session, when visible.
    pub holder: Option<String>,
    pub wal_status: Option<String>,
    /// Bytes, `None` when unlimited.
    pub safe_wal_size: Option<i64>,
    /// `pg_current_wal_lsn() − confirmed_flush_lsn`, bytes.
    pub lag: Option<i64>,
    /// `pg_current_wal_lsn() − restart_lsn`, bytes.
    pub retained: Option<i64>,
}

/// Reads the slot and returns the `slot`, `slot_lag` and `slot_retained` checks.
pub(super) async fn checks(
    c: &Client,
    slot: &str,
    options: &Options,
) -> Result<Vec<Check>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            "SELECT s.slot_type, s.plugin::text, coalesce(s.database = current_database(), false), \
                    s.temporary, s.active, s.active_pid, a.application_name, \
                    coalesce(a.usename::text, '?') \
                      || coalesce(' ' || nullif(a.application_name, ''), '') \
                      || coalesce(' from ' || host(a.client_addr), ''), \
                    s.wal_status, s.safe_wal_size, \
                    (pg_current_wal_lsn() - s.confirmed_flush_lsn)::int8, \
                    (pg_current_wal_lsn() - s.restart_lsn)::int8 \
             FROM pg_catalog.pg_replication_slots s \
             LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await?;
    let facts = row.map(|r| SlotFacts {
        slot_type: r.get(0),
        plugin: r.get(1),
        same_database: r.get(2),
        temporary: r.get(3),
        active: r.get(4),
        active_pid: r.get(5),
        holder_application: r.get(6),
        holder: r.get(7),
        wal_status: r.get(8),
        safe_wal_size: r.get(9),
        lag: r.get(10),
        retained: r.get(11),
    });
    Ok(evaluate(slot, facts.as_ref(), options))
}

/// The three slot checks from what `pg_replication_slots` said (`None`: no such slot).
pub(super) fn evaluate(slot: &str, facts: Option<&SlotFacts>, options: &Options) -> Vec<Check> {
    let Some(f) = facts else {
        let missing = format!("slot {slot} does not exist");
        return vec![
            Check::warn(
                SLOT,
                format!("{missing} yet: the relay creates it when it starts"),
                format!(
                    "start the relay, or SELECT pg_create_logical_replication_slot({}, 'pgoutput');",
                    literal(slot)
                ),
            ),
            Check::skip(SLOT_LAG, missing.clone()),
            Check::skip(SLOT_RETAINED, missing),
        ];
    };
    vec![
        evaluate_state(slot, f),
        evaluate_lag(slot, f.lag, options.max_lag_bytes),
        evaluate_retained(
            slot,
            f.retained,
            f.safe_wal_size,
            options.max_retained_bytes,
        ),
    ]
}

fn evaluate_state(slot: &str, f: &SlotFacts) -> Check {
    let drop = format!("SELECT pg_drop_replication_slot({});", literal(slot));
    let kind = SlotKind {
        slot_type: f.slot_type.clone(),
        plugin: f.plugin.clone(),
        temporary: f.temporary,
        same_database: f.same_database,
    };
    let judged = evaluate::slot(slot, &kind);
    if let Err(Mismatch::SlotNotPgoutput { .. }) = judged {
        let plugin = f.plugin.as_deref().unwrap_or("none");
        let temporary = if f.temporary { "temporary " } else { "" };
        return Check::fail(
            SLOT,
            format!(
                "slot {slot} is a {temporary}{} slot with plugin {plugin}; the relay needs a permanent logical pgoutput slot",
                f.slot_type
            ),
            format!("choose another database.slot, or {drop}"),
        );
    }
    if judged.is_err() {
        return Check::fail(
            SLOT,
            format!("slot {slot} belongs to another database"),
            "choose another database.slot (slot names are cluster-wide)",
        );
    }
    let holder = match (f.active, f.active_pid) {
        (true, Some(pid)) => match &f.holder {
            Some(who) => format!("active (pid {pid}: {who})"),
            None => format!("active (pid {pid})"),
        },
        (true, None) => "active".to_string(),
        (false, _) => "inactive (no relay connected)".to_string(),
    };
    let wal_status = f.wal_status.as_deref().unwrap_or("unknown");
    let safe = match f.safe_wal_size {
        Some(bytes) => format_bytes(bytes.max(0) as u64),
        None => "unlimited".to_string(),
    };
    let detail = format!(
        "logical pgoutput slot {slot}, {holder}, wal_status {wal_status}, safe_wal_size {safe}"
    );
    match wal_status {
        "lost" => Check::fail(
            SLOT,
            format!("{detail}: PostgreSQL removed WAL it needed, the slot is unusable"),
            format!(
                "{drop} then restart the relay (it recreates the slot; events in the gap are lost, resumes answer complete:false)"
            ),
        ),
        "unreserved" => Check::fail(
            SLOT,
            format!("{detail}: its WAL goes at the next checkpoint (max_slot_wal_keep_size reached)"),
            "start the relay now so it confirms, or raise max_slot_wal_keep_size (ALTER SYSTEM SET max_slot_wal_keep_size = '…'; SELECT pg_reload_conf();)",
        ),
        "extended" => Check::warn(
            SLOT,
            format!("{detail}: it retains WAL beyond max_wal_size"),
            "check that the relay runs and confirms (slot_lag); set max_slot_wal_keep_size to bound the WAL kept",
        ),
        _ if f.active
            && f.holder_application.as_deref().is_some_and(|a| a != APPLICATION_NAME) =>
        {
            Check::warn(
                SLOT,
                format!("{detail}: held by another client, so the relay cannot stream it"),
                format!(
                    "stop that client (SELECT pg_terminate_backend({})), or choose another database.slot",
                    f.active_pid.unwrap_or(0)
                ),
            )
        }
        _ if !f.active => Check::warn(
            SLOT,
            detail,
            "start the relay (or check why it cannot connect: its log, relay_replication_connected); \
             an inactive slot still retains WAL",
        ),
        _ => Check::pass(SLOT, detail),
    }
}

/// `12.3 MiB (12897484 bytes)`, or `72 B` when that is already exact.
fn exact_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        format_bytes(bytes)
    } else {
        format!("{} ({bytes} bytes)", format_bytes(bytes))
    }
}

/// `value` against `max`: fail above it, warn above half of it.
fn threshold(value: u64, max: u64) -> Option<bool> {
    if value > max {
        Some(true)
    } else if value > max / 2 {
        Some(false)
    } else {
        None
    }
}

/// `pg_current_wal_lsn() − confirmed_flush_lsn` against `--max-lag-bytes`.
pub(super) fn evaluate_lag(slot: &str, lag: Option<i64>, max: u64) -> Check {
    let Some(lag) = lag else {
        return Check::skip(SLOT_LAG, format!("slot {slot} has no confirmed_flush_lsn"));
    };
    let lag = lag.max(0) as u64;
    let detail = format!(
        "confirmed_flush_lsn is {} behind pg_current_wal_lsn(); --max-lag-bytes {}",
        exact_bytes(lag),
        format_bytes(max)
    );
    let fix = format!(
        "check that the relay runs and is connected (its log, relay_replication_lag_bytes); a \
         running relay confirms only events older than replay.window, so about one window of \
         WAL is normal (raise --max-lag-bytes if that is more); a retired relay's slot: SELECT \
         pg_drop_replication_slot({});",
        literal(slot)
    );
    match threshold(lag, max) {
        Some(true) => Check::fail(SLOT_LAG, format!("{detail}: over the limit"), fix),
        Some(false) => Check::warn(SLOT_LAG, format!("{detail}: over half the limit"), fix),
        None => Check::pass(SLOT_LAG, detail),
    }
}

/// `pg_current_wal_lsn() − restart_lsn` against `--max-retained-bytes`.
pub(super) fn evaluate_retained(
    slot: &str,
    retained: Option<i64>,
    safe_wal_size: Option<i64>,
    max: u64,
) -> Check {
    let Some(retained) = retained else {
        return Check::skip(SLOT_RETAINED, format!("slot {slot} has no restart_lsn"));
    };
    let retained = retained.max(0) as u64;
    let safe = match safe_wal_size {
        Some(bytes) => format!(
            "{} more before invalidation",
            format_bytes(bytes.max(0) as u64)
        ),
        None => "no limit (max_slot_wal_keep_size = -1)".to_string(),
    };
    let detail = format!(
        "slot keeps {} of WAL since restart_lsn; {safe}; --max-retained-bytes {}",
        exact_bytes(retained),
        format_bytes(max)
    );
    let fix = format!(
        "start the relay or check why it does not confirm (slot_lag); bound the WAL with \
         max_slot_wal_keep_size; a retired relay's slot: SELECT pg_drop_replication_slot({});",
        literal(slot)
    );
    match threshold(retained, max) {
        Some(true) => Check::fail(SLOT_RETAINED, format!("{detail}: over the limit"), fix),
        Some(false) => Check::warn(SLOT_RETAINED, format!("{detail}: over half the limit"), fix),
        None => Check::pass(SLOT_RETAINED, detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::assert_check;
    use crate::doctor::Status;

    fn healthy() -> SlotFacts {
        SlotFacts {
            slot_type: "logical".into(),
            plugin: Some("pgoutput".into()),
            same_database: true,
            active: true,
            active_pid: Some(7),
            holder_application: Some(APPLICATION_NAME.into()),
            holder: Some("postgres engagement-relay from 127.0.0.1".into()),
            wal_status: Some("reserved".into()),
            lag: Some(1000),
            retained: Some(5000),
            ..SlotFacts::default()
        }
    }

    fn statuses(checks: &[Check]) -> Vec<Status> {
        checks.iter().map(|c| c.status).collect()
    }

    #[test]
    fn a_healthy_slot_passes_and_names_its_holder() {
        let checks = evaluate("s", Some(&healthy()), &Options::default());
        assert_eq!(statuses(&checks), [Status::Pass; 3]);
        assert!(checks[0]
            .detail
            .contains("active (pid 7: postgres engagement-relay from 127.0.0.1)"));
        assert!(checks[0].detail.contains("safe_wal_size unlimited"));
    }

    #[test]
    fn a_missing_slot_warns_and_skips_the_distances() {
        let checks = evaluate("s", None, &Options::default());
        assert_eq!(
            statuses(&checks),
            [Status::Warn, Status::Skip, Status::Skip]
        );
        assert!(checks[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("pg_create_logical_replication_slot('s', 'pgoutput')"));
    }

    #[test]
    fn a_wrong_slot_or_lost_wal_fails() {
        let o = Options::default();
        let wrong = [
            SlotFacts {
                plugin: Some("test_decoding".into()),
                ..healthy()
            },
            SlotFacts {
                slot_type: "physical".into(),
                plugin: None,
                ..healthy()
            },
            SlotFacts {
                same_database: false,
                ..healthy()
            },
            SlotFacts {
                wal_status: Some("lost".into()),
                ..healthy()
            },
            SlotFacts {
                wal_status: Some("unreserved".into()),
                ..healthy()
            },
        ];
        for f in wrong {
            assert_eq!(evaluate("s", Some(&f), &o)[0].status, Status::Fail, "{f:?}");
        }
        let extended = SlotFacts {
            wal_status: Some("extended".into()),
            ..healthy()
        };
        assert_eq!(evaluate("s", Some(&extended), &o)[0].status, Status::Warn);
        let other = SlotFacts {
            holder_application: Some("pg_recvlogical".into()),
            ..healthy()
        };
        assert_eq!(evaluate("s", Some(&other), &o)[0].status, Status::Warn);
        let idle = SlotFacts {
            active: false,
            active_pid: None,
            ..healthy()
        };
        assert_check(&evaluate("s", Some(&idle), &o)[0], Status::Warn, "inactive");
    }

    #[test]
    fn lag_fails_above_the_limit_and_warns_above_half() {
        assert_eq!(evaluate_lag("s", Some(100), 1000).status, Status::Pass);
        assert_eq!(evaluate_lag("s", Some(501), 1000).status, Status::Warn);
        assert_check(
            &evaluate_lag("s", Some(1001), 1000),
            Status::Fail,
            "is 1001 B behind",
        );
        assert_eq!(evaluate_lag("s", Some(2), 1).status, Status::Fail);
        assert_eq!(evaluate_lag("s", Some(0), 1).status, Status::Pass);
        assert_eq!(evaluate_lag("s", None, 1).status, Status::Skip);
    }

    #[test]
    fn retained_wal_fails_above_the_limit_and_shows_safe_wal_size() {
        assert_eq!(
            evaluate_retained("s", Some(10), None, 1000).status,
            Status::Pass
        );
        let c = evaluate_retained("s", Some(2000), Some(1 << 20), 1000);
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.contains("1.0 MiB more before invalidation"),
            "{}",
            c.detail
        );
        assert_eq!(
            evaluate_retained("s", Some(600), None, 1000).status,
            Status::Warn
        );
    }
}
