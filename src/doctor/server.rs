//! Server-wide checks: version, the user's replication right, `wal_level`, slot and sender
//! headroom, `max_slot_wal_keep_size`, applied migrations, long transactions, connections.
//!
//! Sources: PostgreSQL 15 docs, *Server Configuration → Replication*
//! (<https://www.postgresql.org/docs/15/runtime-config-replication.html>), *Write Ahead Log*
//! (<https://www.postgresql.org/docs/15/runtime-config-wal.html>), and the `pg_stat_activity`
//! and `pg_stat_wal` views (<https://www.postgresql.org/docs/15/monitoring-stats.html>).

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::ident;
use super::report::{format_bytes, Check};
use super::{
    CONNECTIONS, LONG_TRANSACTIONS, MAX_SLOT_WAL_KEEP_SIZE, MIGRATIONS, REPLICATION_ROLE,
    REPLICATION_SLOTS, SERVER_VERSION, WAL_LEVEL, WAL_SENDERS,
};
use crate::catalog::{evaluate, query};
use crate::db::describe;

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// Oldest server the relay supports (`server_version_num`): 14, for `CREATE OR REPLACE
/// TRIGGER` in the migrations and `pg_stat_wal`.
pub(super) const MIN_SERVER_VERSION: i32 = 140_000;

/// `server_version_num` (e.g. 150008) against [`MIN_SERVER_VERSION`].
pub(super) fn evaluate_version(num: i32) -> Check {
    let (major, minor) = (num / 10_000, num % 10_000);
    let version = format!("PostgreSQL {major}.{minor} (server_version_num {num})");
    if num >= MIN_SERVER_VERSION {
        Check::pass(SERVER_VERSION, format!("{version}; 14 or newer needed"))
    } else {
        Check::fail(
            SERVER_VERSION,
            format!("{version}; the relay and its migrations need 14 or newer"),
            "upgrade PostgreSQL to 14 or newer (pg_upgrade, or a new Supabase project)",
        )
    }
}

/// The user must be a superuser or have `REPLICATION` to create and stream the slot.
pub(super) async fn replication_role(c: &Client) -> Result<Check> {
    let row = c
        .query_one(
            "SELECT current_user::text, rolsuper, rolreplication FROM pg_catalog.pg_roles \
             WHERE rolname = current_user",
            &[],
        )
        .await?;
    Ok(evaluate_role(
        &row.get::<_, String>(0),
        row.get(1),
        row.get(2),
    ))
}

pub(super) fn evaluate_role(user: &str, superuser: bool, replication: bool) -> Check {
    match (superuser, replication) {
        (true, _) => Check::pass(REPLICATION_ROLE, format!("{user} is a superuser")),
        (false, true) => Check::pass(REPLICATION_ROLE, format!("{user} has REPLICATION")),
        (false, false) => Check::fail(
            REPLICATION_ROLE,
            format!("{user} has neither REPLICATION nor superuser: it cannot create or stream a replication slot"),
            format!("ALTER ROLE {} WITH REPLICATION;", ident(user)),
        ),
    }
}

/// `SHOW wal_level` must be `logical`
/// (<https://www.postgresql.org/docs/15/runtime-config-wal.html#GUC-WAL-LEVEL>).
pub(super) async fn wal_level(c: &Client) -> Result<Check> {
    Ok(evaluate_wal_level(&query::wal_level(c).await?))
}

/// `wal_level` (`minimal`, `replica` or `logical`): only `logical` lets a slot decode
/// ([`evaluate::wal_level`]).
pub fn evaluate_wal_level(level: &str) -> Check {
    if evaluate::wal_level(level).is_ok() {
        Check::pass(WAL_LEVEL, "wal_level = logical")
    } else {
        Check::fail(
            WAL_LEVEL,
            format!("wal_level = {level}; logical decoding needs logical"),
            "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL (a reload is not \
             enough; Supabase projects already run with logical)",
        )
    }
}

