//! Checks of this host and the configuration: the JWT secret, and the free space of the
//! server's data directory when the server runs here.

use std::net::IpAddr;
use std::path::Path;

use tokio_postgres::config::Host;
use tokio_postgres::Client;

use super::report::{format_bytes, Check};
use super::{DISK, JWT_SECRET};
use crate::config::Config;
use crate::db::describe;

/// Shortest secret without a warning: Supabase JWT secrets are at least 32 characters, and
/// HS256 wants a key of at least its 256-bit output (RFC 7518 §3.2).
const MIN_SECRET_BYTES: usize = 32;
/// `disk` warns below this free share (the seed's "> 20 % free")…
const WARN_FREE_PERCENT: f64 = 20.0;
/// …and fails below this one.
const FAIL_FREE_PERCENT: f64 = 10.0;

/// `auth.jwt_secret` is set (fail otherwise, unless a JWKS source verifies the tokens: the
/// relay refuses to start with neither) and at least 32 bytes long (warn otherwise). The
/// secret itself is never shown.
pub(super) fn jwt_secret(config: &Config) -> Check {
    if config.auth.jwt_secret.is_empty() && config.auth.has_jwks() {
        return Check::pass(
            JWT_SECRET,
            "auth.jwt_secret is not set: only asymmetric tokens (auth.jwks_url/auth.jwks_file) are accepted",
        );
    }
    evaluate_jwt_secret(config.auth.jwt_secret.expose().len())
}

pub(super) fn evaluate_jwt_secret(len: usize) -> Check {
    if len == 0 {
        Check::fail(
            JWT_SECRET,
            "auth.jwt_secret is not set: the relay refuses to start without it",
            "set RELAY_JWT_SECRET (or auth.jwt_secret, --jwt-secret) to the project's JWT secret \
             (Supabase: Project Settings → API → JWT Secret)",
        )
    } else if len < MIN_SECRET_BYTES {
        Check::warn(
            JWT_SECRET,
            format!("auth.jwt_secret is {len} bytes; Supabase secrets have at least {MIN_SECRET_BYTES}"),
            "check that RELAY_JWT_SECRET is the whole project JWT secret; a short HS256 key can be guessed",
        )
    } else {
        Check::pass(JWT_SECRET, format!("auth.jwt_secret is set ({len} bytes)"))
    }
}

/// `user@host:port/database` of a libpq URL, without the password, for messages.
pub(super) fn describe_target(url: &str) -> String {
    let Ok(config) = crate::db::parse_config(url) else {
        return "database.url".to_string();
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        })
        .collect();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("?");
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{}:{port}/{db}", hosts.join(","))
}

/// Whether every host of `url` is on this machine: a Unix socket, `localhost` or a loopback
/// address. No host at all means libpq's default socket, also local.
pub(super) fn is_local(url: &str) -> bool {
    let Ok(config) = crate::db::parse_config(url) else {
        return false;
    };
    config.get_hosts().iter().all(|h| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    })
}

