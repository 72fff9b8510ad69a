//! Typed configuration: `config.toml`, then `RELAY_*` environment variables, then CLI flags.
//!
//! Precedence (lowest first): built-in defaults (the same values `config.toml` documents), the
//! TOML file, environment variables, command-line flags. Environment variables are
//! `RELAY_<SECTION>__<KEY>` (for example `RELAY_LIMITS__SESSION_QUEUE=4096`), plus the short
//! aliases `RELAY_DATABASE_URL`, `RELAY_JWT_SECRET`, `RELAY_JWKS_URL`, `RELAY_LISTEN` and
//! `RELAY_METRICS_LISTEN`.
//! Every error names the key it is about, on one line.
//!
//! Types carry the rules where they can: durations are humantime strings (`250ms`, `5m`), byte
//! sizes an integer or an IEC size (`512MiB`, [`bytes`]), and counts where zero means nothing
//! are `NonZero*`.

mod auth;
pub mod bytes;
mod cluster;
mod fairness;
mod monitoring;
mod presence;
mod server;
mod tls;

pub use auth::AuthConfig;
pub use cluster::ClusterConfig;
pub use monitoring::MonitoringConfig;
pub use presence::PresenceConfig;
pub use server::{InspectorPreset, ServerConfig};
pub use tls::TlsFiles;

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::tables::{default_tables, TableConfig};

/// Largest `limits.session_queue` accepted.
const MAX_SESSION_QUEUE: usize = 1 << 20;
/// Longest duration any key accepts.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// A configuration error: one line naming the key.
#[derive(Debug, thiserror::Error)]
#[error("config error: {0}")]
pub struct ConfigError(pub String);

/// A secret string; never printed by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when no secret was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

/// The whole configuration; see `config.toml` for every key with its documentation.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the WebSocket/HTTP listener.
    pub server: ServerConfig,
    /// `[metrics]`: the Prometheus listener.
    pub metrics: MetricsConfig,
    /// `[database]`: PostgreSQL connection, slot and publication.
    pub database: DatabaseConfig,
    /// `[auth]`: JWT validation.
    pub auth: AuthConfig,
    /// `[limits]`: per-session bounds.
    pub limits: LimitsConfig,
    /// `[replay]`: the replay window that lets clients resume without gaps.
    pub replay: ReplayConfig,
    /// `[ingest]`: the HTTP ingest and history API.
    pub ingest: IngestConfig,
    /// `[shutdown]`: graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[monitoring]`: the database health poll.
    pub monitoring: MonitoringConfig,
    /// `[presence]`: who is connected.
    pub presence: PresenceConfig,
    /// `[cluster]`: cluster mode on NATS JetStream (off without `nats_url`).
    pub cluster: ClusterConfig,
    /// `[[tables]]`: the streamed tables, their owner columns and operations
    /// (default [`default_tables`]).
    pub tables: Vec<TableConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: Default::default(),
            metrics: Default::default(),
            database: Default::default(),
            auth: Default::default(),
            limits: Default::default(),
            replay: Default::default(),
            ingest: Default::default(),
            shutdown: Default::default(),
            log: Default::default(),
            monitoring: Default::default(),
            presence: Default::default(),
            cluster: Default::default(),
            tables: default_tables(),
        }
    }
}

