//! The cluster's directories and port: the data and socket dirs (created, and as
//! root chowned to `postgres`), `initdb` and `pg_hba.conf`, a leftover server or
//! stale pid file, the port to listen on, and [`dev_data_dir`].

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{absolute, Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::{env, fs, io};

use super::backup::chown_to_postgres;
use super::binaries::{euid, postgres_can};
use super::{io_err, Cluster, ClusterError, ServerTls, StopMode};

impl Cluster {
    /// Create (and as root chown/check) the dirs; stop a leftover server.
    pub(super) fn prepare_dirs(&self) -> Result<(), ClusterError> {
        let socket_dir = self.socket_dir.as_path();
        for dir in [&self.data_dir, socket_dir] {
            fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        if self.as_root {
            let mut chown = Command::new("chown");
            chown
                .args(["-R", "postgres:"])
                .arg(&self.data_dir)
                .arg(socket_dir);
            self.run(&mut chown, "chown -R postgres:", false)?;
            for dir in [&self.data_dir, socket_dir] {
                if !postgres_can("-w", dir) {
                    let mut parents: Vec<&Path> = dir.ancestors().collect();
                    parents.reverse();
                    let blocked = parents.into_iter().find(|p| !postgres_can("-x", p));
                    let path = blocked.unwrap_or(dir).to_path_buf();
                    return Err(ClusterError::NotAccessible { path });
                }
            }
        }
        let pid_file = self.data_dir.join("postmaster.pid");
        if self.is_running() {
            tracing::warn!(dir = %self.data_dir.display(), "stopping a leftover server");
            if let Err(e) = self.stop(StopMode::Fast) {
                tracing::warn!(error = %e, "fast stop failed; trying immediate");
                self.stop(StopMode::Immediate)?;
            }
        } else if pid_file.exists() {
            tracing::warn!(file = %pid_file.display(), "removing stale pid file");
            fs::remove_file(&pid_file).map_err(io_err("removing stale postmaster.pid"))?;
        }
        Ok(())
    }

    /// `initdb` an empty data dir; ensure pg_hba.conf trusts 127.0.0.1.
    pub(super) fn init_if_needed(&self, fast: bool) -> Result<(), ClusterError> {
        let dir = &self.data_dir;
        if !dir.join("PG_VERSION").exists() {
            let mut entries =
                fs::read_dir(dir).map_err(io_err(format!("reading {}", dir.display())))?;
            if entries.next().is_some() {
                return Err(ClusterError::NotADataDir(dir.clone()));
            }
            let mut cmd = self.pg("initdb");
            cmd.arg("-D")
                .arg(dir)
                .arg("--auth=trust")
                .arg("--username=postgres");
            cmd.args(["--encoding=UTF8", "--locale=C"]);
            if fast {
                cmd.arg("--no-sync");
            }
            self.run(&mut cmd, "initdb", false)?;
        }
        let hba = dir.join("pg_hba.conf");
        let text =
            fs::read_to_string(&hba).map_err(io_err(format!("reading {}", hba.display())))?;
        let wanted = ["host", "all", "all", "127.0.0.1/32", "trust"];
        let trusted = text
            .lines()
            .any(|l| l.split_whitespace().take(5).eq(wanted));
        if !trusted {
            // First match wins, so prepend. `host all` lines (not `host
            // replication`) also match logical replication connections.
            let text = format!("host all all 127.0.0.1/32 trust\n{text}");
            fs::write(&hba, text).map_err(io_err(format!("writing {}", hba.display())))?;
        }
        Ok(())
    }
}

impl Cluster {
    /// TLS only: writes the certificate and key into the data dir (key 0600, as root owned by
    /// `postgres`, as the server demands), puts `hostssl … trust` and `hostnossl … reject`
    /// first in pg_hba.conf, and returns the `ssl*` settings to start with.
    pub(super) fn require_tls(&self, tls: &ServerTls) -> Result<Vec<String>, ClusterError> {
        let cert = self.data_dir.join("relay-server.crt");
        let key = self.data_dir.join("relay-server.key");
        for (path, pem) in [(&cert, &tls.cert_pem), (&key, &tls.key_pem)] {
            fs::write(path, pem).map_err(io_err(format!("writing {}", path.display())))?;
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
            .map_err(io_err(format!("chmod 600 {}", key.display())))?;
        chown_to_postgres(&cert)?;
        chown_to_postgres(&key)?;
        let hba = self.data_dir.join("pg_hba.conf");
        let text =
            fs::read_to_string(&hba).map_err(io_err(format!("reading {}", hba.display())))?;
        let first = "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n";
        if !text.starts_with(first) {
            fs::write(&hba, format!("{first}{text}"))
                .map_err(io_err(format!("writing {}", hba.display())))?;
        }
        Ok(vec![
            "ssl=on".into(),
            format!("ssl_cert_file={}", cert.display()),
            format!("ssl_key_file={}", key.display()),
        ])
    }
}

/// `(data_dir, socket_dir)` for a cluster: an absolute persistent `data_dir` with
/// the socket dir `/tmp/relay-pgsock-<euid>-<hash>`, or (`None`) a new temp dir
/// that is both. Errors: [`ClusterError::Io`].
pub(super) fn cluster_dirs(
    data_dir: Option<&Path>,
    as_root: bool,
) -> Result<(PathBuf, PathBuf), ClusterError> {
    Ok(match data_dir {
        Some(dir) => {
            let dir = absolute(dir).map_err(io_err("resolving data_dir"))?;
            let hash = fnv1a(dir.as_os_str().as_bytes());
            let uid = euid().unwrap_or(u32::MAX);
            let sock = format!("/tmp/relay-pgsock-{uid}-{hash:016x}");
            (dir, PathBuf::from(sock))
        }
        None => {
            let dir = make_temp_root(as_root)?;
            (dir.clone(), dir)
        }
    })
}

/// Data dir for `engagement-relay dev`: `$RELAY_DEV_PGDATA` if set, else
/// `<repo_root>/target/dev-pgdata`. When running as root and the `postgres` user
/// cannot traverse the repo (e.g. it is under `/root`, mode 700), falls back to
/// `/tmp/engagement-relay-dev-pgdata-<16 hex digits hashing that path>` (stable
/// across runs, so the cluster is still reused) and logs a warning.
/// Errors: [`ClusterError::Io`] if `repo_root` cannot be made absolute.
pub fn dev_data_dir(repo_root: &Path) -> Result<PathBuf, ClusterError> {
    if let Some(dir) = env::var_os("RELAY_DEV_PGDATA") {
        return Ok(PathBuf::from(dir));
    }
    let repo_root = absolute(repo_root).map_err(io_err("resolving repo root"))?;
    let preferred = repo_root.join("target").join("dev-pgdata");
    let existing = preferred
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if euid() != Some(0) || postgres_can("-x", existing) {
        return Ok(preferred);
    }
    let hash = fnv1a(preferred.as_os_str().as_bytes());
    let fallback = PathBuf::from(format!("/tmp/engagement-relay-dev-pgdata-{hash:016x}"));
    tracing::warn!(
        "user postgres cannot reach {} (running as root); using {} (set RELAY_DEV_PGDATA to choose)",
        preferred.display(),
        fallback.display()
    );
    Ok(fallback)
}

/// A new empty dir `relay-pg-<pid>-<nanos>-<n>` under `/tmp` (root) or `$TMPDIR`.
pub(super) fn make_temp_root(as_root: bool) -> Result<PathBuf, ClusterError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = if as_root {
        PathBuf::from("/tmp")
    } else {
        env::temp_dir()
    };
    loop {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let nanos = now.map_or(0, |d| d.subsec_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("relay-pg-{}-{nanos:x}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
        }
    }
}

/// The port of the last start, from `postmaster.opts` (`… "-p" "54321" …`).
pub(super) fn previous_port(data_dir: &Path) -> Option<u16> {
    let opts = fs::read_to_string(data_dir.join("postmaster.opts")).ok()?;
    let start = opts.find("\"-p\" \"")? + 6;
    opts[start..].split('"').next()?.parse().ok()
}

/// FNV-1a, a hash that (unlike `DefaultHasher`) is stable across Rust releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    let step = |h: u64, b: &u8| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let dir = make_temp_root(false).unwrap();
        fs::write(
            dir.join("postmaster.opts"),
            "/x/postgres \"-D\" \"/d\" \"-p\" \"5433\" \"-c\"",
        )
        .unwrap();
        assert_eq!(previous_port(&dir), Some(5433));
        fs::remove_dir_all(dir).unwrap();
    }
}
