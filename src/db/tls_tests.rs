//! Unit tests of [`super::PgTls`]: libpq's mode rules and one-line errors for bad files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use relay_testkit::tls::TestCa;

use super::*;

fn params(mode: Option<&str>, root: Option<&str>) -> TlsParams {
    TlsParams {
        sslmode: mode.map(Into::into),
        sslrootcert: root.map(Into::into),
        ..TlsParams::default()
    }
}

fn error(p: &TlsParams) -> String {
    PgTls::from_params(p).unwrap_err().to_string()
}

/// A CA certificate file in a fresh temp dir.
fn ca_file() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("relay-tls-unit-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ca.crt");
    TestCa::new("unit CA").unwrap().write(&file).unwrap();
    file
}

#[test]
fn the_default_is_prefer_and_system_roots_default_to_verify_full() {
    assert_eq!(
        PgTls::from_params(&params(None, None)).unwrap().mode(),
        SslMode::Prefer
    );
    let system = PgTls::from_params(&params(None, Some("system"))).unwrap();
    assert_eq!(system.mode(), SslMode::VerifyFull);
    assert_eq!(system.roots(), Some(&RootCerts::System));
}

#[test]
fn require_with_a_root_file_verifies_the_chain_as_libpq_does() {
    let ca = ca_file();
    let tls = PgTls::from_params(&params(Some("require"), ca.to_str())).unwrap();
    assert_eq!(tls.mode(), SslMode::VerifyCa);
    let replication = tls.replication("db.example.com");
    assert_eq!(replication.mode, pgwire_replication::SslMode::VerifyCa);
    assert_eq!(replication.ca_pem_path.as_deref(), Some(ca.as_path()));
    let plain = PgTls::from_params(&params(Some("require"), None)).unwrap();
    assert_eq!(plain.mode(), SslMode::Require);
    assert!(plain.connector(None).is_ok());
}

#[test]
fn tokio_postgres_gets_require_for_every_mode_that_must_encrypt() {
    use tokio_postgres::config::SslMode as Pg;
    let ca = ca_file();
    for (mode, pg) in [
        ("disable", Pg::Disable),
        ("prefer", Pg::Prefer),
        ("require", Pg::Require),
        ("verify-ca", Pg::Require),
        ("verify-full", Pg::Require),
    ] {
        let tls = PgTls::from_params(&params(Some(mode), ca.to_str())).unwrap();
        assert_eq!(tls.postgres_mode(), pg, "{mode}");
    }
}

#[test]
fn bad_parameters_are_one_line_naming_the_key() {
    let cases = [
        (
            params(Some("allow"), None),
            "database.url: sslmode `allow`: must be",
        ),
        (
            params(Some("verify-full"), None),
            "sslmode=verify-full needs sslrootcert",
        ),
        (
            params(Some("require"), Some("system")),
            "sslmode=require with sslrootcert=system",
        ),
        (
            params(Some("verify-ca"), Some("/nonexistent/ca.pem")),
            "database.url: sslrootcert /nonexistent/ca.pem: no such file",
        ),
    ];
    for (p, expected) in cases {
        let e = error(&p);
        assert!(e.contains(expected), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    let half = TlsParams {
        sslcert: Some("/c.pem".into()),
        ..TlsParams::default()
    };
    assert!(error(&half).contains("sslcert and sslkey"));
}

#[test]
fn files_without_certificates_or_keys_are_refused() {
    let ca = ca_file();
    let not_pem = ca.with_file_name("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let e = error(&params(Some("verify-full"), not_pem.to_str()));
    assert!(e.contains("no PEM certificate"), "{e}");
    let identity = TlsParams {
        sslcert: ca.to_str().map(Into::into),
        sslkey: not_pem.to_str().map(Into::into),
        ..TlsParams::default()
    };
    assert!(error(&identity).contains("sslkey"), "{}", error(&identity));
}