/// Free space of the file system holding `SHOW data_directory`, when the server is local and
/// the directory is visible here; skipped otherwise, with the reason. Free is what `df` calls
/// available: `f_bavail` of `statvfs(3)`, as a share of used + available.
pub(super) async fn disk(c: &Client, url: &str) -> Result<Check, tokio_postgres::Error> {
    if !is_local(url) {
        return Ok(Check::skip(
            DISK,
            "the server is not on this host (database.url is not a loopback address or socket): check its disk where it runs (Supabase: Reports → Database)",
        ));
    }
    let dir: String = match c.query_one("SHOW data_directory", &[]).await {
        Ok(row) => row.get(0),
        Err(e) if e.as_db_error().is_some() => {
            return Ok(Check::skip(
                DISK,
                format!(
                    "cannot read data_directory ({}): needs superuser or pg_read_all_settings",
                    describe(&e)
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    let port: i32 = c
        .query_one("SELECT coalesce(inet_server_port(), 0)", &[])
        .await?
        .get(0);
    if let Some(why) = other_cluster(Path::new(&dir), port) {
        return Ok(Check::skip(DISK, why));
    }
    match rustix::fs::statvfs(dir.as_str()) {
        Ok(s) => {
            let unit = s.f_frsize.max(1);
            let used = s.f_blocks.saturating_sub(s.f_bfree).saturating_mul(unit);
            let available = s.f_bavail.saturating_mul(unit);
            Ok(evaluate_disk(&dir, available, used))
        }
        Err(e) => Ok(Check::skip(
            DISK,
            format!("data_directory {dir} is not visible on this host ({e}): a server in a container or VM? check its disk there"),
        )),
    }
}

/// A reason to skip when `dir/postmaster.pid` is readable and names a port other than the
/// connected one (the path exists here, but belongs to another cluster, e.g. one in a
/// container mapped to a local port).
fn other_cluster(dir: &Path, port: i32) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let listed: i32 = text.lines().nth(3)?.trim().parse().ok()?;
    (port > 0 && listed != port).then(|| {
        format!(
            "{} belongs to the cluster on port {listed}, not the connected one on {port}: a server in a container? check its disk there",
            dir.display()
        )
    })
}

/// Warns below 20 % free, fails below 10 %.
pub(super) fn evaluate_disk(dir: &str, available: u64, used: u64) -> Check {
    let total = available.saturating_add(used);
    let free = if total == 0 {
        100.0
    } else {
        available as f64 * 100.0 / total as f64
    };
    let detail = format!(
        "{free:.1} % free ({} of {}) on the file system of data_directory {dir}",
        format_bytes(available),
        format_bytes(total)
    );
    let fix = "free space or grow the volume; a stalled slot's WAL (slot_retained) and \
               max_slot_wal_keep_size = -1 are common causes";
    if free < FAIL_FREE_PERCENT {
        Check::fail(DISK, format!("{detail}; at least 10 % needed"), fix)
    } else if free < WARN_FREE_PERCENT {
        Check::warn(
            DISK,
            format!("{detail}; the deployment checklist asks for more than 20 %"),
            fix,
        )
    } else {
        Check::pass(DISK, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::assert_check;
    use crate::doctor::Status;

    #[test]
    fn a_missing_secret_fails_and_a_short_one_warns() {
        let statuses = [0, 31].map(|len| evaluate_jwt_secret(len).status);
        assert_eq!(statuses, [Status::Fail, Status::Warn]);
        assert_check(&evaluate_jwt_secret(40), Status::Pass, "40 bytes");
    }

    #[test]
    fn loopback_hosts_and_sockets_are_local() {
        assert!(is_local("postgres://u@127.0.0.1:5432/d"));
        assert!(is_local("postgres://u@localhost/d"));
        assert!(is_local("postgres://u@[::1]:5432/d"));
        assert!(is_local("host=/var/run/postgresql user=u"));
        assert!(!is_local("postgres://u@db.example.com/d"));
        assert!(!is_local("postgres://u@10.0.0.5/d"));
        assert!(!is_local("host=127.0.0.1,db.example.com user=u"));
        assert!(!is_local("not a url"));
    }

    #[test]
    fn the_target_never_shows_the_password() {
        let t = describe_target("postgres://relay:hunter2@db.example.com:6543/app");
        assert_eq!(t, "relay@db.example.com:6543/app");
        assert_eq!(describe_target("::::"), "database.url");
    }

    #[test]
    fn disk_warns_below_20_percent_and_fails_below_10() {
        let gib = 1u64 << 30;
        assert_eq!(evaluate_disk("/d", 50 * gib, 50 * gib).status, Status::Pass);
        assert_eq!(evaluate_disk("/d", 15 * gib, 85 * gib).status, Status::Warn);
        let c = evaluate_disk("/d", 5 * gib, 95 * gib);
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.starts_with("5.0 % free (5.0 GiB of 100.0 GiB)"),
            "{}",
            c.detail
        );
        assert_eq!(evaluate_disk("/d", 0, 0).status, Status::Pass);
    }

    #[test]
    fn a_data_directory_of_another_port_is_not_ours() {
        let dir = std::env::temp_dir().join(format!("doctor-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("postmaster.pid"), "123\n/data\n1700000000\n5433\n").unwrap();
        assert!(other_cluster(&dir, 5433).is_none());
        assert!(other_cluster(&dir, 54322).unwrap().contains("port 5433"));
        assert!(other_cluster(&dir.join("nowhere"), 5433).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
