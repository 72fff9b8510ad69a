//! `[server]`: the WebSocket/HTTP listener, its connection hygiene and its session cap.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Secret};

/// Longest `server.inspector_presets` label, in characters.
const MAX_PRESET_LABEL: usize = 100;

/// `[server]` section.
///
/// Connection timeouts (enforced by `http::serve`, the relay's accept loop): a new connection
/// must send a complete request head within `header_timeout` of being accepted; between
/// requests a keep-alive connection may stay silent for `idle_timeout`, and once the next
/// request's first byte arrives its head must complete within `header_timeout`. A connection
/// upgraded to a WebSocket leaves these rules for the session's own (`limits.ping_interval`,
/// `limits.idle_timeout`, `limits.join_timeout`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the WebSocket and HTTP listener (`server.listen`, default `0.0.0.0:4000`).
    pub listen: SocketAddr,
    /// Most concurrent WebSocket sessions; further upgrades get HTTP 503. Unset (the default):
    /// the open-file limit minus a reserve (`limits::budget`), logged at start.
    pub max_sessions: Option<NonZeroUsize>,
    /// Longest a connection may take to send a complete request head, from its accept (or,
    /// on a keep-alive connection, from the first byte of the next request); then it is closed
    /// (default `10s`).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest a keep-alive HTTP connection may stay silent between requests (default `75s`:
    /// longer than the 60 s idle timeout of common load balancers, so they close first).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest an HTTP request's body may take to arrive in full after its head (default
    /// `30s`); then it is answered 408 `request_timeout` and the connection closed: a body
    /// trickled a byte at a time cannot hold a descriptor. Only the body read is timed, never
    /// the handler's work after it (an insert being committed).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most connections waiting for a request head at once (new ones and keep-alive ones
    /// between requests); a connection accepted beyond it takes the slot of the one waiting
    /// longest, which is closed. Unset (the default): an eighth of the open-file limit, at most
    /// 1024.
    pub max_pending: Option<NonZeroUsize>,
    /// PEM certificate chain (leaf first): with `tls_key`, the listener serves `https://` and
    /// `wss://` (default unset: plain `http://`/`ws://`, e.g. behind a TLS-terminating proxy).
    /// Read again on SIGHUP; a reload that fails keeps the certificate in use.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1; default unset).
    pub tls_key: Option<PathBuf>,
    /// Serve the live inspector page, `GET /inspector` and its assets (default `false`: those
    /// paths are 404 like any unknown route). The page holds no secret: the operator pastes a
    /// token, which stays in the browser.
    pub inspector: bool,
    /// Tokens the inspector page offers in its picker (`GET /inspector/presets.json`, served
    /// only when this is not empty and `inspector` is on). For local development only (`dev`
    /// sets them): anyone who can reach the listener can read them. Default empty.
    pub inspector_presets: Vec<InspectorPreset>,
}

/// One `server.inspector_presets` entry: a token the inspector page offers by its label.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InspectorPreset {
    /// What the picker shows, e.g. a user's email or `service_role` (1–100 characters, no
    /// control characters).
    pub label: String,
    /// The JWT the page fills in when the preset is picked; never logged (`Debug` redacts it).
    pub token: Secret,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([0, 0, 0, 0], 4000).into(),
            max_sessions: None,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            request_timeout: Duration::from_secs(30),
            max_pending: None,
            tls_cert: None,
            tls_key: None,
            inspector: false,
            inspector_presets: Vec::new(),
        }
    }
}

impl InspectorPreset {
    /// `presets` as the value of `RELAY_SERVER__INSPECTOR_PRESETS` (figment's inline syntax,
    /// `[{label="…",token="…"}]`), for handing them to a child process (`dev --nodes`).
    pub fn env_value(presets: &[InspectorPreset]) -> String {
        // JSON string quoting is accepted by figment's parser (`\"`, `\\`, `\uXXXX`).
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        let entries: Vec<String> = presets
            .iter()
            .map(|p| {
                format!(
                    "{{label={},token={}}}",
                    quote(&p.label),
                    quote(p.token.expose())
                )
            })
            .collect();
        format!("[{}]", entries.join(","))
    }
}

impl ServerConfig {
    /// Checks `server.inspector_presets`: each label 1–100 characters without control
    /// characters, each token non-empty without whitespace (a JWT).
    ///
    /// Errors: one line naming the entry's key, e.g. `server.inspector_presets[1].token`.
    pub(super) fn validate_inspector(&self) -> Result<(), ConfigError> {
        for (i, preset) in self.inspector_presets.iter().enumerate() {
            let key = format!("server.inspector_presets[{i}]");
            let label = preset.label.chars().count();
            if label == 0 || label > MAX_PRESET_LABEL || preset.label.chars().any(char::is_control)
            {
                return Err(ConfigError(format!(
                    "{key}.label: must be 1–{MAX_PRESET_LABEL} characters without control characters"
                )));
            }
            let token = preset.token.expose();
            if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError(format!(
                    "{key}.token: must be a JWT (not empty, no whitespace)"
                )));
            }
        }
        Ok(())
    }
}
