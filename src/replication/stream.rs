//! One replication connection: START_REPLICATION on the slot, decode, route, acknowledge.
//!
//! Acknowledgement ([`super::ack`]): the end LSN of each dispatched transaction, and while
//! idle the keepalive's WAL end (the walsender has decoded everything before it, and nothing
//! was for us), become confirmable once they are older than the replay window. The crate sends
//! the report within `database.status_interval`.

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tracing::{info, warn};

use tokio::time::{sleep_until, Instant};

use super::ack::AckPolicy;
use super::error::classify;
use super::pgoutput::{Change, Decoder};
use super::{ReplicationContext, ReplicationError};
use crate::db::PgTarget;
use crate::metrics as m;
use crate::model::{history_id, now_unix_us, pg_epoch_to_unix_us, Cursor, Event, Operation};
use crate::tables::Tables;

/// `application_name` of the relay's replication connection, as `pg_stat_activity` and
/// `pg_stat_replication` show it.
pub const APPLICATION_NAME: &str = "engagement-relay";

/// Session settings pinned on the walsender so text values decode the same everywhere.
const SESSION_OPTIONS: &str =
    "-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3 -c intervalstyle=iso_8601";

/// Builds the replication connection settings from `database.url`.
///
/// Errors: definite when the URL has no usable host.
pub fn replication_config(ctx: &ReplicationContext) -> Result<ReplicationConfig, ReplicationError> {
    let db = &ctx.config;
    let target = PgTarget::parse(db.url.expose())?;
    let url = target.config();
    let host = target.host();
    let port = target.port();
    let user = url.get_user().unwrap_or("postgres").to_string();
    let password = url
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = url.get_dbname().unwrap_or(&user).to_string();
    let tls = target.tls().replication(&host);
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
    .with_application_name(APPLICATION_NAME))
}

/// How far the relay got, kept by the reconnect loop across connections so that a new
/// connection (which the server starts at the slot's last *persisted* confirmed position)
/// sends nothing to clients twice, and so that confirmations respect the replay window.
#[derive(Debug, Clone)]
pub struct Progress {
    /// End LSN of the last transaction fully dispatched, or the keepalive WAL end reached
    /// while idle: where a reconnect resumes reading.
    pub dispatched: u64,
    /// A transaction interrupted by a lost connection: (its commit LSN, rows dispatched).
    pub open: Option<(u64, u32)>,
    /// The LSN confirmed to PostgreSQL: older than the replay window.
    pub confirmed: u64,
    /// The WAL history streamed ([`history_id`]); `None` before the first connection.
    pub history: Option<u32>,
    ack: AckPolicy,
}