/// Slots in use vs `max_replication_slots` and WAL senders in use vs `max_wal_senders`
/// (<https://www.postgresql.org/docs/15/runtime-config-replication.html#GUC-MAX-REPLICATION-SLOTS>).
/// The relay needs one of each; ours counts as held when `slot` exists (slots) or is active
/// (senders).
pub(super) async fn headroom(c: &Client, slot: &str) -> Result<Vec<Check>> {
    let row = c
        .query_one(
            "SELECT current_setting('max_replication_slots')::int8, \
                    (SELECT count(*) FROM pg_catalog.pg_replication_slots), \
                    current_setting('max_wal_senders')::int8, \
                    (SELECT count(*) FROM pg_catalog.pg_stat_activity \
                      WHERE backend_type = 'walsender'), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots \
                             WHERE slot_name = $1 AND active)",
            &[&slot],
        )
        .await?;
    let slots = evaluate_headroom(
        REPLICATION_SLOTS,
        "max_replication_slots",
        row.get(0),
        row.get(1),
        row.get(4),
        &format!("slot {slot}"),
    );
    let senders = evaluate_headroom(
        WAL_SENDERS,
        "max_wal_senders",
        row.get(2),
        row.get(3),
        row.get(5),
        "the relay's stream",
    );
    Ok(vec![slots, senders])
}

/// `used` of `max`: fails when none is free and `ours_held` is false (the relay could not get
/// one), warns when at most one is free, else passes.
pub(super) fn evaluate_headroom(
    id: &str,
    setting: &str,
    max: i64,
    used: i64,
    ours_held: bool,
    ours: &str,
) -> Check {
    let free = max - used;
    let held = if ours_held {
        format!("{ours} holds one")
    } else {
        format!("{ours} needs one")
    };
    let detail = format!("{used} of {setting} = {max} in use, {free} free; {held}");
    let fix = format!(
        "ALTER SYSTEM SET {setting} = {}; then restart PostgreSQL (or drop unused slots: \
         SELECT slot_name, active FROM pg_replication_slots)",
        max.max(used) + 4
    );
    if free <= 0 && !ours_held {
        Check::fail(id, detail, fix)
    } else if free <= 1 {
        Check::warn(id, detail, fix)
    } else {
        Check::pass(id, detail)
    }
}

/// `max_slot_wal_keep_size` from `pg_settings` (MB, `-1` unlimited;
/// <https://www.postgresql.org/docs/15/runtime-config-replication.html#GUC-MAX-SLOT-WAL-KEEP-SIZE>)
/// and the average WAL rate from `pg_stat_wal` since its reset (or the server's start).
pub(super) async fn max_slot_wal_keep_size(c: &Client, window: Duration) -> Result<Check> {
    let row = c
        .query_one(
            "SELECT setting::int8, coalesce(unit, '') FROM pg_catalog.pg_settings \
             WHERE name = 'max_slot_wal_keep_size'",
            &[],
        )
        .await?;
    let (setting, unit): (i64, String) = (row.get(0), row.get(1));
    let limit = (setting >= 0).then(|| (setting as u64).saturating_mul(unit_bytes(&unit)));
    // An estimate only: absent (old server, no privilege) is not a failure.
    let rate = c
        .query_opt(
            "SELECT wal_bytes::float8 / greatest(extract(epoch FROM now() - \
                    coalesce(stats_reset, pg_postmaster_start_time())), 1)::float8 \
             FROM pg_catalog.pg_stat_wal",
            &[],
        )
        .await
        .ok()
        .flatten()
        .and_then(|r| r.get::<_, Option<f64>>(0));
    Ok(evaluate_keep_size(limit, rate, window))
}

/// Bytes of one `pg_settings.unit` (`B`, `kB`, `MB`, `GB`, `TB`, `8kB`; PostgreSQL's
/// multiples of 1024); MB when unknown.
fn unit_bytes(unit: &str) -> u64 {
    match unit {
        "B" => 1,
        "kB" => 1 << 10,
        "8kB" => 8 << 10,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => 1 << 20,
    }
}

