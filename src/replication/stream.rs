//! One replication connection: START_REPLICATION on the slot, decode, route, acknowledge.
//!
//! Acknowledgement: after a transaction's rows are dispatched, its end LSN is reported as
//! applied; while idle, the keepalive's WAL end is (the walsender has decoded everything before
//! it, and nothing was for us). The crate sends the report within `database.status_interval`.

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, SslMode, TlsConfig,
};
use tokio_postgres::config::Host;
use tracing::{info, warn};

use super::pgoutput::{pg_epoch_to_unix_us, Change, Decoder};
use super::{ReplicationContext, ReplicationError};
use crate::event::{now_unix_us, Cursor, Event, Operation};
use crate::metrics as m;

/// Session settings pinned on the walsender so text values decode the same everywhere.
const SESSION_OPTIONS: &str =
    "-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3 -c intervalstyle=iso_8601";

/// Builds the replication connection settings from `database.url`.
///
/// Errors: definite when the URL has no usable host.
pub fn replication_config(ctx: &ReplicationContext) -> Result<ReplicationConfig, ReplicationError> {
    let db = &ctx.config;
    let url: tokio_postgres::Config = db
        .url
        .expose()
        .parse()
        .map_err(|e| ReplicationError::Definite(format!("database.url: {e}")))?;
    let host = match url.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(path)) => path.to_string_lossy().into_owned(),
        None => "127.0.0.1".to_string(),
    };
    let port = url.get_ports().first().copied().unwrap_or(5432);
    let user = url.get_user().unwrap_or("postgres").to_string();
    let password = url
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = url.get_dbname().unwrap_or(&user).to_string();
    let tls = match url.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => TlsConfig::disabled(),
        tokio_postgres::config::SslMode::Require => TlsConfig::require(),
        _ => TlsConfig {
            mode: SslMode::Prefer,
            ..TlsConfig::default()
        },
    };
    Ok(ReplicationConfig::new(
        host,
        user,
        password,
        database,
        db.slot.clone(),
        db.publication.clone(),
    )
    .with_port(port)
    .with_tls(tls)
    .with_status_interval(db.status_interval)
    .with_wakeup_interval(Duration::from_secs(10))
    .with_options(SESSION_OPTIONS)
    .with_application_name("engagement-relay"))
}

/// How far the relay got, kept by the reconnect loop across connections so that a new
/// connection (which the server starts at the slot's last *persisted* confirmed position)
/// sends nothing to clients twice.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// End LSN of the last transaction fully dispatched, or the keepalive WAL end reached
    /// while idle: the position reported to PostgreSQL and requested on reconnect.
    pub acked: u64,
    /// A transaction interrupted by a lost connection: (its commit LSN, rows dispatched).
    pub open: Option<(u64, u32)>,
}

/// Streams until shutdown (`Ok`) or until the connection fails (`Err`), advancing `resume`.
pub async fn stream(ctx: &ReplicationContext, resume: &mut Resume) -> Result<(), ReplicationError> {
    let mut config = replication_config(ctx)?;
    if resume.acked > 0 {
        config = config.with_start_lsn(Lsn::from_u64(resume.acked));
    }
    let mut client = ReplicationClient::connect(config).await.map_err(classify)?;
    client.wait_started().await.map_err(classify)?;
    ctx.status.set_connected();
    info!(slot = ctx.config.slot, "replication stream started");

    let mut decoder = Decoder::new();
    let mut tx: Option<Transaction> = None;
    let mut wal_end = resume.acked;
    let received = counter!(m::EVENTS_RECEIVED);
    let replication_latency = histogram!(m::REPLICATION_LATENCY);
    loop {
        let event = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => {
                // The crate rate-limits reports to one per status interval.
                let wait = ctx.config.status_interval + Duration::from_secs(1);
                final_ack(&mut client, resume.acked, wait).await;
                return Ok(());
            }
            event = client.recv() => event,
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => {
                return Err(ReplicationError::Transient(
                    "replication stream ended".into(),
                ))
            }
            Err(e) => return Err(classify(e)),
        };
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => {
                let lsn = final_lsn.as_u64();
                // Rows the relay dispatched before a reconnect are skipped: the server
                // rewinds to its last persisted confirmed position.
                let skip_below = match resume.open {
                    _ if lsn < resume.acked => u32::MAX,
                    Some((open, dispatched)) if open == lsn => dispatched,
                    _ => 0,
                };
                tx = Some(Transaction {
                    lsn,
                    commit_time_us: pg_epoch_to_unix_us(commit_time_micros),
                    next_index: 0,
                    skip_below,
                });
            }
            ReplicationEvent::XLogData { data, .. } => {
                let Some(event) = decode(&mut decoder, tx.as_mut(), &data)? else {
                    continue;
                };
                resume.open = Some((event.cursor.lsn, event.cursor.index + 1));
                received.increment(1);
                replication_latency
                    .record((now_unix_us() - event.commit_time_us).max(0) as f64 / 1e6);
                ctx.router.dispatch(Arc::new(event));
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                tx = None;
                resume.open = None;
                resume.acked = resume.acked.max(end_lsn.as_u64());
                wal_end = wal_end.max(resume.acked);
                client.update_applied_lsn(Lsn::from_u64(resume.acked));
                report(&client, wal_end, resume.acked);
            }
            ReplicationEvent::KeepAlive { wal_end: end, .. } => {
                wal_end = wal_end.max(end.as_u64());
                if tx.is_none() && end.as_u64() > resume.acked {
                    resume.acked = end.as_u64();
                    client.update_applied_lsn(end);
                }
                report(&client, wal_end, resume.acked);
            }
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
    }
}

