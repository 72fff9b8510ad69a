//! Start and stop a private PostgreSQL cluster for `engagement-relay dev`, the
//! integration-test harness and the load-test harness. Linux only; everything is
//! blocking (`std::process`), so call it from `tokio::task::spawn_blocking`.
//!
//! * **Root**: `initdb`/`pg_ctl` refuse to run as root, so when the effective uid
//!   (from `/proc/self/status`, else `id -u`) is 0 they run as the `postgres` OS
//!   user via `runuser -u postgres -- …`, the data and socket dirs are
//!   `chown -R postgres:`, and `runuser -u postgres -- test -w <dir>` checks that
//!   every parent is traversable ([`ClusterError::NotAccessible`] names the
//!   blocking directory). Temp clusters of root live under `/tmp`, not `$TMPDIR`.
//! * **Leftover server**: if a persistent data dir's `postmaster.pid` names a live
//!   postmaster of that dir (a killed `dev` run), it is stopped (`-m fast`, then
//!   `immediate`) and started again with this call's settings, so the port,
//!   settings and log file are always the requested ones. A stale pid file is removed.
//! * **Port**: `port: None` reuses a persistent dir's previous port (parsed from
//!   `postmaster.opts`) when still free, else a free one ([`crate::free_port`]); either
//!   is held (bound here) until just before `pg_ctl start`, and one taken by the time
//!   the server binds is replaced (up to 5 attempts).
//! * **Files**: a temp cluster is the single dir `$TMPDIR/relay-pg-<pid>-<nanos>-<n>`
//!   (data dir = socket dir; `rm -rf <data_dir>` removes everything). Persistent
//!   dirs use the socket dir `/tmp/relay-pgsock-<euid>-<hash of data dir>` (short:
//!   socket paths are limited to 107 bytes). Log: `<data_dir>/relay-server.log`.
//!
//! Submodules: `backup` makes base backups and point-in-time restores (tests); `binaries` finds the server binaries and runs them (as the
//! `postgres` OS user when root); `datadir` handles the data, socket and temp dirs,
//! the pid file, `initdb`, the port choice and [`dev_data_dir`].

mod backup;
mod binaries;
mod datadir;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use backup::{configure_recovery, ScratchDir};
pub use binaries::{find_bin_dir, running_as_root};
pub use datadir::dev_data_dir;

use binaries::{euid, quiet_ok};
use datadir::{cluster_dirs, previous_port};

use crate::net::{free_port, reserve_port, PortGuard};

const HOST: &str = "127.0.0.1";
const PORT_ATTEMPTS: u32 = 5;

/// Errors from locating the binaries and running `initdb` / `pg_ctl`.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No directory holding `initdb`, `pg_ctl` and `postgres` was found. The
    /// message says how to install them.
    #[error("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found (searched: {searched}). Install them with `apt-get install -y postgresql` (as root) or `sudo apt-get install -y postgresql`, or set RELAY_PG_BINDIR to the directory containing initdb")]
    BinariesNotFound {
        /// The places looked at.
        searched: String,
    },
    /// A command (`initdb`, `pg_ctl`, `chown`) exited unsuccessfully.
    #[error("{what} failed ({status}); last output:\n{log_tail}")]
    Command {
        /// The command, e.g. `initdb` or `pg_ctl start (port 5433)`.
        what: String,
        /// Its exit status, e.g. `exit status: 1`.
        status: String,
        /// The last ~20 lines of the server log (for `pg_ctl`), then the last
        /// ~20 lines of the command's stderr+stdout.
        log_tail: String,
    },
    /// A filesystem or process-spawn error.
    #[error(transparent)]
    Io(#[from] crate::IoError),
    /// As root: the `postgres` user cannot traverse a parent of the data or socket
    /// dir (e.g. a repo under `/root`, mode 700).
    #[error("running as root, but the `postgres` OS user cannot access {path}; make it traversable (chmod o+x) or use a data dir it can reach, e.g. RELAY_DEV_PGDATA=/tmp/relay-dev-pgdata or `engagement-relay dev --data-dir /tmp/relay-dev-pgdata`")]
    NotAccessible {
        /// The first directory (from `/` down) that `postgres` cannot enter.
        path: PathBuf,
    },
    /// As root: there is no `postgres` OS user to run the server as.
    #[error("running as root, but there is no `postgres` OS user to run initdb/pg_ctl as; run `apt-get install -y postgresql` or `useradd --system --user-group postgres`")]
    NoPostgresUser,
    /// The data dir is non-empty but has no `PG_VERSION`; it was left untouched.
    #[error("{0} is not empty and is not a PostgreSQL data directory (no PG_VERSION); remove it or choose another data_dir")]
    NotADataDir(PathBuf),
}

