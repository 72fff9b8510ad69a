//! TLS to PostgreSQL, configured the libpq way in `database.url` (`sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`; <https://www.postgresql.org/docs/current/libpq-ssl.html>), for every
//! connection the relay opens: the SQL connections (migrate, doctor, start-up checks, the API
//! pool) through tokio-postgres's rustls connector, and the replication connection through
//! pgwire-replication's [`TlsConfig`].
//!
//! | `sslmode` | encrypted | chain verified | host name verified | plaintext if the server refuses TLS |
//! |---|---|---|---|---|
//! | `disable` | no | – | – | – |
//! | `prefer` (default) | if the server agrees | no | no | yes |
//! | `require` | yes | no (yes with an `sslrootcert` file, as libpq) | no | no |
//! | `verify-ca` | yes | yes | no | no |
//! | `verify-full` | yes | yes | yes | no |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system`: Mozilla's root program
//! (`webpki-roots`, the roots pgwire-replication uses for the replication connection, so both
//! connections trust the same set). As in libpq 16, `sslrootcert=system` makes `verify-full` the
//! default and refuses weaker modes. Unlike libpq, `verify-ca`/`verify-full` without
//! `sslrootcert` is refused instead of reading `~/.postgresql/root.crt`. The files are read
//! when the settings are built (at start, and for every new SQL connection of `migrate` and
//! `doctor`), so a missing or unreadable one is a configuration error naming it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pgwire_replication::TlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conninfo::TlsParams;

/// A bad TLS parameter in `database.url`; `Display` is one line naming it, e.g.
/// `database.url: sslrootcert /x.pem: no such file`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("database.url: {0}")]
pub struct TlsSettingsError(String);

impl TlsSettingsError {
    /// What is wrong, after `database.url: `.
    pub(super) fn new(why: impl Into<String>) -> TlsSettingsError {
        TlsSettingsError(why.into())
    }
}

/// libpq's `sslmode`, all five of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, unverified; plaintext when it refuses.
    Prefer,
    /// TLS or no connection; the certificate is not verified.
    Require,
    /// TLS; the certificate chain must lead to `sslrootcert`; any host name.
    VerifyCa,
    /// TLS; the chain must lead to `sslrootcert` and the certificate name the host.
    VerifyFull,
}

impl SslMode {
    /// The `sslmode` value, e.g. `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(text: &str) -> Option<SslMode> {
        [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ]
        .into_iter()
        .find(|m| m.as_str() == text)
    }

    /// Whether the server's certificate chain is checked against `sslrootcert`.
    pub fn verifies_chain(self) -> bool {
        self >= SslMode::VerifyCa
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where trusted CA certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// `system`: Mozilla's root program (`webpki-roots`).
    System,
}

/// The TLS settings of `database.url`, checked (files read and parsed) when built.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    roots: Option<RootCerts>,
    client_cert: Option<(PathBuf, PathBuf)>,
    /// Read from `roots` (empty without them).
    trusted: Arc<RootCertStore>,
    /// Read from `client_cert`.
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("roots", &self.roots)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

