//! The `tls` check: whether doctor's own connection is encrypted (the server's `pg_stat_ssl`
//! for its backend), how the server is verified (`sslmode`), and when the certificate the
//! server presented expires. The relay's other connections use the same settings, so what
//! holds here holds for them (tests/pg_tls.rs checks the walsender's too).

use std::time::{Duration, SystemTime};

use tokio_postgres::Client;

use super::report::{Check, Status};
use super::TLS;
use crate::db::tls::SslMode;

/// A certificate expiring sooner than this warns.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// What `pg_stat_ssl` says about this backend's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsFacts {
    /// Encrypted.
    pub ssl: bool,
    /// Protocol, e.g. `TLSv1.3`.
    pub version: Option<String>,
    /// Cipher suite, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: Option<String>,
}

/// Reads `pg_stat_ssl` for this backend.
///
/// Errors: the query failed.
pub(super) async fn query(c: &Client) -> Result<TlsFacts, tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(TlsFacts {
        ssl: row.get(0),
        version: row.get(1),
        cipher: row.get(2),
    })
}

/// Where the connection goes and how it was made.
#[derive(Debug, Clone)]
pub(super) struct Setting {
    /// The effective `sslmode`.
    pub mode: SslMode,
    /// The server is on this host (loopback or socket): plaintext cannot be overheard.
    pub local: bool,
    /// `notAfter` of the certificate the server presented, when there was one.
    pub expires: Option<SystemTime>,
}

/// Pass when encrypted and verified (`verify-ca`, `verify-full`), or on a loopback connection;
/// warn when a remote connection is plaintext or unverified (`disable`, `prefer`, `require`),
/// or the certificate expires within 30 days; fail when it has expired or a mode that requires
/// TLS reports none.
pub(super) fn evaluate(facts: &TlsFacts, setting: &Setting, now: SystemTime) -> Check {
    let mode = setting.mode;
    let mut detail = if facts.ssl {
        let version = facts.version.as_deref().unwrap_or("TLS");
        let cipher = facts.cipher.as_deref().unwrap_or("?");
        format!("encrypted ({version}, {cipher}), sslmode={mode}")
    } else {
        format!("not encrypted, sslmode={mode}")
    };
    let (mut status, mut fix) = (Status::Pass, None);
    let mut worse = |s: Status, f: &str| {
        if rank(s) > rank(status) {
            status = s;
            fix = Some(f.to_string());
        }
    };
    const VERIFY: &str = "set sslmode=verify-full and sslrootcert=<the server's CA file, or system> in database.url (Supabase: Project Settings → Database → SSL Configuration, download the certificate)";
    if !facts.ssl && mode >= SslMode::Require {
        worse(
            Status::Fail,
            "check the server's ssl setting and pg_hba.conf",
        );
    } else if setting.local {
        detail.push_str("; the server is on this host");
    } else if !facts.ssl {
        worse(Status::Warn, VERIFY);
        detail.push_str(": passwords and events cross the network in plaintext");
    } else if !mode.verifies_chain() {
        worse(Status::Warn, VERIFY);
        detail.push_str(": the server's certificate is not verified");
    }
    if let Some(expires) = setting.expires {
        let date = chrono::DateTime::<chrono::Utc>::from(expires).format("%Y-%m-%d");
        match expires.duration_since(now) {
            Err(_) => {
                detail.push_str(&format!("; the server certificate expired on {date}"));
                worse(Status::Fail, "renew the server's certificate");
            }
            Ok(left) if left < EXPIRY_WARNING => {
                let days = left.as_secs() / 86_400;
                detail.push_str(&format!(
                    "; the server certificate expires in {days} days ({date})"
                ));
                worse(Status::Warn, "renew the server's certificate");
            }
            Ok(_) => detail.push_str(&format!("; server certificate valid until {date}")),
        }
    }
    Check {
        id: TLS.to_string(),
        status,
        detail,
        fix,
    }
}

/// Pass < warn < fail.
fn rank(status: Status) -> u8 {
    match status {
        Status::Pass | Status::Skip => 0,
        Status::Warn => 1,
        Status::Fail => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn encrypted() -> TlsFacts {
        TlsFacts {
            ssl: true,
            version: Some("TLSv1.3".into()),
            cipher: Some("TLS_AES_256_GCM_SHA384".into()),
        }
    }

    fn plaintext() -> TlsFacts {
        TlsFacts {
            ssl: false,
            version: None,
            cipher: None,
        }
    }

    fn remote(mode: SslMode) -> Setting {
        Setting {
            mode,
            local: false,
            expires: None,
        }
    }

    #[test]
    fn verified_encryption_passes_with_the_protocol_and_expiry() {
        let now = SystemTime::UNIX_EPOCH + 20_000 * DAY;
        let setting = Setting {
            expires: Some(now + 400 * DAY),
            ..remote(SslMode::VerifyFull)
        };
        let c = evaluate(&encrypted(), &setting, now);
        assert_eq!(c.status, Status::Pass);
        assert!(c.detail.contains("TLSv1.3"), "{}", c.detail);
        assert!(c.detail.contains("sslmode=verify-full"), "{}", c.detail);
        assert!(c.detail.contains("valid until 2025-"), "{}", c.detail);
    }

    #[test]
    fn remote_plaintext_or_unverified_warns() {
        let now = SystemTime::now();
        for (facts, mode) in [
            (plaintext(), SslMode::Disable),
            (plaintext(), SslMode::Prefer),
            (encrypted(), SslMode::Prefer),
            (encrypted(), SslMode::Require),
        ] {
            let c = evaluate(&facts, &remote(mode), now);
            assert_eq!(c.status, Status::Warn, "{mode}: {}", c.detail);
            assert!(c.fix.unwrap().contains("verify-full"));
        }
        let verify_ca = evaluate(&encrypted(), &remote(SslMode::VerifyCa), now);
        assert_eq!(verify_ca.status, Status::Pass);
    }

    #[test]
    fn loopback_passes_even_in_plaintext() {
        let setting = Setting {
            local: true,
            ..remote(SslMode::Disable)
        };
        let c = evaluate(&plaintext(), &setting, SystemTime::now());
        assert_eq!(c.status, Status::Pass);
        assert!(c.detail.contains("not encrypted"), "{}", c.detail);
    }

    #[test]
    fn an_expiring_certificate_warns_and_an_expired_one_fails() {
        let now = SystemTime::UNIX_EPOCH + 20_000 * DAY;
        let at = |expires| Setting {
            expires: Some(expires),
            ..remote(SslMode::VerifyFull)
        };
        let soon = evaluate(&encrypted(), &at(now + 10 * DAY), now);
        assert_eq!(soon.status, Status::Warn);
        assert!(
            soon.detail.contains("expires in 10 days"),
            "{}",
            soon.detail
        );
        let gone = evaluate(&encrypted(), &at(now - DAY), now);
        assert_eq!(gone.status, Status::Fail);
        assert!(gone.detail.contains("expired on"), "{}", gone.detail);
    }

    #[test]
    fn no_encryption_where_the_mode_requires_it_fails() {
        let c = evaluate(&plaintext(), &remote(SslMode::Require), SystemTime::now());
        assert_eq!(c.status, Status::Fail);
    }

    #[test]
    fn unparsable_certificates_have_no_expiry() {}
}
