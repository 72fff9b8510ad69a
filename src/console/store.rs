//! The console's tables (migration `20241217000000_relay_console.sql`), on the API's pool:
//! `relay.revocations`, `relay.presence` (`last_seen`) and `relay.audit_log`.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::revocations::Revocation;

/// Why a console statement failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had from the pool (`ingest.pool_timeout`).
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The statement failed (e.g. the migration is not applied).
    #[error("{}", crate::db::describe(.0))]
    Sql(#[from] tokio_postgres::Error),
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Every revocation not yet expired, by user.
pub async fn revocations(pool: &Pool) -> Result<Vec<(Uuid, Revocation)>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT user_id, issued_before, expires_at FROM relay.revocations
             WHERE expires_at > now()",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let revocation = Revocation {
                issued_before_us: micros(r.get(1)),
                expires_at_us: micros(r.get(2)),
            };
            (r.get(0), revocation)
        })
        .collect())
}

/// Stores `user`'s revocation (a later `issued_before` than the stored one wins) and returns
/// what is in force.
pub async fn revoke(
    pool: &Pool,
    user: Uuid,
    issued_before: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    created_by: Option<&str>,
) -> Result<Revocation, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "INSERT INTO relay.revocations AS r (user_id, issued_before, expires_at, created_by)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id) DO UPDATE SET
                 issued_before = greatest(r.issued_before, excluded.issued_before),
                 expires_at = greatest(r.expires_at, excluded.expires_at),
                 created_at = now(),
                 created_by = excluded.created_by
             RETURNING issued_before, expires_at",
            &[&user, &issued_before, &expires_at, &created_by],
        )
        .await?;
    Ok(Revocation {
        issued_before_us: micros(row.get(0)),
        expires_at_us: micros(row.get(1)),
    })
}

/// Writes users' `last_seen` (a later instant than the stored one wins), in one statement.
pub async fn last_seen(pool: &Pool, seen: &[(Uuid, DateTime<Utc>)]) -> Result<(), StoreError> {
    if seen.is_empty() {
        return Ok(());
    }
    let users: Vec<Uuid> = seen.iter().map(|(u, _)| *u).collect();
    let times: Vec<DateTime<Utc>> = seen.iter().map(|(_, t)| *t).collect();
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO relay.presence AS p (user_id, last_seen)
             SELECT * FROM unnest($1::uuid[], $2::timestamptz[])
             ON CONFLICT (user_id) DO UPDATE SET
                 last_seen = greatest(p.last_seen, excluded.last_seen)",
            &[&users, &times],
        )
        .await?;
    Ok(())
}

/// `user`'s `last_seen`, if kept.
pub async fn last_seen_of(pool: &Pool, user: Uuid) -> Result<Option<DateTime<Utc>>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT last_seen FROM relay.presence WHERE user_id = $1",
            &[&user],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// `last_seen` of each of `users` that has one.
pub async fn last_seen_of_many(
    pool: &Pool,
    users: &[Uuid],
) -> Result<Vec<(Uuid, DateTime<Utc>)>, StoreError> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT user_id, last_seen FROM relay.presence WHERE user_id = ANY($1)",
            &[&users],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Deletes `last_seen` rows older than `retention_s` seconds and expired revocations; returns
/// (presence rows, revocations) deleted.
pub async fn expire(pool: &Pool, retention_s: f64) -> Result<(u64, u64), StoreError> {
    let client = pool.get().await?;
    let presence = client
        .execute(
            "DELETE FROM relay.presence WHERE last_seen < now() - make_interval(secs => $1)",
            &[&retention_s],
        )
        .await?;
    let revocations = client
        .execute(
            "DELETE FROM relay.revocations WHERE expires_at < now()",
            &[],
        )
        .await?;
    Ok((presence, revocations))
}

/// One admin action for `relay.audit_log`.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    /// The service token's `sub`.
    pub actor_sub: Option<&'a str>,
    /// The service token's `kid`.
    pub actor_kid: Option<&'a str>,
    /// `disconnect` or `revoke`.
    pub action: &'a str,
    /// The user acted on.
    pub target_user: Uuid,
    /// What was done (sessions closed, the revocation's instant, …).
    pub detail: Value,
    /// The node that acted.
    pub node: &'a str,
}

/// Appends `entry` to `relay.audit_log`; returns its id.
pub async fn audit(pool: &Pool, entry: &AuditEntry<'_>) -> Result<i64, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "INSERT INTO relay.audit_log (actor_sub, actor_kid, action, target_user, detail, node)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[
                &entry.actor_sub,
                &entry.actor_kid,
                &entry.action,
                &entry.target_user,
                &entry.detail,
                &entry.node,
            ],
        )
        .await?;
    Ok(row.get(0))
}
