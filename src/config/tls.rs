//! `tls_cert` / `tls_key` of `[server]` and `[metrics]`: the PEM files a listener serves TLS
//! with (`https://`, `wss://`). Both or neither; off by default.

use std::path::PathBuf;

use super::{Config, ConfigError, MetricsConfig, ServerConfig};

/// The certificate chain and private key of one listener, as PEM files. Read at start and again
/// on SIGHUP by `http::tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`<section>.tls_cert`; e.g. certbot's `fullchain.pem`).
    pub cert: PathBuf,
    /// The private key, PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (`<section>.tls_key`; certbot's
    /// `privkey.pem`).
    pub key: PathBuf,
    /// The config section, `server` or `metrics`, naming the keys in errors and logs.
    pub section: &'static str,
}

impl TlsFiles {
    /// The config key of the certificate file, e.g. `server.tls_cert`.
    pub fn cert_key(&self) -> String {
        format!("{}.tls_cert", self.section)
    }

    /// The config key of the private key file, e.g. `server.tls_key`.
    pub fn key_key(&self) -> String {
        format!("{}.tls_key", self.section)
    }
}

/// Pairs the two keys of `section`; an empty path counts as unset (so `RELAY_SERVER__TLS_CERT=`
/// turns a file's setting off).
///
/// Errors: one line naming the key that is missing when only the other is set.
fn pair(
    section: &'static str,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    let set = |p: Option<&PathBuf>| p.filter(|p| !p.as_os_str().is_empty()).cloned();
    match (set(cert), set(key)) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key, section })),
        (Some(_), None) => Err(ConfigError(format!(
            "{section}.tls_key: is required when {section}.tls_cert is set (the certificate's private key, PEM)"
        ))),
        (None, Some(_)) => Err(ConfigError(format!(
            "{section}.tls_cert: is required when {section}.tls_key is set (the certificate chain, PEM)"
        ))),
    }
}

impl ServerConfig {
    /// The TLS files of the WebSocket/HTTP listener; `None` serves plain `http://`/`ws://`.
    ///
    /// Errors: only one of `server.tls_cert` and `server.tls_key` is set.
    pub fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        pair("server", self.tls_cert.as_ref(), self.tls_key.as_ref())
    }
}

impl MetricsConfig {
    /// The TLS files of the metrics listener; `None` serves plain `http://`.
    ///
    /// Errors: only one of `metrics.tls_cert` and `metrics.tls_key` is set.
    pub fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        pair("metrics", self.tls_cert.as_ref(), self.tls_key.as_ref())
    }
}

impl Config {
    /// Both listeners' TLS keys come in pairs.
    ///
    /// Errors: one line naming the missing key.
    pub(super) fn validate_tls(&self) -> Result<(), ConfigError> {
        self.server.tls()?;
        self.metrics.tls()?;
        Ok(())
    }
}