impl Progress {
    /// Nothing streamed yet: the next connection starts at the slot's position.
    pub fn new() -> Progress {
        Progress {
            dispatched: 0,
            open: None,
            confirmed: 0,
            history: None,
            ack: AckPolicy::new(Duration::ZERO, 0),
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// How long shutdown waits for the rest of a transaction whose rows are being dispatched.
const FINISH_OPEN_TX: Duration = Duration::from_secs(1);

/// Streams until shutdown (`Ok`) or until the connection fails (`Err`), advancing `progress`.
pub async fn stream(
    ctx: &ReplicationContext,
    progress: &mut Progress,
) -> Result<(), ReplicationError> {
    // A reconnect resumes after what was dispatched. The first report is 0, which PostgreSQL
    // ignores: the slot's position stays as it is until the relay has read it (below) and
    // decides what to confirm.
    let start = progress.history.map_or(0, |_| progress.dispatched);
    let config = replication_config(ctx)?
        .with_start_lsn(Lsn::from_u64(start))
        .with_ack_lsn(Lsn::from_u64(0));
    let mut client = ReplicationClient::connect_gated(config)
        .await
        .map_err(classify)?;
    let system = client.identify_system().await.map_err(classify)?;
    let history = history_id(&system.system_id, system.timeline);
    let xlogpos = system.xlogpos.as_u64();
    client.start().await.map_err(classify)?;
    client.wait_started().await.map_err(classify)?;
    // Decoding started at the larger of `start` and the slot's position.
    let slot_lsn = super::slot::confirmed_lsn(&ctx.config).await?;
    match progress.history {
        None => begin(ctx, progress, history, slot_lsn, xlogpos),
        Some(known) => {
            let lost = if known != history {
                Some("the WAL history changed (a restore or a failover)")
            } else if xlogpos < progress.dispatched {
                Some("the server's WAL is behind what was streamed (a restore)")
            } else if slot_lsn > progress.dispatched {
                Some("the slot was confirmed past what this relay read (another relay used it, or it was recreated)")
            } else {
                None
            };
            if let Some(why) = lost {
                // What was streamed no longer lines up with the slot: start over from the
                // slot, and close the sessions so clients resume (and learn what is missing).
                *progress = Progress::new();
                return Err(ReplicationError::HistoryLost(why));
            }
            // Report again what this relay confirmed (never less than the slot holds: a lower
            // report would move the slot back).
            progress.confirmed = progress.confirmed.max(slot_lsn);
            client.update_applied_lsn(Lsn::from_u64(progress.confirmed));
        }
    }
    ctx.status.set_connected();
    info!(slot = ctx.config.slot, "replication stream started");

    let mut decoder = Decoder::new();
    let mut tx: Option<Transaction> = None;
    let mut wal_end = progress.dispatched;
    let received = counter!(m::EVENTS_RECEIVED);
    let replication_latency = histogram!(m::REPLICATION_LATENCY);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut closing: Option<Instant> = None;
    loop {
        let event = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled(), if closing.is_none() => {
                if tx.is_none() {
                    break;
                }
                // Rows of this transaction are out: wait briefly for its commit, so that
                // what clients hold is also what the relay accounts for.
                closing = Some(Instant::now() + FINISH_OPEN_TX);
                continue;
            }
            _ = sleep_until(closing.unwrap_or_else(Instant::now)), if closing.is_some() => break,
            _ = tick.tick() => {
                ctx.dispatch.maintain(now_unix_us());
                advance(&client, ctx, progress);
                continue;
            }
            event = client.recv(), if !ctx.dispatch.is_full() => event,
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => return Err(ReplicationError::Ended),
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
                let skip_below = match progress.open {
                    _ if lsn < progress.dispatched => u32::MAX,
                    Some((open, dispatched)) if open == lsn => dispatched,
                    _ => 0,
                };
                tx = Some(Transaction {
                    lsn,
                    history,
                    commit_time_us: pg_epoch_to_unix_us(commit_time_micros),
                    next_index: 0,
                    skip_below,
                });
            }
            ReplicationEvent::XLogData { data, .. } => {
                let Some(event) = decode(&mut decoder, &ctx.tables, tx.as_mut(), &data)? else {
                    continue;
                };
                progress.open = Some((event.cursor.lsn, event.cursor.index + 1));
                received.increment(1);
                if ctx.status.is_rebuilt() {
                    replication_latency
                        .record((now_unix_us() - event.commit_time_us).max(0) as f64 / 1e6);
                }
                ctx.dispatch.dispatch(Arc::new(event));
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                progress.open = None;
                progress.dispatched = progress.dispatched.max(end_lsn.as_u64());
                // The checkpoint is the commit's start, not its end: a relay restarted later
                // reads this transaction again, so a client whose cursor is its last row
                // still resumes complete.
                if let Some(t) = tx.take() {
                    progress.ack.record(t.commit_time_us, t.lsn);
                }
                wal_end = wal_end.max(progress.dispatched);
                advance(&client, ctx, progress);
                report(wal_end, progress);
                if closing.is_some() {
                    break;
                }
            }
            ReplicationEvent::KeepAlive {
                wal_end: end,
                reply_requested,
                ..
            } => {
                wal_end = wal_end.max(end.as_u64());
                ctx.dispatch.note_wal_end(wal_end);
                if tx.is_none() && end.as_u64() > progress.dispatched {
                    progress.dispatched = end.as_u64();
                    progress.ack.record(now_unix_us(), progress.dispatched);
                    advance(&client, ctx, progress);
                }
                if reply_requested
                    && tx.is_none()
                    && super::slot::server_is_stopping(&ctx.config).await
                {
                    if !ctx.dispatch.keeps_dispatched() && ctx.dispatch.oldest_lsn().is_some() {
                        // Rows the destination has not stored yet: the slot must keep them.
                        // Leaving ends the walsender, so the shutdown need not wait for a
                        // confirmation that cannot come yet.
                        info!("PostgreSQL is shutting down: leaving the slot unconfirmed past rows not stored yet");
                        return Err(ReplicationError::Ended);
                    }
                    server_stopping(&client, progress);
                }
                report(wal_end, progress);
            }
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
    }
    advance(&client, ctx, progress);
    // The crate rate-limits reports to one per status interval.
    let wait = ctx.config.status_interval + Duration::from_secs(1);
    final_ack(&mut client, progress.confirmed, wait).await;
    Ok(())
}

/// The first connection (or the first of a new WAL history): the window starts at the slot's
/// position, and the relay is not ready until it has read up to the server's current WAL
/// position again (`target`), which rebuilds the window a previous run had.
fn begin(
    ctx: &ReplicationContext,
    progress: &mut Progress,
    history: u32,
    slot_lsn: u64,
    target: u64,
) {
    ctx.dispatch.begin(history, slot_lsn);
    *progress = Progress {
        dispatched: slot_lsn,
        open: None,
        confirmed: slot_lsn,
        history: Some(history),
        ack: AckPolicy::new(ctx.replay_window, slot_lsn),
    };
    ctx.status.set_rebuild_target(target);
    if target <= slot_lsn {
        ctx.status.set_rebuilt();
    } else {
        info!(from = %Lsn::from_u64(slot_lsn), to = %Lsn::from_u64(target), "rebuilding the replay window from the slot");
    }
}

/// Confirms what has aged out of the replay window (never beyond what was dispatched), and
/// marks the window rebuilt once the stream has caught up with where it stood at start.
fn advance(client: &ReplicationClient, ctx: &ReplicationContext, progress: &mut Progress) {
    let confirmable = progress
        .ack
        .confirmable(
            now_unix_us(),
            ctx.dispatch.oldest_lsn(),
            ctx.dispatch.evicted_lsn(),
        )
        .min(progress.dispatched);
    if confirmable > progress.confirmed {
        progress.confirmed = confirmable;
        client.update_applied_lsn(Lsn::from_u64(confirmable));
    }
    if !ctx.status.is_rebuilt() && progress.dispatched >= ctx.status.rebuild_target() {
        info!(
            lsn = %Lsn::from_u64(progress.dispatched),
            "replay window rebuilt; ready"
        );
        ctx.status.set_rebuilt();
    }
}

/// The walsender asks for a reply when it has heard nothing for half of `wal_sender_timeout`,
/// and while the server shuts down: a fast shutdown waits until the client has confirmed
/// everything sent (PostgreSQL `WalSndDone`), which a window held back would never do. So when
/// new connections are refused as shutting down (57P03), the relay confirms everything
/// dispatched. Its in-memory window is unaffected, so clients
/// still resume; only a relay restarted before the window ages could answer `complete:false`
/// to a cursor the old window held. A destination that does not keep what it was given
/// ([`super::Dispatch::keeps_dispatched`], the cluster publisher) is not confirmed past what
/// it still needs: while it holds such rows the task leaves the stream instead.
fn server_stopping(client: &ReplicationClient, progress: &mut Progress) {
    progress.confirmed = progress.confirmed.max(progress.dispatched);
    client.update_applied_lsn(Lsn::from_u64(progress.confirmed));
    info!(
        lsn = %Lsn::from_u64(progress.confirmed),
        "PostgreSQL is shutting down: confirmed everything dispatched"
    );
}

/// Updates the lag and confirmed-LSN gauges (on commits and keepalives, not per row).
fn report(wal_end: u64, progress: &Progress) {
    gauge!(m::REPLICATION_LAG_BYTES).set(wal_end.saturating_sub(progress.dispatched) as f64);
    gauge!(m::CONFIRMED_FLUSH_LSN).set(progress.confirmed as f64);
}

/// Waits (at most `wait`) until the crate has reported `confirmed` to the server, then stops
/// cleanly. Without the wait the crate drops the last acknowledgement.
async fn final_ack(client: &mut ReplicationClient, confirmed: u64, wait: Duration) {
    client.update_applied_lsn(Lsn::from_u64(confirmed));
    let deadline = Instant::now() + wait;
    while client.metrics().last_applied_lsn().as_u64() < confirmed {
        if Instant::now() > deadline {
            warn!(lsn = %Lsn::from_u64(confirmed), "final acknowledgement not sent before shutdown");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Err(e) = client.shutdown().await {
        warn!("replication shutdown: {e}");
    }
    info!(
        "replication stopped; confirmed LSN {} to PostgreSQL",
        Lsn::from_u64(confirmed)
    );
}

struct Transaction {
    lsn: u64,
    history: u32,
    commit_time_us: i64,
    next_index: u32,
    /// Rows with a lower index were dispatched before a reconnect.
    skip_below: u32,
}

/// Decodes one pgoutput message; returns the row event it carries, if `tables` streams its
/// table and operation. Every row change (insert, update, delete) takes an index in its
/// transaction, streamed or not, so cursors depend on the WAL alone. (Before issue 13 deletes
/// took none: a transaction that mixed published deletes with other rows numbered them
/// differently; the default publication published no deletes then.)
fn decode(
    decoder: &mut Decoder,
    tables: &Tables,
    tx: Option<&mut Transaction>,
    data: &[u8],
) -> Result<Option<Event>, ReplicationError> {
    let change = decoder.decode(data).map_err(ReplicationError::Decode)?;
    let (operation, relation, record, old) = match change {
        Change::Insert { relation, new } => (Operation::Insert, relation, new, None),
        Change::Update { relation, new, old } => (Operation::Update, relation, new, old),
        Change::Delete { relation, old } => (Operation::Delete, relation, old, None),
        _ => return Ok(None),
    };
    let Some(tx) = tx else {
        return Err(ReplicationError::RowOutsideTransaction);
    };
    let cursor = Cursor {
        lsn: tx.lsn,
        index: tx.next_index,
        history: tx.history,
    };
    tx.next_index += 1;
    let Some(owner_column) = tables.route(&relation, operation) else {
        return Ok(None);
    };
    if cursor.index < tx.skip_below {
        return Ok(None);
    }
    let row = tables.row_key(&relation, &record);
    let mut event = Event::change(
        cursor,
        tx.commit_time_us,
        operation,
        (relation, owner_column),
        record,
        old,
    );
    event.row = row;
    Ok(Some(event))
}
