//! `[monitoring]`: the database health poll (issue 15; the deployment procedures' "Monitoring
//! and Alerts").

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, MAX_DURATION};

/// `[monitoring]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// How often the streamed tables' size, tuples and scans are read on the API's pool
    /// (`monitoring.interval`, `RELAY_MONITORING__INTERVAL`; default `60s`, between `1s` and
    /// `1d`).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            interval: Duration::from_secs(60),
        }
    }
}

impl MonitoringConfig {
    /// Errors: one line naming `monitoring.interval` when it is under 1 s or over a day.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.interval < Duration::from_secs(1) || self.interval > MAX_DURATION {
            return Err(ConfigError(
                "monitoring.interval: must be between 1s and 1 day".into(),
            ));
        }
        Ok(())
    }
}