/// Updates the lag and confirmed-LSN gauges (on commits and keepalives, not per row).
fn report(client: &ReplicationClient, wal_end: u64, processed: u64) {
    gauge!(m::REPLICATION_LAG_BYTES).set(wal_end.saturating_sub(processed) as f64);
    gauge!(m::CONFIRMED_FLUSH_LSN).set(client.metrics().last_applied_lsn().as_u64() as f64);
}

/// Waits (at most `wait`) until the crate has reported `acked` to the server, then stops
/// cleanly. Without the wait the crate drops the last acknowledgement.
async fn final_ack(client: &mut ReplicationClient, acked: u64, wait: Duration) {
    if acked > 0 {
        client.update_applied_lsn(Lsn::from_u64(acked));
        let deadline = tokio::time::Instant::now() + wait;
        while client.metrics().last_applied_lsn().as_u64() < acked {
            if tokio::time::Instant::now() > deadline {
                warn!(lsn = %Lsn::from_u64(acked), "final acknowledgement not confirmed before shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if let Err(e) = client.shutdown().await {
        warn!("replication shutdown: {e}");
    }
    info!(lsn = %Lsn::from_u64(acked), "replication stopped; final LSN acknowledged");
}

struct Transaction {
    lsn: u64,
    commit_time_us: i64,
    next_index: u32,
    /// Rows with a lower index were dispatched before a reconnect.
    skip_below: u32,
}

/// Decodes one pgoutput message; returns the row event it carries, if any.
fn decode(
    decoder: &mut Decoder,
    tx: Option<&mut Transaction>,
    data: &[u8],
) -> Result<Option<Event>, ReplicationError> {
    let change = decoder.decode(data).map_err(|e| {
        ReplicationError::Definite(format!("cannot decode a pgoutput message: {e}"))
    })?;
    let (operation, relation, record) = match change {
        Change::Insert { relation, new } => (Operation::Insert, relation, new),
        Change::Update { relation, new, .. } => (Operation::Update, relation, new),
        _ => return Ok(None),
    };
    let Some(tx) = tx else {
        return Err(ReplicationError::Transient(
            "protocol: a row change arrived outside a transaction".into(),
        ));
    };
    let cursor = Cursor {
        lsn: tx.lsn,
        index: tx.next_index,
    };
    tx.next_index += 1;
    if cursor.index < tx.skip_below {
        return Ok(None);
    }
    Ok(Some(Event::new(
        cursor,
        tx.commit_time_us,
        operation,
        relation,
        record,
    )))
}

/// Sorts a crate error into reconnect-and-retry or stop.
fn classify(e: PgWireError) -> ReplicationError {
    let text = e.to_string();
    match &e {
        PgWireError::Server(msg)
            if msg.contains("publication") && msg.contains("does not exist") =>
        {
            ReplicationError::Definite(text)
        }
        PgWireError::Auth(_) => ReplicationError::Definite(text),
        // The slot lost WAL it needed (max_slot_wal_keep_size): events are gone for good.
        PgWireError::Server(msg)
            if msg.contains("invalidated") || msg.contains("can no longer get changes") =>
        {
            ReplicationError::Definite(format!(
                "{text}: the slot must be dropped and recreated (events in the gap are lost)"
            ))
        }
        _ => ReplicationError::Transient(text),
    }
}