fn io_err(context: impl std::fmt::Display) -> impl FnOnce(io::Error) -> ClusterError {
    crate::io_error::io_err(context)
}

/// How to start a cluster. `Default`: temp dir, free port, durable, 300 connections.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Persistent data dir: created and `initdb`ed when missing or empty, reused
    /// when it holds a cluster, never deleted. `None`: a fresh temp dir, removed on drop.
    pub data_dir: Option<PathBuf>,
    /// TCP port on 127.0.0.1. `None`: see the module docs (previous or free port).
    pub port: Option<u16>,
    /// Speed over durability (tests): `initdb --no-sync`, `fsync=off`,
    /// `synchronous_commit=off`, `full_page_writes=off`.
    pub fast: bool,
    /// `max_connections` (default 300).
    pub max_connections: u32,
    /// Extra `-c name=value` settings, applied after (so overriding) the defaults.
    pub settings: Vec<(String, String)>,
    /// TLS only: `ssl=on` with this certificate and key (PEM, written into the data dir, the
    /// key mode 0600 and as root owned by `postgres`), and pg_hba.conf accepting TCP only over
    /// TLS (`hostssl … trust`, then `hostnossl … reject`). [`Cluster::url`] then says
    /// `sslmode=require`.
    pub tls: Option<ServerTls>,
}

/// The server certificate of a TLS-only cluster.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Certificate (chain), PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            port: None,
            fast: false,
            max_connections: 300,
            settings: Vec::new(),
            tls: None,
        }
    }
}

/// Shutdown mode, passed as `pg_ctl stop -m smart|fast|immediate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for all clients to disconnect.
    Smart,
    /// Disconnect clients, write a checkpoint, exit cleanly.
    Fast,
    /// Kill all processes at once; crash recovery runs on the next start.
    Immediate,
}

/// A private PostgreSQL server on 127.0.0.1: superuser `postgres`, `trust` auth
/// (also for logical replication connections), `wal_level=logical`, UTC.
///
/// Drop stops it (`-m immediate` for a temp cluster; `-m fast`, falling back to
/// `immediate`, for a persistent one) and deletes a temp dir. Drop never panics.
#[derive(Debug)]
pub struct Cluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    socket_dir: PathBuf,
    /// `name=value` server settings, passed as `-c`.
    settings: Vec<String>,
    port: u16,
    as_root: bool,
    temp: bool,
    tls: bool,
}

impl Cluster {
    /// Start a cluster, running `initdb` first when the data dir is missing or
    /// empty. Blocks for ~0.5–3 s. Errors: [`ClusterError::BinariesNotFound`],
    /// [`ClusterError::NoPostgresUser`] and [`ClusterError::NotAccessible`] (root),
    /// [`ClusterError::NotADataDir`], [`ClusterError::Command`] if `initdb` or
    /// `pg_ctl` fails (e.g. an explicit `port` is taken), [`ClusterError::Io`].
    pub fn start(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        let bin_dir = find_bin_dir()?;
        let as_root = euid() == Some(0);
        if as_root && !quiet_ok(Command::new("id").args(["-u", "postgres"])) {
            return Err(ClusterError::NoPostgresUser);
        }
        let (data_dir, socket_dir) = cluster_dirs(opts.data_dir.as_deref(), as_root)?;
        let n = opts.max_connections;
        let mut settings = vec![
            format!("listen_addresses={HOST}"),
            format!("unix_socket_directories={}", socket_dir.display()),
            "wal_level=logical".into(),
            // Every test relay leaves its permanent slot behind on the shared cluster (about
            // one per test database); 64 ran out once the suite passed 64 relays.
            "max_replication_slots=256".into(),
            "max_wal_senders=64".into(),
            format!("max_connections={n}"),
            "timezone=UTC".into(),
            "log_timezone=UTC".into(),
        ];
        if opts.fast {
            let off = [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ];
            settings.extend(off.map(String::from));
        }
        settings.extend(opts.settings.iter().map(|(k, v)| format!("{k}={v}")));
        // Built before anything can fail, so that Drop removes a temp dir.
        let mut cluster = Cluster {
            log_file: data_dir.join("relay-server.log"),
            bin_dir,
            data_dir,
            socket_dir,
            settings,
            port: 0,
            as_root,
            temp: opts.data_dir.is_none(),
            tls: opts.tls.is_some(),
        };
        cluster.prepare_dirs()?;
        cluster.init_if_needed(opts.fast)?;
        if let Some(tls) = &opts.tls {
            let files = cluster.require_tls(tls)?;
            cluster.settings.extend(files);
        }
        // An auto-chosen port stays reserved (bound by this process) until just before
        // `pg_ctl start` binds it; the previous port of a persistent dir is preferred.
        let (mut port, mut held) = match opts.port {
            Some(port) => (port, None),
            None => {
                let previous = previous_port(&cluster.data_dir).and_then(|p| reserve_port(p).ok());
                let guard = match previous {
                    Some(guard) => guard,
                    None => any_port()?,
                };
                (guard.port(), Some(guard))
            }
        };
        let mut attempt = 1;
        loop {
            cluster.port = port;
            drop(held.take());
            match cluster.start_server() {
                Err(ClusterError::Command { log_tail, .. })
                    if opts.port.is_none()
                        && attempt < PORT_ATTEMPTS
                        && log_tail.contains("could not bind") =>
                {
                    tracing::debug!(port, "port got taken; retrying with another");
                    let guard = any_port()?;
                    port = guard.port();
                    held = Some(guard);
                    attempt += 1;
                }
                result => return result.map(|()| cluster),
            }
        }
    }

