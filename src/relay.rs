//! Wiring: start every part of the relay, and shut it down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::Verifier;
use crate::config::Config;
use crate::console::{Action, Console, Peers};
use crate::http::serve::{self, Rules};
use crate::http::tls::{self, Tls, TlsError};
use crate::http::{self, AppState};
use crate::limits::{self, Budget};
use crate::replication::{self, Dispatch, ReplicationContext, ReplicationError, StreamStatus};

use crate::router::Router;
use crate::tables::Tables;

/// How often the slot's retained WAL is read from `pg_replication_slots`.
const SLOT_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the relay could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The configuration is invalid (one line naming the key).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The config key of the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database cannot be streamed from (a definite replication error).
    #[error("replication: {0}")]
    Replication(#[from] ReplicationError),
    /// A bound listener's address could not be read.
    #[error("cannot read the address of {key}: {source}")]
    LocalAddr {
        /// The config key of the listener.
        key: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A `tls_cert`/`tls_key` file is unreadable, not PEM, or the key does not fit the
    /// certificate (one line naming the key and the file).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `auth.jwks_file` is unreadable or not a JWKS (or the HTTP client cannot be built).
    #[error(transparent)]
    Jwks(#[from] crate::auth::fetch::LoadError),
    /// Cluster mode could not start (`[cluster]`).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A task panicked or was aborted.
    #[error("internal: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Graceful shutdown took longer than `shutdown.grace` and was forced.
    #[error("graceful shutdown exceeded shutdown.grace ({0:?}); forced")]
    ShutdownTimeout(std::time::Duration),
}

/// A running relay. Drop does not stop it: call [`Relay::shutdown`].
pub struct Relay {
    server_addr: SocketAddr,
    metrics_addr: SocketAddr,
    shutdown: CancellationToken,
    status: Arc<StreamStatus>,
    slot: Arc<StreamStatus>,
    router: Arc<Router>,
    task: JoinHandle<Result<(), RelayError>>,
}

/// The token verifier; with a JWKS source, the key set is loaded (a file now, a URL by a
/// background task that runs until `stop`).
fn verifier(
    config: &crate::config::AuthConfig,
    stop: CancellationToken,
) -> Result<Verifier, RelayError> {
    if !config.has_jwks() {
        return Ok(Verifier::new(config));
    }
    let jwks = Arc::new(crate::auth::jwks::Jwks::new());
    crate::auth::fetch::start(config, jwks.clone(), stop)?;
    Ok(Verifier::with_jwks(config, Some(jwks)))
}

/// Starts the relay: checks the database (a definite misconfiguration is returned here, an
/// unreachable database is retried in the background), binds both listeners (port 0 picks a free
/// port), and spawns the replication task and the servers.
pub async fn start(config: Config) -> Result<Relay, RelayError> {
    config.validate()?;
    config.require_token_keys()?;
    // The recorder first: loading a certificate exports its expiry.
    let handle = crate::metrics::install();
    crate::metrics::export_mode(config.cluster.enabled());
    let server_tls = load_tls(config.server.tls()?)?;
    let metrics_tls = load_tls(config.metrics.tls()?)?;
    // `shutdown` is the request; the supervisor below then stops the stream first
    // (`stream_stop`), and only then the sessions and servers (`sessions_stop`), so events
    // already queued are delivered before the 1001 close.
    let shutdown = CancellationToken::new();
    // The JWKS file is read now too: like the certificates, before the database is touched.
    let verifier = Arc::new(verifier(&config.auth, shutdown.clone())?);
    crate::refused::register();
    metrics::gauge!(crate::metrics::REPLAY_WINDOW).set(config.replay.window.as_secs_f64());
    let tables = Arc::new(Tables::new(&config.tables));
    match replication::preflight(&config.database, &tables).await {
        Ok(()) => {}
        Err(e) if e.is_definite() => return Err(e.into()),
        Err(e) => warn!("database not reachable yet ({e}); the relay will keep retrying"),
    }
    let budget = session_budget(&config);
    let server = bind("server.listen", config.server.listen).await?;
    let metrics = bind("metrics.listen", config.metrics.listen).await?;
    let server_addr = local_addr("server.listen", &server)?;
    let metrics_addr = local_addr("metrics.listen", &metrics)?;

    let stream_stop = CancellationToken::new();
    let sessions_stop = CancellationToken::new();
    let router = Arc::new(Router::new(
        config.limits.session_queue.get(),
        &config.replay,
    ));
    let sessions = TaskTracker::new();
    let pool = http::api::pool(&config)?;
    let registry = crate::presence::Registry::new(
        format!("{:08x}", rand::random::<u32>()),
        config.presence.enabled,
    );
    let console = Console::new(
        registry,
        verifier.revocations().clone(),
        pool.clone(),
        config.auth.max_token_lifetime,
        config.presence.retention,
    );
    // Revocations in force are refused from the first connection on (a database not
    // reachable yet is read by the console's poll once it is).
    if let Err(e) = console.load_revocations().await {
        warn!("token revocations not loaded yet ({e}); retrying every few seconds");
    }
    // A cluster node's presence runs on `sessions` too: stopping waits for it to remove the
    // node's keys.
    let roles = Roles::new(&config, &router, &console, &sessions, &stream_stop).await?;
    let Roles {
        status,
        slot,
        dispatch,
        confirm_after,
        takeover,
        archive,
    } = roles;
    let node = Arc::new(http::NodeFacts {
        clustered: config.cluster.enabled(),
        slot: slot.clone(),
        started_at: chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6),
        replay_window: config.replay.window,
    });
    let state = AppState {
        router: router.clone(),
        tables: tables.clone(),
        verifier,
        limits: config.limits.clone(),
        session_permits: http::session_permits(budget.max_sessions),
        status: status.clone(),
        shutdown: sessions_stop.clone(),
        sessions: sessions.clone(),
        pool,
        ingest: config.ingest.clone(),
        rate_limits: Arc::new(http::api::limit::Limits::new(&config.ingest)),
        archive,
        console: console.clone(),
        node,
    };
    tokio::spawn(console.run(sessions_stop.clone()));
    let replication = tokio::spawn(replication::run(ReplicationContext {
        config: config.database.clone(),
        replay_window: confirm_after,
        tables: tables.clone(),
        dispatch,
        status: slot.clone(),
        shutdown: stream_stop.clone(),
        takeover,
    }));
    tokio::spawn(crate::monitoring::run(
        state.pool.clone(),
        config.tables.clone(),
        config.monitoring.interval,
        stream_stop.clone(),
    ));
    tokio::spawn(replication::slot::watch(
        config.database.clone(),
        SLOT_WATCH_INTERVAL,
        stream_stop.clone(),
    ));
    let rules = Rules {
        header_timeout: config.server.header_timeout,
        idle_timeout: config.server.idle_timeout,
        max_pending: budget.max_pending,
    };
    let inspector = inspector(&config, server_addr);
    let server_task = tokio::spawn(serve::serve(
        server,
        http::server_routes(state, config.server.request_timeout, inspector),
        rules,
        server_tls.clone(),
        sessions_stop.clone(),
    ));
    let metrics_rules = Rules {
        max_pending: limits::METRICS_MAX_PENDING,
        ..rules
    };
    let metrics_task = tokio::spawn(serve::serve(
        metrics,
        http::metrics_routes(handle),
        metrics_rules,
        metrics_tls.clone(),
        sessions_stop.clone(),
    ));
    info!(%server_addr, %metrics_addr, "relay listening");
    if let Some(tls) = &server_tls {
        let cert = tls.files().cert.display();
        info!(%server_addr, %cert, "serving https/wss on {server_addr} (server.tls_cert {cert})");
    }
    if let Some(tls) = &metrics_tls {
        let cert = tls.files().cert.display();
        info!(%metrics_addr, %cert, "serving https on {metrics_addr} (metrics.tls_cert {cert})");
    }
    let reloadable: Vec<_> = server_tls.into_iter().chain(metrics_tls).collect();
    if !reloadable.is_empty() {
        tokio::spawn(tls::reload_on_hangup(reloadable, shutdown.clone()));
    }

    let grace = config.shutdown.grace;
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let mut replication = replication;
        // Run until asked to stop or until replication fails definitively.
        let outcome = tokio::select! {
            _ = stop.cancelled() => None,
            r = &mut replication => Some(r),
        };
        stop.cancel();
        let drain = async {
            // 1. No new events; the final LSN is acknowledged.
            stream_stop.cancel();
            let replicated = match outcome {
                Some(r) => r,
                None => replication.await,
            };
            // 2. Sessions deliver what is queued, then close with 1001.
            sessions_stop.cancel();
            sessions.close();
            sessions.wait().await;
            let _ = server_task.await;
            let _ = metrics_task.await;
            replicated
        };
        let result = match tokio::time::timeout(grace, drain).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(RelayError::Replication(e)),
            Ok(Err(join)) => Err(RelayError::Task(join)),
            Err(_) => Err(RelayError::ShutdownTimeout(grace)),
        };
        info!("relay stopped");
        result
    });
    Ok(Relay {
        server_addr,
        metrics_addr,
        shutdown,
        status,
        slot,
        router,
        task,
    })
}