impl PgTls {
    /// Judges the parameters and reads the files they name.
    ///
    /// Errors: an unknown `sslmode`; `sslrootcert=system` with a mode weaker than
    /// `verify-full` (libpq 16's rule); `verify-ca`/`verify-full` without `sslrootcert`; only
    /// one of `sslcert`/`sslkey`; a file that is missing, unreadable or holds no certificate
    /// (key).
    pub fn from_params(params: &TlsParams) -> Result<PgTls, TlsSettingsError> {
        let fail = |why: String| Err(TlsSettingsError(why));
        let roots = params.sslrootcert.as_deref().map(|r| match r {
            "system" => RootCerts::System,
            file => RootCerts::File(PathBuf::from(file)),
        });
        let mode = match params.sslmode.as_deref() {
            None if roots == Some(RootCerts::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
            Some(text) => match SslMode::parse(text) {
                Some(mode) => mode,
                None => {
                    return fail(format!(
                    "sslmode `{text}`: must be disable, prefer, require, verify-ca or verify-full"
                ))
                }
            },
        };
        let mode = match (&roots, mode) {
            (Some(RootCerts::System), m) if m != SslMode::VerifyFull => {
                return fail(format!(
                    "sslmode={m} with sslrootcert=system: use sslmode=verify-full (libpq refuses weaker modes with the system roots)"
                ));
            }
            (None, m) if m.verifies_chain() => {
                return fail(format!(
                    "sslmode={m} needs sslrootcert: the CA's PEM file, or `system` for public CAs"
                ));
            }
            // libpq: "if a root CA file exists, the behavior of sslmode=require will be the
            // same as that of verify-ca" (libpq-ssl.html, 32.19.1).
            (Some(RootCerts::File(_)), SslMode::Require) => SslMode::VerifyCa,
            (_, m) => m,
        };
        let client_cert =
            match (&params.sslcert, &params.sslkey) {
                (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
                (None, None) => None,
                _ => return fail(
                    "sslcert and sslkey: give both (the client certificate and its key) or neither"
                        .into(),
                ),
            };
        let trusted = match &roots {
            Some(RootCerts::File(path)) => read_roots(path)?,
            Some(RootCerts::System) => {
                RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
            }
            None => RootCertStore::empty(),
        };
        let identity = match &client_cert {
            Some((cert, key)) => Some((read_certs("sslcert", cert)?, Arc::new(read_key(key)?))),
            None => None,
        };
        Ok(PgTls {
            mode,
            roots,
            client_cert,
            trusted: Arc::new(trusted),
            identity,
        })
    }

    /// The effective mode (`require` with an `sslrootcert` file is `verify-ca`).
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// `sslrootcert`, if given.
    pub fn roots(&self) -> Option<&RootCerts> {
        self.roots.as_ref()
    }

    /// The mode to give tokio-postgres, which knows disable/prefer/require: verification is
    /// the connector's business.
    pub fn postgres_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self.mode {
            SslMode::Disable => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }

    /// The tokio-postgres connector for these settings; `observer`, when given, records the
    /// server's certificate of each handshake.
    ///
    /// Errors: the client certificate does not go with its key, or the roots cannot make a
    /// verifier (one line naming the key).
    pub fn connector(
        &self,
        observer: Option<&PeerCertificate>,
    ) -> Result<MakeRustlsConnect, TlsSettingsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = if self.mode.verifies_chain() {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(self.trusted.clone(), provider.clone())
                    .build()
                    .map_err(|e| TlsSettingsError(format!("sslrootcert: {e}")))?;
            Some(webpki)
        } else {
            None
        };
        let verifier = Arc::new(Verifier {
            chain,
            check_name: self.mode == SslMode::VerifyFull,
            provider: provider.clone(),
            seen: observer.cloned(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSettingsError(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.identity {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs.clone(), key.clone_key())
                .map_err(|e| TlsSettingsError(format!("sslcert/sslkey: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// pgwire-replication's settings for the replication connection to `host`: the same mode,
    /// files and roots (the crate reads the files itself; without a file it trusts
    /// `webpki-roots`, which is what `system` means here). `host` is also the name verified,
    /// as an IP address when it is one.
    pub fn replication(&self, host: &str) -> TlsConfig {
        use pgwire_replication::SslMode as Pw;
        let mode = match self.mode {
            SslMode::Disable => Pw::Disable,
            SslMode::Prefer => Pw::Prefer,
            SslMode::Require => Pw::Require,
            SslMode::VerifyCa => Pw::VerifyCa,
            SslMode::VerifyFull => Pw::VerifyFull,
        };
        let ca_pem_path = match &self.roots {
            Some(RootCerts::File(path)) => Some(path.clone()),
            _ => None,
        };
        let (client_cert_pem_path, client_key_pem_path) = match &self.client_cert {
            Some((cert, key)) => (Some(cert.clone()), Some(key.clone())),
            None => (None, None),
        };
        TlsConfig {
            mode,
            ca_pem_path,
            sni_hostname: Some(host.to_string()),
            client_cert_pem_path,
            client_key_pem_path,
        }
    }
}

/// The server certificate of the last handshake through a connector made with it
/// ([`PgTls::connector`]): what `doctor` reads the expiry from.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificate(Arc<Mutex<Option<CertificateDer<'static>>>>);

impl PeerCertificate {
    /// The end-entity certificate (DER) the server presented, if a handshake happened.
    pub fn get(&self) -> Option<CertificateDer<'static>> {
        self.0.lock().ok().and_then(|seen| seen.clone())
    }
}

/// The server certificate check of every mode: with `chain`, the certificate must lead to
/// the roots (and name the host when `check_name`: `verify-full`); without, anything goes
/// (`prefer`, `require`). The handshake signatures are always checked, so the server holds the
/// certificate's key. `seen`, when set, records the certificate.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
    seen: Option<PeerCertificate>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(Ok(mut seen)) = self.seen.as_ref().map(|s| s.0.lock()) {
            *seen = Some(end_entity.clone().into_owned());
        }
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Every certificate of a PEM file; at least one. Errors name the key and the path
/// (`sslrootcert /x.pem: no such file`).
fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSettingsError> {
    crate::pem::certs(path)
        .map_err(|why| TlsSettingsError(format!("{key} {}: {why}", path.display())))
}

/// The CA certificates of `sslrootcert`; at least one usable.
fn read_roots(path: &Path) -> Result<RootCertStore, TlsSettingsError> {
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(read_certs("sslrootcert", path)?);
    if added == 0 {
        return Err(TlsSettingsError(format!(
            "sslrootcert {}: no usable CA certificate in the file",
            path.display()
        )));
    }
    Ok(store)
}

/// The private key of `sslkey` (PKCS#8, PKCS#1 or SEC1 PEM).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSettingsError> {
    crate::pem::private_key(path)
        .map_err(|why| TlsSettingsError(format!("sslkey {}: {why}", path.display())))
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