/// `limit` in bytes (`None`: unlimited) against the README's rule: at least 3 ×
/// `replay.window` × peak WAL rate, plus the outage to survive. `rate` is the average WAL
/// rate in bytes/s: a peak is higher, so a limit below 3 × window × average is surely small.
/// `window` is zero when no window holds the slot back (resume off, or cluster mode, where the
/// slot is confirmed on PubAck): then only the outage counts and no floor is estimated.
pub(super) fn evaluate_keep_size(limit: Option<u64>, rate: Option<f64>, window: Duration) -> Check {
    let window_text = humantime::format_duration(window).to_string();
    let floor = rate
        .filter(|_| !window.is_zero())
        .map(|r| (3.0 * window.as_secs_f64() * r.max(0.0)) as u64);
    let estimate = match (rate, floor) {
        (Some(r), Some(f)) => format!(
            "; average WAL rate {}/min, so 3 × replay.window ({window_text}) × it = {}",
            format_bytes((r * 60.0) as u64),
            format_bytes(f)
        ),
        _ => String::new(),
    };
    let fix = if window.is_zero() {
        "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf(); -- at least \
         the WAL written during the outage to survive (no replay window holds the slot back)"
            .to_string()
    } else {
        format!(
            "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf(); -- at \
             least 3 × replay.window ({window_text}) × the peak WAL rate plus the outage to \
             survive (README, WAL retained by the replay window)"
        )
    };
    match limit {
        None => Check::warn(
            MAX_SLOT_WAL_KEEP_SIZE,
            format!("unlimited (-1): a stalled or abandoned slot keeps WAL until the disk is full{estimate}"),
            fix,
        ),
        Some(limit) if floor.is_some_and(|f| limit < f) => Check::warn(
            MAX_SLOT_WAL_KEEP_SIZE,
            format!("{}: below what the replay window alone retains{estimate}", format_bytes(limit)),
            fix,
        ),
        Some(limit) => Check::pass(
            MAX_SLOT_WAL_KEEP_SIZE,
            format!("{}: PostgreSQL invalidates a slot retaining more{estimate}", format_bytes(limit)),
        ),
    }
}

/// Embedded migrations (`sql/migrations`) not yet recorded in
/// `supabase_migrations.schema_migrations`. A warning, not a failure: the schema checks that
/// follow decide whether what the relay needs is there.
pub(super) async fn migrations(c: &Client) -> Result<Check> {
    let rows = c
        .query(
            "SELECT version::text FROM supabase_migrations.schema_migrations",
            &[],
        )
        .await;
    let applied: Vec<String> = match rows {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e)
            if e.code() == Some(&SqlState::UNDEFINED_TABLE)
                || e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) =>
        {
            Vec::new()
        }
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            return Ok(Check::skip(
                MIGRATIONS,
                format!(
                    "cannot read supabase_migrations.schema_migrations: {}",
                    describe(&e)
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    let embedded: Vec<String> = crate::db::migrate::migrations()
        .into_iter()
        .map(|m| m.version)
        .collect();
    Ok(evaluate_migrations(&embedded, &applied))
}

pub(super) fn evaluate_migrations(embedded: &[String], applied: &[String]) -> Check {
    let pending: Vec<&str> = embedded
        .iter()
        .filter(|v| !applied.contains(v))
        .map(String::as_str)
        .collect();
    if pending.is_empty() {
        Check::pass(
            MIGRATIONS,
            format!("all {} embedded migrations applied", embedded.len()),
        )
    } else {
        Check::warn(
            MIGRATIONS,
            format!(
                "{} of {} embedded migrations not recorded in supabase_migrations.schema_migrations: {}",
                pending.len(),
                embedded.len(),
                pending.join(", ")
            ),
            "engagement-relay --database-url … migrate",
        )
    }
}

/// Client sessions whose transaction is older than `max_age` (seed: "no long-running
/// transactions in progress"). They delay the slot's creation (it waits for every running
/// transaction) and hold back vacuum. Other roles' sessions are visible only to superusers
/// and members of `pg_read_all_stats`.
pub(super) async fn long_transactions(c: &Client, max_age: Duration) -> Result<Check> {
    let row = c
        .query_one(
            "SELECT count(*), \
                    max(extract(epoch FROM now() - xact_start))::float8, \
                    (array_agg(pid ORDER BY xact_start))[1], \
                    (array_agg(coalesce(usename::text, '?') || ' ' || coalesce(state, '?') \
                               || coalesce(' (' || nullif(application_name, '') || ')', '') \
                               ORDER BY xact_start))[1], \
                    pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') \
             FROM pg_catalog.pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
               AND xact_start < now() - make_interval(secs => $1)",
            &[&max_age.as_secs_f64()],
        )
        .await?;
    Ok(evaluate_long_transactions(
        row.get(0),
        row.get::<_, Option<f64>>(1).unwrap_or(0.0),
        row.get(2),
        row.get::<_, Option<String>>(3).unwrap_or_default(),
        row.get(4),
        max_age,
    ))
}

pub(super) fn evaluate_long_transactions(
    count: i64,
    oldest_secs: f64,
    oldest_pid: Option<i32>,
    oldest_who: String,
    sees_all: bool,
    max_age: Duration,
) -> Check {
    let limit = humantime::format_duration(max_age);
    let scope = if sees_all {
        ""
    } else {
        " (only this role's sessions are visible: grant pg_read_all_stats to see all)"
    };
    match oldest_pid {
        Some(pid) if count > 0 => {
            let age = humantime::format_duration(Duration::from_secs(oldest_secs.max(0.0) as u64));
            Check::warn(
                LONG_TRANSACTIONS,
                format!(
                    "{count} transaction(s) open longer than {limit}; oldest: pid {pid}, {age}, {oldest_who}{scope}"
                ),
                format!(
                    "find out what it is (SELECT * FROM pg_stat_activity WHERE pid = {pid}), then \
                     end it: SELECT pg_cancel_backend({pid}); or SELECT pg_terminate_backend({pid});"
                ),
            )
        }
        _ => Check::pass(
            LONG_TRANSACTIONS,
            format!("no transaction open longer than {limit}{scope}"),
        ),
    }
}

/// Client connections (active and all) vs `max_connections` minus
/// `superuser_reserved_connections`. The relay needs `ingest.pool_size` plus about 3.
pub(super) async fn connections(c: &Client, pool_size: usize) -> Result<Check> {
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'active'), count(*), \
                    current_setting('max_connections')::int8, \
                    current_setting('superuser_reserved_connections')::int8 \
             FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'",
            &[],
        )
        .await?;
    Ok(evaluate_connections(
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        pool_size as i64 + 3,
    ))
}

