//! `[server]`: the WebSocket/HTTP listener, its connection hygiene and its session cap.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

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
        }
    }
}
