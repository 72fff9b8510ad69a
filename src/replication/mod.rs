//! The replication task: owns the slot, decodes pgoutput, hands rows to a [`Dispatch`] (the
//! router, or another destination), and reconnects with capped exponential backoff and jitter after any connection loss.
//!
//! Errors are either transient (reconnect: the server restarted, the network dropped) or
//! definite (stop with a clear message: `wal_level` is not `logical`, the publication is
//! missing, authentication failed).

pub mod ack;
pub mod dispatch;
mod error;
pub mod pgoutput;
pub mod slot;
pub mod stream;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{counter, gauge};
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::config::DatabaseConfig;
use crate::metrics as m;
use crate::tables::Tables;

pub use dispatch::Dispatch;
pub use error::{ErrorKind, ReplicationError};

/// Whether the stream is connected and the replay window rebuilt, for `/readyz`, the upgrade
/// routes and a gauge (`relay_replication_connected` for the slot's stream;
/// `relay_cluster_consuming` for a cluster node's JetStream consumer).
#[derive(Debug)]
pub struct StreamStatus {
    connected: AtomicBool,
    rebuilt: AtomicBool,
    rebuild_target: AtomicU64,
    last_error: Mutex<Option<String>>,
    gauge: &'static str,
}

impl Default for StreamStatus {
    fn default() -> Self {
        StreamStatus::with_gauge(m::REPLICATION_CONNECTED)
    }
}

impl StreamStatus {
    /// A status that reports connected/disconnected as 1/0 on the gauge `gauge`.
    pub fn with_gauge(gauge: &'static str) -> StreamStatus {
        StreamStatus {
            connected: AtomicBool::new(false),
            rebuilt: AtomicBool::new(false),
            rebuild_target: AtomicU64::new(0),
            last_error: Mutex::new(None),
            gauge,
        }
    }

    /// True while the replication stream is connected and streaming.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// True once the replay window holds everything since the slot's position at start (it
    /// stays true across reconnects: the window lives in memory).
    pub fn is_rebuilt(&self) -> bool {
        self.rebuilt.load(Ordering::Acquire)
    }

    /// Connected and rebuilt: what `/readyz` reports as ready.
    pub fn is_ready(&self) -> bool {
        self.is_connected() && self.is_rebuilt()
    }

    /// The WAL position (as a number) the stream must reach before the window is rebuilt.
    pub fn rebuild_target(&self) -> u64 {
        self.rebuild_target.load(Ordering::Acquire)
    }

    fn set_rebuild_target(&self, lsn: u64) {
        self.rebuild_target.store(lsn, Ordering::Release);
    }

    pub(crate) fn set_rebuilt(&self) {
        self.rebuilt.store(true, Ordering::Release);
    }

    /// Why the stream is not connected (the last error), if known.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    pub(crate) fn set_connected(&self) {
        self.connected.store(true, Ordering::Release);
        gauge!(self.gauge).set(1.0);
    }

    pub(crate) fn set_disconnected(&self, why: &str) {
        self.connected.store(false, Ordering::Release);
        gauge!(self.gauge).set(0.0);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(why.to_string());
        }
    }
}

/// What the replication task works with.
#[derive(Clone)]
pub struct ReplicationContext {
    /// `[database]` settings.
    pub config: DatabaseConfig,
    /// `replay.window`: LSNs are confirmed to PostgreSQL only once this old.
    pub replay_window: Duration,
    /// Which tables and operations are streamed, routed by which column.
    pub tables: Arc<Tables>,
    /// Where decoded rows go.
    pub dispatch: Arc<dyn Dispatch>,
    /// Shared with `/readyz`.
    pub status: Arc<StreamStatus>,
    /// Cancelled on shutdown: the task acknowledges its final LSN and returns.
    pub shutdown: CancellationToken,
    /// Cluster mode (`cluster.takeover_interval`): while another node holds the slot, try to
    /// take it this often (no backoff, no warning), and after any loss start over from the
    /// slot (what was not confirmed is in the slot still; the destination dropped it).
    pub takeover: Option<Duration>,
}

/// Checks the database once (wal_level, publication, slot). Used at start so a misconfigured
/// database stops the relay with a clear message before it listens.
///
/// Errors: [`ErrorKind::Definite`] on misconfiguration; transient when unreachable.
pub async fn preflight(config: &DatabaseConfig, tables: &Tables) -> Result<(), ReplicationError> {
    let client = slot::connect(config.url.expose()).await?;
    slot::prepare(&client, config, tables).await
}

/// Runs until shutdown (`Ok`) or a definite error.
pub async fn run(ctx: ReplicationContext) -> Result<(), ReplicationError> {
    let mut delay = ctx.config.reconnect_min;
    let mut progress = stream::Progress::new();
    loop {
        let started = Instant::now();
        let result = match preflight(&ctx.config, &ctx.tables).await {
            Ok(()) => stream::stream(&ctx, &mut progress).await,
            Err(e) => Err(e),
        };
        let e = match result {
            Ok(()) => {
                ctx.status.set_disconnected("shut down");
                return Ok(());
            }
            Err(e) => e,
        };
        ctx.status.set_disconnected(&e.to_string());
        if e.is_definite() {
            error!("replication stopped: {e}");
            return Err(e);
        }
        if let Some(every) = ctx.takeover {
            progress = stream::Progress::new();
            if e.is_slot_in_use() {
                debug!("standby: another node holds the slot ({e}); trying again in {every:?}");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(every) => {}
                }
                delay = ctx.config.reconnect_min;
                continue;
            }
        }
        if started.elapsed() > ctx.config.reconnect_max {
            // It streamed for a while: this is a new outage, start the backoff over.
            delay = ctx.config.reconnect_min;
        }
        let wait = jitter(delay);
        warn!("replication connection lost: {e}; reconnecting in {wait:?}");
        counter!(m::REPLICATION_RECONNECTS).increment(1);
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        delay = (delay * 2).min(ctx.config.reconnect_max);
    }
}

/// `delay` ± 20 %.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.8..1.2))
}