/// `[metrics]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address serving `GET /metrics` in Prometheus text format (default `0.0.0.0:9898`).
    pub listen: SocketAddr,
    /// PEM certificate chain: with `tls_key`, the port serves `https://` (default unset).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (default unset).
    pub tls_key: Option<PathBuf>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: ([0, 0, 0, 0], 9898).into(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// `[database]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// libpq-style URL of the database that holds the table, for example
    /// `postgres://relay:secret@db.example.com:5432/postgres`. The user needs the `REPLICATION`
    /// attribute (or superuser) and `SELECT` on the streamed table.
    pub url: Secret,
    /// Name of the permanent logical replication slot (pgoutput), created when missing
    /// (default `engagement_relay`).
    pub slot: String,
    /// Publication the slot streams (default `engagement_events_pub`, created by the migration).
    pub publication: String,
    /// How often the confirmed flush LSN is reported to PostgreSQL (default `1s`).
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// First reconnect delay after a lost connection (default `250ms`); doubles per attempt.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Upper bound of the reconnect delay (default `30s`); each delay gets ±20 % jitter.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/postgres"),
            slot: "engagement_relay".into(),
            publication: "engagement_events_pub".into(),
            status_interval: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// `[limits]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Events queued per session before it is closed as a slow consumer (4008); default 8192
    /// (one maximal ingest batch arrives as one burst), at most 1048576.
    pub session_queue: NonZeroUsize,
    /// Largest client frame accepted, in bytes (an integer or e.g. `64KiB`, the default; at
    /// least 256); larger frames close the session with 1009 ("message too big").
    #[serde(deserialize_with = "bytes::deserialize")]
    pub max_client_frame_bytes: usize,
    /// Interval between server pings (default `20s`).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A session that has not answered a ping (or sent anything) for this long is dropped
    /// (default `60s`).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A Realtime socket without a subscribed channel (a valid token and a served binding) this
    /// long after it opened or left its last channel is closed with 1008 (default `30s`);
    /// native sessions are authorized at the upgrade.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// Most sessions one user (`sub`) may hold at once: native sessions plus joined Realtime
    /// channels; one more is refused (HTTP 429 `too_many_user_sessions`, or a `phx_reply`
    /// error). Bounds the fan-out of each of the user's events (default 32).
    pub max_sessions_per_user: NonZeroUsize,
    /// Most service-role sessions (native sessions plus Realtime channels) at once; each
    /// receives every event, so this bounds the fan-out of every event (default 1024).
    pub max_service_sessions: NonZeroUsize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            session_queue: nonzero(8192),
            max_client_frame_bytes: 64 * 1024,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            join_timeout: Duration::from_secs(30),
            max_sessions_per_user: nonzero(32),
            max_service_sessions: nonzero(1024),
        }
    }
}

/// `[replay]` section: how much recent history the relay keeps in memory (and in the slot) so
/// that a client reconnecting with `since=<cursor>` gets exactly what it missed.
///
/// The slot is confirmed only up to what is older than `window`, so PostgreSQL retains that
/// much WAL (of the whole cluster, not only the streamed table) and a restarted relay rebuilds
/// the window from its own slot.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// Events younger than this (by commit timestamp) stay replayable (default `5m`; `0s`
    /// disables resume: every `since` is then answered `complete:false`, except at the head).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Most events kept, whatever their age (default 1,000,000).
    pub max_events: usize,
    /// Most bytes kept, estimated per event from its frame size ([`crate::model::Event::approx_bytes`],
    /// calibrated against RSS); an integer or e.g. `512MiB` (the default: a 5-minute window up
    /// to ~2,000 events/s of ~500-byte rows).
    #[serde(deserialize_with = "bytes::deserialize")]
    pub max_bytes: usize,
    /// Most events of one owner (`sub`) kept (default 10,000): beyond it that user's oldest are
    /// evicted first, so one user cannot use up the window of the others; that user's resume
    /// from before them is `complete:false`.
    pub max_events_per_user: NonZeroUsize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            window: Duration::from_secs(300),
            max_events: 1_000_000,
            max_bytes: 512 << 20,
            max_events_per_user: nonzero(10_000),
        }
    }
}

/// `[ingest]` section: `POST /v1/events/batch`, `POST /v1/events`, `GET /v1/events`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Most events in one request (default 5,000, at most 100,000); more is a 413.
    pub max_batch: NonZeroUsize,
    /// Largest request body in bytes, an integer or e.g. `8MiB` (the default; at least 1024);
    /// more is a 413.
    #[serde(deserialize_with = "bytes::deserialize")]
    pub max_body_bytes: usize,
    /// Events older than this are refused (RFC 3339, default `2020-01-01T00:00:00Z`).
    pub oldest_timestamp: chrono::DateTime<chrono::Utc>,
    /// SQL connections of the API's pool (default 8); the replication stream has its own.
    pub pool_size: NonZeroUsize,
    /// How long a request waits for a pooled connection before a 503 (default `5s`).
    #[serde(with = "humantime_serde")]
    pub pool_timeout: Duration,
    /// API requests per second per user (`sub`), sustained (default 10)...
    pub user_rate: NonZeroU32,
    /// ...with bursts of this many (default 20); beyond, HTTP 429 with `Retry-After`.
    pub user_burst: NonZeroU32,
    /// API requests per second per service-role token (default 50)...
    pub key_rate: NonZeroU32,
    /// ...with bursts of this many (default 100).
    pub key_burst: NonZeroU32,
    /// Rows per second a user (`sub`) may ingest, sustained (default 100)...
    pub user_rows_per_second: NonZeroU32,
    /// ...with bursts of this many (default 5,000; at least `ingest.max_batch`); beyond,
    /// HTTP 429 `rate_limited` with `Retry-After` and nothing inserted.
    pub user_rows_burst: NonZeroU32,
    /// Rows per second per service-role token, sustained (default 2,000: what the replay
    /// window's default `max_bytes` holds for its 5 minutes)...
    pub key_rows_per_second: NonZeroU32,
    /// ...with bursts of this many (default 20,000; at least `ingest.max_batch`).
    pub key_rows_burst: NonZeroU32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch: nonzero(5_000),
            max_body_bytes: 8 << 20,
            oldest_timestamp: chrono::DateTime::from_timestamp(1_577_836_800, 0)
                .unwrap_or_default(),
            pool_size: nonzero(8),
            pool_timeout: Duration::from_secs(5),
            user_rate: nonzero32(10),
            user_burst: nonzero32(20),
            key_rate: nonzero32(50),
            key_burst: nonzero32(100),
            user_rows_per_second: nonzero32(100),
            user_rows_burst: nonzero32(5_000),
            key_rows_per_second: nonzero32(2_000),
            key_rows_burst: nonzero32(20_000),
        }
    }
}

