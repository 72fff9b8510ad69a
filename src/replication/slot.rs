//! Slot lifecycle over an ordinary SQL connection: checks that logical decoding can work
//! (the catalog check: `wal_level`, the publication, the tables), creates the permanent
//! pgoutput slot when it is missing, and watches how much WAL the slot retains.

use std::time::Duration;

use metrics::gauge;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::metrics as m;

use crate::db::describe;

use super::ReplicationError;
use crate::catalog::{self, CatalogError, PLUGIN};
use crate::config::DatabaseConfig;
use crate::tables::Tables;

/// Opens an SQL connection to `database.url` (the connection task runs in the background).
///
/// Errors: [`ReplicationError::Connect`]; definite for refused credentials or a missing
/// database, else transient.
pub async fn connect(url: &str) -> Result<Client, ReplicationError> {
    crate::db::connect(url)
        .await
        .map_err(ReplicationError::Connect)
}

/// The catalog check ([`crate::catalog::check`]: `wal_level`, the publication, the
/// `[[tables]]`, whose columns it loads into `tables`), then creates the slot if missing.
///
/// Errors: definite when the server is misconfigured (with what to change), transient when the
/// connection fails mid-way.
pub async fn prepare(
    client: &Client,
    db: &DatabaseConfig,
    tables: &Tables,
) -> Result<(), ReplicationError> {
    crate::catalog::check(client, &db.publication, tables).await?;
    ensure_slot(client, &db.slot).await
}

/// The slot's `confirmed_flush_lsn`, read over a new SQL connection. Read once the stream has
/// started (the slot is then this relay's and only its reports move the position), it is where
/// PostgreSQL started decoding: every transaction committing at or after it is streamed.
///
/// Errors: transient when unreachable; definite when the slot is gone or has no position.
pub async fn confirmed_lsn(db: &DatabaseConfig) -> Result<u64, ReplicationError> {
    let client = connect(db.url.expose()).await?;
    let row = client
        .query_opt(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot],
        )
        .await
        .map_err(ReplicationError::Query)?;
    match row.and_then(|r| r.get::<_, Option<i64>>(0)) {
        Some(lsn) if lsn > 0 => Ok(lsn as u64),
        _ => Err(ReplicationError::NoConfirmedPosition(db.slot.clone())),
    }
}

/// True when PostgreSQL refuses new connections because it is shutting down (SQLSTATE 57P03):
/// how the relay tells a shutdown's request for a reply from a routine one.
pub async fn server_is_stopping(db: &DatabaseConfig) -> bool {
    let attempt =
        tokio::time::timeout(Duration::from_secs(2), crate::db::connect(db.url.expose())).await;
    matches!(attempt, Ok(Err(e)) if e.code() == Some(&SqlState::CANNOT_CONNECT_NOW))
}

async fn ensure_slot(client: &Client, slot: &str) -> Result<(), ReplicationError> {
    let kind = catalog::query::slot_kind(client, slot)
        .await
        .map_err(ReplicationError::Query)?;
    if let Some(kind) = kind {
        catalog::evaluate::slot(slot, &kind).map_err(CatalogError::from)?;
        return Ok(());
    }
    match client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, $2)",
            &[&slot, &PLUGIN],
        )
        .await
    {
        Ok(_) => {
            info!(slot, "created logical replication slot (pgoutput)");
            Ok(())
        }
        // Another relay created it between the check and here.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            Err(ReplicationError::CreateSlot {
                slot: slot.to_string(),
                remedy: "the database user needs the REPLICATION attribute",
                source: e,
            })
        }
        Err(e) if e.code() == Some(&SqlState::CONFIGURATION_LIMIT_EXCEEDED) => {
            Err(ReplicationError::CreateSlot {
                slot: slot.to_string(),
                remedy: "raise max_replication_slots",
                source: e,
            })
        }
        Err(e) => Err(ReplicationError::Query(e)),
    }
}

/// Every `every`, until `stop`: reads the slot's retained WAL and `safe_wal_size` from
/// `pg_replication_slots` into [`m::SLOT_RETAINED_WAL_BYTES`] and
/// [`m::SLOT_SAFE_WAL_SIZE_BYTES`]. Connection failures are retried on the next tick.
pub async fn watch(db: DatabaseConfig, every: Duration, stop: CancellationToken) {
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect(db.url.expose()).await.ok();
        }
        let Some(c) = &client else { continue };
        let row = c
            .query_opt(
                "SELECT (pg_current_wal_lsn() - restart_lsn)::float8, safe_wal_size::float8 \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.slot],
            )
            .await;
        match row {
            Ok(Some(row)) => {
                if let Some(retained) = row.get::<_, Option<f64>>(0) {
                    gauge!(m::SLOT_RETAINED_WAL_BYTES).set(retained);
                }
                if let Some(safe) = row.get::<_, Option<f64>>(1) {
                    gauge!(m::SLOT_SAFE_WAL_SIZE_BYTES).set(safe);
                }
            }
            Ok(None) => {}
            Err(e) => debug!("slot watch: {}", describe(&e)),
        }
    }
}
