//! `[presence]`: who is connected (issue 16): whether users are counted, how long `last_seen`
//! is kept, and when a silent cluster node's sessions leave presence.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, MAX_DURATION};

/// `[presence]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Count users' sockets (`GET /v1/presence`, `presence` frames, `relay.presence`;
    /// `presence.enabled`, default `true`). Off, sessions are still registered for the status
    /// and disconnect endpoints, but nobody is online and nothing is written.
    pub enabled: bool,
    /// How long a user's `last_seen` (when their last session closed) is kept in
    /// `relay.presence` (`presence.retention`, default `7d`, between `1h` and `365d`).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Cluster mode: a node whose heartbeat is older than this is taken for gone and its
    /// sessions leave presence (`presence.node_timeout`, default `15s`, between `3s` and `1h`).
    /// Heartbeats are sent every third of it.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            enabled: true,
            retention: Duration::from_secs(7 * 86_400),
            node_timeout: Duration::from_secs(15),
        }
    }
}

impl PresenceConfig {
    /// Errors: one line naming `presence.retention` or `presence.node_timeout` when out of
    /// range.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.retention < Duration::from_secs(3600) || self.retention > 365 * MAX_DURATION {
            return Err(ConfigError(
                "presence.retention: must be between 1h and 365 days".into(),
            ));
        }
        if self.node_timeout < Duration::from_secs(3)
            || self.node_timeout > Duration::from_secs(3600)
        {
            return Err(ConfigError(
                "presence.node_timeout: must be between 3s and 1h".into(),
            ));
        }
        Ok(())
    }
}