/// `[shutdown]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Longest a graceful shutdown may take before it is forced (default `10s`).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Duration::from_secs(10),
        }
    }
}

/// `[log]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, for example `info` or `engagement_relay=debug,info`; `RUST_LOG`
    /// overrides it (default `info`).
    pub level: String,
    /// `text` (default) or `json` (one object per line).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON objects, one per line.
    Json,
}

/// Values given on the command line; each overrides the file and the environment. The CLI
/// takes them as these global flags (each doc line is the flag's help).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// PostgreSQL URL [env: RELAY_DATABASE_URL].
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// JWT secret (HS256) [env: RELAY_JWT_SECRET].
    #[arg(long, global = true)]
    pub jwt_secret: Option<String>,
    /// WebSocket/HTTP listen address [env: RELAY_LISTEN].
    #[arg(long, global = true)]
    pub listen: Option<String>,
    /// Metrics listen address [env: RELAY_METRICS_LISTEN].
    #[arg(long, global = true)]
    pub metrics_listen: Option<String>,
}

impl Config {
    /// Loads the configuration: defaults, then `path` (when it exists, or always when
    /// `required`), then `RELAY_*` variables, then `overrides`; then validates it.
    ///
    /// Errors: a one-line [`ConfigError`] naming the offending key (or the file).
    pub fn load(path: &Path, required: bool, overrides: &Overrides) -> Result<Config, ConfigError> {
        if required && !path.exists() {
            return Err(ConfigError(format!(
                "--config: file {} does not exist",
                path.display()
            )));
        }
        let mut figment = Figment::new().merge(Toml::file(path)).merge(env_provider());
        for (key, value) in [
            ("database.url", &overrides.database_url),
            ("auth.jwt_secret", &overrides.jwt_secret),
            ("server.listen", &overrides.listen),
            ("metrics.listen", &overrides.metrics_listen),
        ] {
            if let Some(value) = value {
                figment = figment.merge((key, value));
            }
        }
        let config: Config = figment.extract().map_err(|e| {
            // One line, key first (`limits.session_queue: invalid value …`), then where the
            // value came from.
            let first = e.into_iter().next().map(|e| {
                let source = e.metadata.as_ref().map(|m| match &m.source {
                    Some(source) => format!(" ({} {source})", m.name),
                    None => format!(" ({})", m.name),
                });
                if e.path.is_empty() {
                    e.to_string()
                } else {
                    format!(
                        "{}: {}{}",
                        e.path.join("."),
                        e.kind,
                        source.unwrap_or_default()
                    )
                }
            });
            ConfigError(first.unwrap_or_default().replace('\n', " "))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Errors unless `auth.jwt_secret` is set (`token` without `--key` needs it).
    pub fn require_jwt_secret(&self) -> Result<(), ConfigError> {
        if self.auth.jwt_secret.is_empty() {
            return Err(ConfigError(
                "auth.jwt_secret: is required (set RELAY_JWT_SECRET or --jwt-secret to the project's JWT secret)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Checks that tokens can be verified at all: `auth.jwt_secret` (HS256), `auth.jwks_url` or
    /// `auth.jwks_file` (ES256, RS256, EdDSA), or several of them.
    ///
    /// Errors: one line naming the keys when none is set.
    pub fn require_token_keys(&self) -> Result<(), ConfigError> {
        if self.auth.jwt_secret.is_empty() && !self.auth.has_jwks() {
            return Err(ConfigError(
                "auth.jwt_secret or auth.jwks_url/auth.jwks_file: one is required (RELAY_JWT_SECRET for HS256 tokens, RELAY_AUTH__JWKS_URL for Supabase's asymmetric signing keys)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Checks the rules serde cannot express. Errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        if self.database.url.is_empty() {
            return fail("database.url", "is required (RELAY_DATABASE_URL)");
        }
        // The URL and its TLS parameters and files (`crate::db::tls`), read now so that a bad
        // one stops the relay at start with the key named.
        if let Err(e) = crate::db::PgTarget::parse(self.database.url.expose()) {
            return Err(ConfigError(e.to_string()));
        }
        for (key, name) in [
            ("database.slot", &self.database.slot),
            ("database.publication", &self.database.publication),
        ] {
            let valid = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return fail(key, "must be 1–63 characters of a-z, 0-9 and _");
            }
        }
        if self.limits.session_queue.get() > MAX_SESSION_QUEUE {
            return fail("limits.session_queue", "must be between 1 and 1048576");
        }
        for (key, value) in [
            ("limits.ping_interval", self.limits.ping_interval),
            ("limits.idle_timeout", self.limits.idle_timeout),
            ("limits.join_timeout", self.limits.join_timeout),
            ("server.header_timeout", self.server.header_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.request_timeout", self.server.request_timeout),
            ("database.status_interval", self.database.status_interval),
            ("database.reconnect_max", self.database.reconnect_max),
            ("shutdown.grace", self.shutdown.grace),
            ("auth.leeway", self.auth.leeway),
            ("replay.window", self.replay.window),
        ] {
            if value > MAX_DURATION {
                return fail(key, "must be at most 1 day");
            }
        }
        if self.shutdown.grace < self.database.status_interval + Duration::from_secs(2) {
            return fail(
                "shutdown.grace",
                "must exceed database.status_interval by at least 2s (the final acknowledgement waits up to one status interval)",
            );
        }
        if self.limits.max_client_frame_bytes < 256 {
            return fail("limits.max_client_frame_bytes", "must be at least 256");
        }
        for (key, value) in [
            ("limits.join_timeout", self.limits.join_timeout),
            ("server.header_timeout", self.server.header_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.request_timeout", self.server.request_timeout),
        ] {
            if value.is_zero() {
                return fail(key, "must be above 0");
            }
        }
        if self.limits.ping_interval.is_zero() {
            return fail("limits.ping_interval", "must be above 0");
        }
        if self.limits.idle_timeout <= self.limits.ping_interval {
            return fail(
                "limits.idle_timeout",
                "must be longer than limits.ping_interval",
            );
        }
        if self.database.reconnect_min.is_zero()
            || self.database.reconnect_max < self.database.reconnect_min
        {
            return fail(
                "database.reconnect_max",
                "must be at least database.reconnect_min, which must be above 0",
            );
        }
        if self.database.status_interval.is_zero() {
            return fail("database.status_interval", "must be above 0");
        }
        if self.ingest.max_batch.get() > 100_000 {
            return fail("ingest.max_batch", "must be between 1 and 100000");
        }
        if self.ingest.max_body_bytes < 1024 {
            return fail("ingest.max_body_bytes", "must be at least 1024");
        }
        self.auth.validate()?;
        self.server.validate_inspector()?;
        self.validate_fairness()?;
        self.monitoring.validate()?;
        self.presence.validate()?;
        self.cluster.validate()?;
        self.validate_tls()?;
        crate::tables::validate(&self.tables).map_err(|e| ConfigError(e.to_string()))
    }
}

/// `n` as a default count (never zero; 1 if it were).
fn nonzero(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// `n` as a default rate (never zero; 1 if it were).
fn nonzero32(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// `RELAY_SECTION__KEY` variables plus the documented short aliases.
fn env_provider() -> Env {
    Env::prefixed("RELAY_").map(|key| {
        let key = key.as_str().to_ascii_lowercase();
        match key.as_str() {
            "database_url" => "database.url".into(),
            "jwt_secret" => "auth.jwt_secret".into(),
            "jwks_url" => "auth.jwks_url".into(),
            "listen" => "server.listen".into(),
            "metrics_listen" => "metrics.listen".into(),
            other => other.replace("__", ".").into(),
        }
    })
}

#[cfg(test)]
pub(crate) mod tests;