/// Warns when the free connections are fewer than `needed` or 90 % are in use.
pub(super) fn evaluate_connections(
    active: i64,
    total: i64,
    max: i64,
    reserved: i64,
    needed: i64,
) -> Check {
    let usable = (max - reserved).max(0);
    let free = usable - total;
    let detail = format!(
        "{active} active, {total} client connections of {usable} usable (max_connections {max} − \
         {reserved} reserved); the relay needs about {needed} (ingest.pool_size + 3)"
    );
    if free < needed || total * 10 >= usable * 9 {
        Check::warn(
            CONNECTIONS,
            detail,
            format!(
                "close idle sessions or use a pooler, or ALTER SYSTEM SET max_connections = {}; then restart PostgreSQL",
                max + needed.max(10)
            ),
        )
    } else {
        Check::pass(CONNECTIONS, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::assert_check;
    use crate::doctor::Status;

    #[test]
    fn postgres_14_and_newer_pass_and_older_fail() {
        assert_check(&evaluate_version(150_008), Status::Pass, "PostgreSQL 15.8");
        let statuses = [140_000, 130_011].map(|v| evaluate_version(v).status);
        assert_eq!(statuses, [Status::Pass, Status::Fail]);
    }

    #[test]
    fn only_logical_wal_level_passes_and_the_fix_says_restart() {
        assert_eq!(evaluate_wal_level("logical").status, Status::Pass);
        for level in ["replica", "minimal"] {
            let c = evaluate_wal_level(level);
            assert_check(&c, Status::Fail, level);
            let fix = c.fix.unwrap();
            assert!(
                fix.contains("ALTER SYSTEM SET wal_level = logical") && fix.contains("restart")
            );
        }
    }

    #[test]
    fn replication_needs_the_attribute_or_superuser() {
        assert_eq!(evaluate_role("postgres", true, false).status, Status::Pass);
        assert_eq!(evaluate_role("relay", false, true).status, Status::Pass);
        let c = evaluate_role("relay", false, false);
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.fix.unwrap(), "ALTER ROLE relay WITH REPLICATION;");
    }

    #[test]
    fn headroom_fails_only_when_ours_cannot_get_one() {
        let h = |max, used, ours| {
            evaluate_headroom("s", "max_replication_slots", max, used, ours, "slot x")
        };
        assert_eq!(h(10, 2, false).status, Status::Pass);
        assert_eq!(h(10, 10, false).status, Status::Fail);
        assert_eq!(
            h(10, 10, true).status,
            Status::Warn,
            "ours exists, none spare"
        );
        assert_eq!(
            h(10, 9, false).status,
            Status::Warn,
            "ours takes the last one"
        );
        assert_eq!(h(10, 9, true).status, Status::Warn);
        assert_eq!(h(10, 8, true).status, Status::Pass);
        let c = h(4, 4, false);
        assert!(
            c.detail
                .contains("4 of max_replication_slots = 4 in use, 0 free"),
            "{}",
            c.detail
        );
        assert!(c.fix.unwrap().contains("max_replication_slots = 8"));
    }

    #[test]
    fn unlimited_wal_keep_size_warns_and_a_set_one_passes_unless_surely_too_small() {
        let window = Duration::from_secs(300);
        let c = evaluate_keep_size(None, None, window);
        assert_check(&c, Status::Warn, "unlimited");
        assert!(c.fix.unwrap().contains("max_slot_wal_keep_size"));
        let ten_gib = 10u64 << 30;
        assert_check(
            &evaluate_keep_size(Some(ten_gib), Some(1_000_000.0), window),
            Status::Pass,
            "10.0 GiB",
        );
        // 1 MB/s average × 300 s × 3 = 900 MB > 512 MiB.
        let c = evaluate_keep_size(Some(512 << 20), Some(1_000_000.0), window);
        assert_eq!(c.status, Status::Warn, "{}", c.detail);
        // Cluster mode: no window holds the slot back, so no floor is estimated.
        let c = evaluate_keep_size(Some(512 << 20), Some(1_000_000.0), Duration::ZERO);
        assert_eq!(c.status, Status::Pass, "{}", c.detail);
        assert!(!c.detail.contains("replay.window"), "{}", c.detail);
        let c = evaluate_keep_size(None, Some(1_000_000.0), Duration::ZERO);
        assert!(c.fix.unwrap_or_default().contains("no replay window"));
        assert_eq!(unit_bytes("MB"), 1 << 20);
        assert_eq!(unit_bytes("kB"), 1024);
    }

    #[test]
    fn pending_migrations_are_named() {
        let all = ["1".to_string(), "2".to_string()];
        assert_eq!(evaluate_migrations(&all, &all).status, Status::Pass);
        let c = evaluate_migrations(&all, &all[..1]);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.ends_with(": 2"), "{}", c.detail);
        assert!(c.fix.unwrap().contains("migrate"));
    }

    #[test]
    fn long_transactions_warn_with_the_pid_to_look_at() {
        let five = Duration::from_secs(300);
        let c = evaluate_long_transactions(0, 0.0, None, String::new(), true, five);
        assert_eq!(c.status, Status::Pass);
        let c = evaluate_long_transactions(
            2,
            3600.0,
            Some(42),
            "app idle in transaction".into(),
            true,
            five,
        );
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.detail.contains("pid 42") && c.detail.contains("1h"),
            "{}",
            c.detail
        );
        assert!(c.fix.unwrap().contains("pg_cancel_backend(42)"));
        let c = evaluate_long_transactions(0, 0.0, None, String::new(), false, five);
        assert!(c.detail.contains("pg_read_all_stats"));
    }

    #[test]
    fn connections_warn_when_the_relay_would_not_fit() {
        assert_eq!(evaluate_connections(1, 10, 100, 3, 11).status, Status::Pass);
        assert_eq!(evaluate_connections(1, 90, 100, 3, 11).status, Status::Warn);
        assert_eq!(evaluate_connections(1, 88, 100, 0, 5).status, Status::Pass);
        assert_eq!(
            evaluate_connections(1, 90, 100, 0, 5).status,
            Status::Warn,
            "90 % in use"
        );
    }
}