/// Divides the open-file limit ([`limits::budget`]) and says at start what it chose and why.
fn session_budget(config: &Config) -> Budget {
    let budget = limits::budget(
        limits::nofile_limit(),
        config.server.max_sessions.map(|n| n.get()),
        config.server.max_pending.map(|n| n.get()),
        config.ingest.pool_size.get(),
    );
    let from = |configured: bool| if configured { "configured" } else { "derived" };
    info!(
        max_sessions = budget.max_sessions,
        max_sessions_from = from(budget.sessions_configured),
        max_pending = budget.max_pending,
        max_pending_from = from(budget.pending_configured),
        open_files = budget.files,
        reserve = budget.reserve,
        "session budget: server.max_sessions = {} ({}), server.max_pending = {} ({}); open-file limit {}, of which {} reserved (max_pending + ingest.pool_size + {} for listeners, database, metrics and requests in flight)",
        budget.max_sessions,
        from(budget.sessions_configured),
        budget.max_pending,
        from(budget.pending_configured),
        budget.files,
        budget.reserve,
        limits::FIXED_RESERVE,
    );
    if budget.max_sessions > budget.sessions_allowed() {
        warn!(
            max_sessions = budget.max_sessions,
            allowed = budget.sessions_allowed(),
            "server.max_sessions exceeds what the open-file limit allows beyond the reserve; at the cap, health checks and metrics may find no descriptor (raise LimitNOFILE or leave server.max_sessions unset)"
        );
    }
    budget
}

