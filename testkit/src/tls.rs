//! Certificates generated at test time (feature `tls`): a [`TestCa`] of the run's own, the
//! server certificates it signs (for a relay serving TLS, `server.tls_cert`/`tls_key`, and for
//! TLS-only clusters, [`crate::pgcluster::ClusterOptions::tls`]), written as PEM files, and
//! rustls client configurations (ring provider) that trust the CA and nothing else.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// A certificate authority made for one test run.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

/// A server certificate and its private key.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The certificate, DER (what a client sees as the peer certificate).
    pub der: CertificateDer<'static>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl TestCa {
    /// A new CA with a fresh key, named `name` (its subject's common name).
    ///
    /// # Errors
    /// Key generation or signing failed (rcgen).
    pub fn new(name: &str) -> Result<TestCa, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM (e.g. for `NODE_EXTRA_CA_CERTS` or `relay-soak --ca`).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate to `path` (e.g. an `sslrootcert` file).
    ///
    /// # Errors
    /// The write's.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, &self.pem)
    }

    /// A server certificate for `localhost` and `127.0.0.1` with serial number `serial`, signed
    /// by this CA, with a fresh key.
    ///
    /// # Errors
    /// Key generation or signing failed (rcgen).
    pub fn issue(&self, serial: u64) -> Result<ServerCert, rcgen::Error> {
        self.sign(&["localhost", "127.0.0.1"], Some(serial))
    }

    /// A server certificate for `names` (DNS names, or IP addresses as text, e.g. `127.0.0.1`),
    /// signed by this CA with a fresh key; the first name is also its common name.
    ///
    /// # Errors
    /// rcgen's (key generation, a name it cannot encode).
    pub fn server_cert(&self, names: &[&str]) -> Result<ServerCert, rcgen::Error> {
        self.sign(names, None)
    }

    fn sign(&self, names: &[&str], serial: Option<u64>) -> Result<ServerCert, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.serial_number = serial.map(SerialNumber::from);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A rustls client configuration (ring) that trusts this CA only.
    ///
    /// # Errors
    /// Only if rustls refuses the CA certificate (it does not for one made by [`TestCa::new`]).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        client_config(std::slice::from_ref(&self.der))
    }
}

impl ServerCert {
    /// Writes the certificate to `cert` and the key to `key` (each through a temporary file and a
    /// rename, so a reader never sees half a file).
    ///
    /// # Errors
    /// Writing or renaming failed.
    pub fn write(&self, cert: &Path, key: &Path) -> io::Result<()> {
        for (path, text) in [(cert, &self.cert_pem), (key, &self.key_pem)] {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, text)?;
            std::fs::rename(&partial, path)?;
        }
        Ok(())
    }
}

/// A rustls client configuration (ring, TLS 1.2 and 1.3) that trusts exactly `roots`.
///
/// # Errors
/// rustls refused a root certificate.
pub fn client_config(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(store)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A rustls client configuration that trusts the CA certificates in the PEM file `path` (what
/// `relay-soak --ca` reads).
///
/// # Errors
/// The file is unreadable or holds no certificate (`InvalidData`), or rustls refused one.
pub fn client_config_from_pem(path: &Path) -> io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let roots = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("{}: {e:?}", path.display())))?;
    if roots.is_empty() {
        return Err(invalid(format!("{}: no CERTIFICATE block", path.display())));
    }
    client_config(&roots).map_err(|e| invalid(e.to_string()))
}
