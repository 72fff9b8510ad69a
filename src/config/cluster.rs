//! `[cluster]`: cluster mode on NATS JetStream (issue 14). Without `nats_url` the relay is a
//! single node and nothing here is used.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Secret};

/// `[cluster]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers, comma-separated (`nats://host:4222,nats://host2:4222`; `tls://` for TLS,
    /// `nats://user:password@host` for credentials) (`cluster.nats_url`,
    /// `RELAY_CLUSTER__NATS_URL`). Empty: single node.
    pub nats_url: Secret,
    /// The JetStream stream (`cluster.stream`; default `ENGAGEMENT_RELAY`). Created when
    /// missing, with `max_age` = `replay.window`.
    pub stream: String,
    /// First token of every subject: events go to `<prefix>.<schema>.<table>.<owner>`
    /// (`cluster.subject_prefix`; default `relay`).
    pub subject_prefix: String,
    /// How often a standby tries to take the replication slot (`cluster.takeover_interval`;
    /// default `1s`).
    #[serde(with = "humantime_serde")]
    pub takeover_interval: Duration,
    /// Replicas of the stream (`cluster.replicas`; default 1; 3 in a three-server NATS
    /// cluster).
    pub replicas: NonZeroUsize,
    /// How long JetStream remembers a `Nats-Msg-Id` to drop a re-published event
    /// (`cluster.duplicate_window`; default `10m`, at most `replay.window`).
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Most events a resume reads back from the stream when its cursor is older than the
    /// node's in-memory window (`cluster.max_resume_events`; default 100,000). A resume that
    /// missed more is answered `complete:false`.
    pub max_resume_events: NonZeroUsize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: Secret::default(),
            stream: "ENGAGEMENT_RELAY".into(),
            subject_prefix: "relay".into(),
            takeover_interval: Duration::from_secs(1),
            replicas: NonZeroUsize::MIN,
            duplicate_window: Duration::from_secs(600),
            max_resume_events: NonZeroUsize::new(100_000).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

impl ClusterConfig {
    /// True when `nats_url` is set: the relay runs as a cluster node.
    pub fn enabled(&self) -> bool {
        !self.nats_url.expose().trim().is_empty()
    }

    /// Errors: one line naming the key: a stream name or subject prefix NATS would refuse
    /// (empty, or with `.`, `*`, `>`, whitespace; the prefix may hold dots between tokens),
    /// a takeover interval outside 100 ms..60 s, more than 5 replicas.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |c: char| c.is_whitespace() || matches!(c, '*' | '>');
        if self.stream.is_empty() || self.stream.contains('.') || self.stream.contains(bad) {
            return Err(ConfigError(
                "cluster.stream: must be a non-empty name without '.', '*', '>' or spaces".into(),
            ));
        }
        if self.subject_prefix.split('.').any(|t| t.is_empty()) || self.subject_prefix.contains(bad)
        {
            return Err(ConfigError(
                "cluster.subject_prefix: must be dot-separated tokens without '*', '>' or spaces"
                    .into(),
            ));
        }
        let interval = self.takeover_interval;
        if interval < Duration::from_millis(100) || interval > Duration::from_secs(60) {
            return Err(ConfigError(
                "cluster.takeover_interval: must be between 100ms and 60s".into(),
            ));
        }
        if self.replicas.get() > 5 {
            return Err(ConfigError("cluster.replicas: at most 5".into()));
        }
        if self.duplicate_window < Duration::from_secs(1) {
            return Err(ConfigError("cluster.duplicate_window: at least 1s".into()));
        }
        Ok(())
    }
}