    /// TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host the server listens on: always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>` (no password needed), with
    /// `?sslmode=require` on a TLS-only cluster.
    pub fn url(&self, database: &str) -> String {
        let tls = if self.tls { "?sslmode=require" } else { "" };
        format!("postgres://postgres@{HOST}:{}/{database}{tls}", self.port)
    }

    /// Absolute path of the data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Server log given to `pg_ctl -l`: `<data_dir>/relay-server.log`, appended to.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Directory of the server binaries in use; it also holds `pg_recvlogical`,
    /// `psql`, `pg_dump`, ….
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Stop the server: `pg_ctl stop -w -m <mode> -t 30` (waits up to 30 s).
    /// `Ok(())` at once if it is not running. Errors: [`ClusterError::Command`].
    pub fn stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        if !self.is_running() {
            return Ok(());
        }
        let mode = match mode {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let mut cmd = self.pg("pg_ctl");
        cmd.args(["stop", "-w", "-t", "30", "-m", mode, "-D"]);
        self.run(cmd.arg(&self.data_dir), "pg_ctl stop", true)
    }

    /// Start the server again after [`Cluster::stop`], with the same port,
    /// settings and log. `Ok(())` at once if it is running.
    /// Errors: [`ClusterError::Command`] (e.g. the port was taken meanwhile).
    pub fn restart_server(&self) -> Result<(), ClusterError> {
        if self.is_running() {
            return Ok(());
        }
        self.start_server()
    }

    /// [`Cluster::stop`] with `mode`, then [`Cluster::restart_server`].
    pub fn restart(&self, mode: StopMode) -> Result<(), ClusterError> {
        self.stop(mode)?;
        self.restart_server()
    }

    /// Whether a postmaster of this data dir is alive: the PID in
    /// `postmaster.pid` exists and its cwd (`/proc/<pid>/cwd`) is the data dir,
    /// which also guards against a recycled PID.
    pub fn is_running(&self) -> bool {
        let pid_file = fs::read_to_string(self.data_dir.join("postmaster.pid"));
        let pid = pid_file
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok());
        match (pid, fs::canonicalize(&self.data_dir)) {
            (Some(pid), Ok(dir)) => {
                fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir)
            }
            _ => false,
        }
    }

    /// `pg_ctl start -w -l <log> -o "-p <port> -c …"` (waits up to 60 s).
    fn start_server(&self) -> Result<(), ClusterError> {
        let mut opts = format!("-p {}", self.port);
        for setting in &self.settings {
            // pg_ctl runs the server through /bin/sh, so quote each setting.
            opts.push_str(&format!(" -c '{}'", setting.replace('\'', r"'\''")));
        }
        let mut cmd = self.pg("pg_ctl");
        cmd.args(["start", "-w", "-t", "60", "-D"])
            .arg(&self.data_dir);
        cmd.arg("-l").arg(&self.log_file).arg("-o").arg(opts);
        let what = format!("pg_ctl start (port {})", self.port);
        self.run(&mut cmd, &what, true)?;
        tracing::info!(port = self.port, dir = %self.data_dir.display(), "postgres started");
        Ok(())
    }
}

/// A free port on 127.0.0.1, held.
fn any_port() -> Result<PortGuard, ClusterError> {
    free_port().map_err(io_err("binding 127.0.0.1:0"))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mode = if self.temp {
            StopMode::Immediate
        } else {
            StopMode::Fast
        };
        if let Err(e) = self.stop(mode) {
            tracing::warn!(error = %e, "stopping postgres on drop failed");
            let _ = self.stop(StopMode::Immediate);
        }
        if !self.temp {
            // The socket dir under /tmp is empty once the server is stopped.
            let _ = fs::remove_dir(&self.socket_dir);
        } else if let Err(e) = fs::remove_dir_all(&self.data_dir) {
            tracing::warn!(error = %e, dir = %self.data_dir.display(), "removing temp cluster failed");
        }
    }
}