/// The inspector page when `server.inspector` is on, said at start with its presets' count
/// (never their tokens); presets on a listener (`server_addr`) other hosts can reach are warned
/// about.
fn inspector(config: &Config, server_addr: SocketAddr) -> Option<http::inspector::Inspector> {
    let inspector = http::inspector::Inspector::new(&config.server, &config.tables)?;
    let presets = config.server.inspector_presets.len();
    info!(%server_addr, presets, "inspector page at /inspector (server.inspector)");
    if presets > 0 && !server_addr.ip().is_loopback() {
        warn!(%server_addr, presets, "server.inspector_presets: GET /inspector/presets.json hands these tokens to anyone who can reach {server_addr}; presets are for local development");
    }
    Some(inspector)
}

/// The TLS side of a listener whose `tls_cert`/`tls_key` are set, its files read now.
fn load_tls(files: Option<crate::config::TlsFiles>) -> Result<Option<Arc<Tls>>, RelayError> {
    Ok(files.map(Tls::load).transpose()?.map(Arc::new))
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, RelayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RelayError::Bind { key, addr, source })
}

fn local_addr(key: &'static str, listener: &TcpListener) -> Result<SocketAddr, RelayError> {
    listener
        .local_addr()
        .map_err(|source| RelayError::LocalAddr { key, source })
}

impl Relay {
    /// Address of the WebSocket/HTTP listener.
    pub fn server_addr(&self) -> SocketAddr {
        self.server_addr
    }

    /// Address of the metrics listener.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// True while the relay's event source is connected: the replication stream on a single
    /// node, the JetStream consumer on a cluster node.
    pub fn is_streaming(&self) -> bool {
        self.status.is_connected()
    }

