//! Cluster mode on NATS JetStream (issue 14; docs/ARCHITECTURE.md, "Cluster mode"): one node
//! holds the replication slot and publishes every event to a JetStream stream
//! ([`publisher`]); every node, the publisher too, consumes the stream into its own router and
//! serves its own sessions ([`consumer`]). Which node publishes is decided by PostgreSQL: one
//! walsender holds a slot at a time, and standbys try to take it every
//! `cluster.takeover_interval` ([`crate::replication::ReplicationContext::takeover`]).
//!
//! The wire format is [`wire`]'s. Nodes also share presence ([`presence`], a JetStream
//! key-value bucket) and admin actions ([`control`], a core NATS subject). Without
//! `cluster.nats_url` none of this runs.

pub mod archive;
pub mod consumer;
pub mod control;
pub mod erasure;
pub mod presence;
pub mod publisher;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::metrics as m;
use crate::presence::Registry;
use crate::replication::{Dispatch, StreamStatus};
use crate::router::Router;

pub use archive::Archive;
pub use publisher::Publisher;

/// The shortest `max_age` the stream gets (`replay.window` may be 0: resume off).
const MIN_MAX_AGE: Duration = Duration::from_secs(60);

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `cluster.nats_url` is not a list of NATS URLs.
    #[error("cluster.nats_url: {0}")]
    Url(String),
    /// The control subject could not be subscribed to (the NATS client is closed).
    #[error("cluster control subject: {0}")]
    Control(String),
}

/// A running cluster node's parts.
pub struct Node {
    /// The replication task's destination on this node: the [`Publisher`], noting deletes for
    /// [`erasure`].
    pub publisher: Arc<dyn Dispatch>,
    /// The stream read back, for resumes older than the in-memory window.
    pub archive: Arc<Archive>,
    /// Consuming and caught up: what `/readyz` reports on a cluster node.
    pub serving: Arc<StreamStatus>,
    /// Announces this node's admin actions to the other nodes.
    pub control: Arc<control::Control>,
}

/// The stream's configuration for `config`: subjects `<prefix>.>`, file storage, limits
/// retention (discard old), `max_age` = `replay.window` (at least 1 min), `duplicate_window`
/// = `cluster.duplicate_window` (at most `max_age`), `cluster.replicas`.
pub fn stream_config(config: &Config) -> stream::Config {
    let max_age = config.replay.window.max(MIN_MAX_AGE);
    stream::Config {
        name: config.cluster.stream.clone(),
        subjects: vec![wire::all_subjects(&config.cluster.subject_prefix)],
        max_age,
        duplicate_window: config.cluster.duplicate_window.min(max_age),
        num_replicas: config.cluster.replicas.get(),
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        description: Some("engagement-relay events (docs/ARCHITECTURE.md, Cluster mode)".into()),
        ..Default::default()
    }
}

/// The servers of `cluster.nats_url` (comma-separated NATS URLs), as the relay and `doctor`
/// connect to them.
///
/// Errors: [`ClusterError::Url`] naming the URL that does not parse (its text is not repeated:
/// it may hold credentials).
pub fn servers(nats_url: &str) -> Result<Vec<async_nats::ServerAddr>, ClusterError> {
    nats_url
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e: std::io::Error| ClusterError::Url(e.to_string()))
}

/// Connection options carrying the credentials of `servers` (the first URL with any):
/// `nats://user:password@host` as user and password, `nats://token@host` as a token. The
/// client does not read them from the URLs itself.
pub fn connect_options(servers: &[async_nats::ServerAddr]) -> async_nats::ConnectOptions {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let options = async_nats::ConnectOptions::new();
    let Some(server) = servers.iter().find(|s| s.username().is_some()) else {
        return options;
    };
    let user = decode(server.username().unwrap_or_default());
    match server.password() {
        Some(password) => options.user_and_password(user, decode(password)),
        None => options.token(user),
    }
}

/// Connects to NATS (in the background: an unreachable NATS is retried, and the node is not
/// ready meanwhile), and, once the stream exists (created when missing), spawns the
/// publisher's sender and the consumer feeding `router`. Subscribes to the control subject,
/// handing the other nodes' admin actions to `actions` ([`control`]; [`Node::control`]
/// announces this node's). With `presence.enabled`, shares `registry`'s presence through the
/// bucket ([`presence`], spawned on `tasks`, which the relay waits for before it stops: a
/// graceful stop removes the node's keys). Everything stops with `stop`.
///
/// Errors: [`ClusterError::Url`] when `cluster.nats_url` cannot be parsed;
/// [`ClusterError::Control`] when the control subject cannot be subscribed to.
pub async fn start(
    config: &Config,
    router: Arc<Router>,
    registry: Arc<Registry>,
    actions: control::Deliver,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<Node, ClusterError> {
    let servers = servers(config.cluster.nats_url.expose())?;
    let client = connect_options(&servers)
        .name("engagement-relay")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(servers)
        .await
        .map_err(|e| ClusterError::Url(e.to_string()))?;
    let js = jetstream::new(client.clone());
    let control = control::start(
        &client,
        &config.cluster.subject_prefix,
        registry.node().to_string(),
        actions,
        stop.clone(),
    )
    .await
    .map_err(|e| ClusterError::Control(e.to_string()))?;
    if config.presence.enabled {
        let ctx = presence::PresenceContext {
            client: client.clone(),
            js: js.clone(),
            registry,
            bucket: presence::bucket(config),
            node_timeout: config.presence.node_timeout,
        };
        presence::start(ctx, tasks, stop.clone());
    }
    let (erasures, deletes) = erasure::Erasures::new();
    let (publisher, sender) = Publisher::new(
        js.clone(),
        &config.cluster.subject_prefix,
        erasures,
        stop.clone(),
    );
    let archive = Arc::new(Archive::new(
        &config.cluster.subject_prefix,
        config.cluster.max_resume_events.get(),
    ));
    tokio::spawn(erasure::run(
        archive.clone(),
        publisher.clone(),
        deletes,
        stop.clone(),
    ));
    let node_archive = archive.clone();
    let serving = Arc::new(StreamStatus::with_gauge(m::CLUSTER_CONSUMING));
    let stream_config = stream_config(config);
    let ctx_status = serving.clone();
    let rebuild_events = config.replay.max_events as u64;
    tokio::spawn(async move {
        let stream = loop {
            match js.get_or_create_stream(stream_config.clone()).await {
                Ok(stream) => break stream,
                Err(e) => {
                    ctx_status.set_disconnected(&e.to_string());
                    warn!(
                        "JetStream stream {} not available yet ({e}); retrying in 1s",
                        stream_config.name
                    );
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        info!(
            stream = stream_config.name,
            "consuming the JetStream stream"
        );
        archive.attach(stream.clone());
        // Publishing starts once the stream exists (events wait in the sender's queue), so
        // the first events of a fresh cluster are not refused for want of a stream.
        tokio::spawn(sender);
        consumer::run(consumer::ConsumerContext {
            client,
            stream,
            router,
            status: ctx_status,
            rebuild_events,
            stop,
        })
        .await;
    });
    Ok(Node {
        publisher,
        archive: node_archive,
        serving,
        control,
    })
}
