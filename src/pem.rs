//! The PEM files the configuration names: certificates and private keys for the listeners
//! (`server.tls_cert`, …) and for PostgreSQL connections (`sslrootcert`, `sslcert`, `sslkey`),
//! read with the reason in words when one is unusable; and a certificate's expiry.

use std::path::Path;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::Decode;

/// Every certificate of the PEM file at `path`; at least one.
///
/// Errors: the reason, for the caller to prefix with the key and path: "no such file",
/// "permission denied", "no PEM certificate in the file", "not a PEM certificate file: …".
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err("no PEM certificate in the file".into()),
        Err(e) => Err(format!("not a PEM certificate file: {e}")),
    }
}

/// The private key of the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
///
/// Errors: the reason, as for [`certs`], or "not a PEM private key: …".
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| format!("not a PEM private key: {e}"))
}

/// `notAfter` of a DER certificate (RFC 5280 §4.1.2.5); `None` when it does not parse.
pub fn not_after(der: &[u8]) -> Option<SystemTime> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate.validity.not_after.to_system_time())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_say_why() {
        let missing = Path::new("/nonexistent/x.pem");
        assert_eq!(certs(missing).unwrap_err(), "no such file");
        assert_eq!(private_key(missing).unwrap_err(), "no such file");
        let dir = std::env::temp_dir().join(format!("relay-pem-{}", std::process::id()));
        std::fs::write(&dir, "not pem").unwrap();
        assert_eq!(certs(&dir).unwrap_err(), "no PEM certificate in the file");
        assert!(private_key(&dir)
            .unwrap_err()
            .starts_with("not a PEM private key"));
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(not_after(b"not DER"), None);
    }
}