    /// True while this relay holds the replication slot (a single node streaming, or the
    /// cluster node that publishes).
    pub fn holds_slot(&self) -> bool {
        self.slot.is_connected()
    }

    /// True while the stream is connected and the replay window has been rebuilt after start
    /// (what `/readyz` reports; WebSocket upgrades are refused with 503 before).
    pub fn is_ready(&self) -> bool {
        self.status.is_ready()
    }

    /// Resolves once the relay is ready ([`Relay::is_ready`]); polls every 20 ms.
    pub async fn ready(&self) {
        while !self.is_ready() && !self.task.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The router (session counts, latest cursor).
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// A token that stops the relay when cancelled (e.g. from a signal handler).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the relay stops (shutdown requested, or a definite replication error).
    pub async fn wait(self) -> Result<(), RelayError> {
        self.task.await?
    }

    /// Stops gracefully: sessions get 1001, the final LSN is acknowledged, within
    /// `shutdown.grace`.
    pub async fn shutdown(self) -> Result<(), RelayError> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: what stops the daemon gracefully.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Where the replication stream goes and what the node serves from.
struct Roles {
    /// What `/readyz` reports: the stream on a single node, the JetStream consumer on a
    /// cluster node.
    status: Arc<StreamStatus>,
    /// The replication slot's status (on a cluster node, 1 in `relay_cluster_publisher`).
    slot: Arc<StreamStatus>,
    /// The stream's destination: the router, or the JetStream publisher.
    dispatch: Arc<dyn Dispatch>,
    /// How long after an event its LSN is confirmed: the replay window on a single node,
    /// zero on a cluster node (the publisher confirms only what JetStream acknowledged).
    confirm_after: std::time::Duration,
    /// Cluster node: how often a standby tries to take the slot.
    takeover: Option<std::time::Duration>,
    /// Cluster node: the stream read back for old resumes.
    archive: Option<Arc<crate::cluster::Archive>>,
}

impl Roles {
    /// Single node: the router is the stream's destination and the stream's status is the
    /// relay's. Cluster node: the stream goes to JetStream, and the relay serves what its
    /// JetStream consumer feeds the router; `console`'s actions and presence are shared with
    /// the other nodes (presence's tasks on `tasks`).
    async fn new(
        config: &Config,
        router: &Arc<Router>,
        console: &Arc<Console>,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<Roles, RelayError> {
        if !config.cluster.enabled() {
            let status = Arc::new(StreamStatus::default());
            return Ok(Roles {
                status: status.clone(),
                slot: status,
                dispatch: router.clone(),
                confirm_after: config.replay.window,
                takeover: None,
                archive: None,
            });
        }
        let node = crate::cluster::start(
            config,
            router.clone(),
            console.registry().clone(),
            apply_announced(console.clone()),
            tasks,
            stop.clone(),
        )
        .await?;
        console.set_peers(node.control.clone());
        Ok(Roles {
            status: node.serving,
            slot: Arc::new(StreamStatus::with_gauge(crate::metrics::CLUSTER_PUBLISHER)),
            dispatch: node.publisher,
            confirm_after: std::time::Duration::ZERO,
            takeover: Some(config.cluster.takeover_interval),
            archive: Some(node.archive),
        })
    }
}

/// Cluster mode: the console announces its actions to the other nodes as JSON on the control
/// subject (wired here: the cluster cannot import the console without a cycle).
impl Peers for crate::cluster::control::Control {
    fn announce(&self, action: Action) {
        match serde_json::to_vec(&action) {
            Ok(payload) => self.send(payload),
            Err(e) => warn!(?action, "admin action not announced: {e}"),
        }
    }
}

/// Applies the admin actions other nodes announce to `console` (an unreadable one is logged
/// and skipped).
fn apply_announced(console: Arc<Console>) -> crate::cluster::control::Deliver {
    Arc::new(move |payload, from| {
        let from = from.unwrap_or("");
        match serde_json::from_slice::<Action>(payload) {
            Ok(action) => {
                let applied = console.apply(action);
                info!(
                    from,
                    ?action,
                    closed = applied.closed,
                    "admin action from another node applied"
                );
            }
            Err(e) => warn!(
                from,
                "unreadable admin action from another node skipped: {e}"
            ),
        }
    })
}
