//! TLS on the relay's listeners (`server.tls_cert`/`tls_key`, `metrics.tls_cert`/`tls_key`):
//! rustls with the ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`.
//!
//! The certificate is held by a [`ResolvesServerCert`] that every handshake asks, so a reload
//! ([`Tls::reload`], on SIGHUP: [`reload_on_hangup`]) swaps it for new handshakes while
//! established connections and sessions keep theirs. A reload that fails (a missing file, bad
//! PEM, a key that does not match) keeps the certificate in use and logs an error naming the
//! key and the file.
//!
//! The handshake runs inside the accept loop's connection task ([`handshake`]), under the
//! connection's header timeout and its `max_pending` slot: a client that stalls its handshake
//! is closed like one that stalls its request head. Outcomes are counted in
//! `relay_tls_handshakes_total{listener,result}`; the served certificate's `notAfter` in
//! `relay_tls_certificate_expiry_timestamp_seconds{listener}`.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::{ring, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::config::TlsFiles;
use crate::metrics::{TLS_CERT_EXPIRY, TLS_HANDSHAKES};
use crate::refused::{self, Reason};

/// A certificate or key file that cannot be used: `<key>: <file>: <why>`, one line.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {}: {reason}", path.display())]
pub struct TlsError {
    /// The config key naming the file, e.g. `server.tls_cert`.
    pub key: String,
    /// The file.
    pub path: std::path::PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The TLS side of one listener: its files, the certificate in use, and the acceptor whose
/// handshakes ask for it.
pub struct Tls {
    files: TlsFiles,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

/// The certificate new handshakes are served.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

impl Tls {
    /// Reads `files` and builds the listener's TLS configuration.
    ///
    /// Errors: a [`TlsError`] naming the key and file that is unreadable, not PEM, holds no
    /// certificate or key, or whose key does not match the certificate.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let certified = read(&files, &provider)?;
        export_expiry(&files, &certified);
        let current = Arc::new(Current(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                key: files.cert_key(),
                path: files.cert.clone(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // The relay speaks HTTP/1.1 only (WebSocket upgrades): a client offering h2 alone is
        // refused in the handshake rather than failing after it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            files,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The files this listener serves.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again; on success new handshakes get the new certificate (connections
    /// already established keep theirs), on failure the certificate in use stays.
    ///
    /// Errors: as [`Tls::load`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let provider = ring::default_provider();
        let key = read(&self.files, &provider)?;
        export_expiry(&self.files, &key);
        *self
            .current
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }
}

/// The certificate chain and key of `files`, checked to belong together.
fn read(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let fail = |key: String, path: &Path, reason: String| TlsError {
        key,
        path: path.to_owned(),
        reason,
    };
    let chain =
        crate::pem::certs(&files.cert).map_err(|why| fail(files.cert_key(), &files.cert, why))?;
    let key = crate::pem::private_key(&files.key)
        .map_err(|why| fail(files.key_key(), &files.key, why))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        fail(
            files.key_key(),
            &files.key,
            format!("does not fit {}: {e}", files.cert_key()),
        )
    })
}

/// Sets `relay_tls_certificate_expiry_timestamp_seconds{listener}` to the leaf certificate's
/// `notAfter` (RFC 5280 §4.1.2.5), when it parses.
fn export_expiry(files: &TlsFiles, certified: &CertifiedKey) {
    let not_after = certified
        .cert
        .first()
        .and_then(|der| crate::pem::not_after(der))
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    if let Some(t) = not_after {
        metrics::gauge!(TLS_CERT_EXPIRY, "listener" => files.section).set(t.as_secs_f64());
    }
}

/// How a handshake ended: the `result` label of `relay_tls_handshakes_total`.
fn count(files: &TlsFiles, result: &'static str) {
    metrics::counter!(TLS_HANDSHAKES, "listener" => files.section, "result" => result).increment(1);
}

/// Runs the TLS handshake of an accepted connection, until `deadline` (the connection's header
/// deadline, `server.header_timeout` after its accept). `None` when the connection must close:
/// the handshake failed (`failed`), timed out (`timeout`, also `relay_refused_total{reason=
/// "header_timeout"}`), the connection's pending slot was taken (`evicted`, also
/// `max_pending`), or the relay is stopping.
pub(super) async fn handshake<IO>(
    tls: &Tls,
    io: IO,
    deadline: Instant,
    evicted: &CancellationToken,
    stop: &CancellationToken,
) -> Option<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let files = &tls.files;
    tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        _ = evicted.cancelled() => {
            count(files, "evicted");
            refused::one(Reason::MaxPending);
            None
        }
        _ = sleep_until(deadline) => {
            count(files, "timeout");
            refused::one(Reason::HeaderTimeout);
            None
        }
        accepted = tls.acceptor.accept(io) => match accepted {
            Ok(stream) => {
                count(files, "ok");
                Some(stream)
            }
            Err(e) => {
                count(files, "failed");
                debug!(error = %e, listener = files.section, "TLS handshake failed");
                None
            }
        },
    }
}

/// Reloads every listener's certificate on each SIGHUP until `stop`, logging each outcome (an
/// error names the key and file, and the old certificate stays). Installed only when a listener
/// serves TLS, so SIGHUP keeps its default meaning (terminate) otherwise.
pub async fn reload_on_hangup(listeners: Vec<Arc<Tls>>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            error!(error = %e, "cannot listen for SIGHUP: TLS certificates will not be reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            received = hangups.recv() => if received.is_none() { return },
        }
        for tls in &listeners {
            let files = tls.files();
            // File reads: off the runtime's worker threads.
            let reloading = Arc::clone(tls);
            let reloaded = tokio::task::spawn_blocking(move || reloading.reload())
                .await
                .unwrap_or_else(|e| {
                    Err(TlsError {
                        key: files.cert_key(),
                        path: files.cert.clone(),
                        reason: format!("the reload task failed: {e}"),
                    })
                });
            match reloaded {
                Ok(()) => info!(
                    listener = files.section,
                    cert = %files.cert.display(),
                    "SIGHUP: reloaded the TLS certificate of {} from {}",
                    files.cert_key(),
                    files.cert.display()
                ),
                Err(e) => error!(
                    listener = files.section,
                    "SIGHUP: TLS certificate not reloaded, the previous one stays in use: {e}"
                ),
            }
        }
    }
}
