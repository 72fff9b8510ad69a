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
//!   `postmaster.opts`) when still free, else binds `127.0.0.1:0` for a free one;
//!   an auto-chosen port that is taken by the time the server binds is replaced
//!   (up to 5 attempts).
//! * **Files**: a temp cluster is the single dir `$TMPDIR/relay-pg-<pid>-<nanos>-<n>`
//!   (data dir = socket dir; `rm -rf <data_dir>` removes everything). Persistent
//!   dirs use the socket dir `/tmp/relay-pgsock-<euid>-<hash of data dir>` (short:
//!   socket paths are limited to 107 bytes). Log: `<data_dir>/relay-server.log`.

use std::ffi::{OsStr, OsString};
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::path::{absolute, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::{env, fs, io};

const HOST: &str = "127.0.0.1";
const TAIL_LINES: usize = 20;
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
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `creating /tmp/relay-pg-…`.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
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
    move |source| ClusterError::Io {
        context: context.to_string(),
        source,
    }
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
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            port: None,
            fast: false,
            max_connections: 300,
            settings: Vec::new(),
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
        let (data_dir, socket_dir) = match &opts.data_dir {
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
        };
        let n = opts.max_connections;
        let mut settings = vec![
            format!("listen_addresses={HOST}"),
            format!("unix_socket_directories={}", socket_dir.display()),
            "wal_level=logical".into(),
            "max_replication_slots=64".into(),
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
        };
        cluster.prepare_dirs()?;
        cluster.init_if_needed(opts.fast)?;
        let previous = previous_port(&cluster.data_dir).filter(|p| port_is_free(*p));
        let mut port = match opts.port.or(previous) {
            Some(port) => port,
            None => free_port()?,
        };
        let mut attempt = 1;
        loop {
            cluster.port = port;
            match cluster.start_server() {
                Err(ClusterError::Command { log_tail, .. })
                    if opts.port.is_none()
                        && attempt < PORT_ATTEMPTS
                        && log_tail.contains("could not bind") =>
                {
                    tracing::debug!(port, "port got taken; retrying with another");
                    port = free_port()?;
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

    /// `postgres://postgres@127.0.0.1:<port>/<database>` (no password needed).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@{HOST}:{}/{database}", self.port)
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

    /// Create (and as root chown/check) the dirs; stop a leftover server.
    fn prepare_dirs(&self) -> Result<(), ClusterError> {
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
    fn init_if_needed(&self, fast: bool) -> Result<(), ClusterError> {
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

    /// A command for a server binary; as root wrapped in `runuser -u postgres --`.
    fn pg(&self, program: &str) -> Command {
        let exe = self.bin_dir.join(program);
        let mut cmd = Command::new(if self.as_root {
            OsStr::new("runuser")
        } else {
            exe.as_os_str()
        });
        if self.as_root {
            cmd.args(["-u", "postgres", "--"]).arg(&exe);
        }
        // The caller's cwd may be unreadable for `postgres` (e.g. /root/repo).
        cmd.current_dir("/").env_remove("PGDATA");
        cmd
    }

    /// Run to completion with stdin null and output captured; a failure becomes
    /// [`ClusterError::Command`] with the output (and server log) tail.
    fn run(&self, cmd: &mut Command, what: &str, with_log: bool) -> Result<(), ClusterError> {
        let out = cmd.stdin(Stdio::null()).output();
        let out = out.map_err(io_err(format!("running {what}")))?;
        if out.status.success() {
            return Ok(());
        }
        let mut log_tail = String::new();
        if with_log {
            let log = fs::read(&self.log_file).unwrap_or_default();
            let log = tail(&String::from_utf8_lossy(&log));
            log_tail = format!("--- {} ---\n{log}\n", self.log_file.display());
        }
        let output = [out.stderr, out.stdout].concat();
        let output = tail(&String::from_utf8_lossy(&output));
        log_tail.push_str(&format!("--- {what} output ---\n{output}"));
        let (what, status) = (what.to_string(), out.status.to_string());
        Err(ClusterError::Command {
            what,
            status,
            log_tail,
        })
    }
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

/// Find the directory holding `initdb`, `pg_ctl` and `postgres`, trying in order:
/// 1. `$RELAY_PG_BINDIR` (when set it must be valid; nothing else is tried);
/// 2. the highest version under `/usr/lib/postgresql/<version>/bin` (Debian);
/// 3. `pg_config --bindir`;
/// 4. the directory of `initdb` on `PATH`, symlinks resolved.
///
/// Errors: [`ClusterError::BinariesNotFound`], saying how to install them.
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    find_bin_dir_in(
        env::var_os("RELAY_PG_BINDIR"),
        Path::new("/usr/lib/postgresql"),
    )
}

fn find_bin_dir_in(overridden: Option<OsString>, debian: &Path) -> Result<PathBuf, ClusterError> {
    let has_bins = |dir: &PathBuf| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    if let Some(dir) = overridden.map(PathBuf::from) {
        let searched = format!("RELAY_PG_BINDIR={}", dir.display());
        return Some(dir)
            .filter(has_bins)
            .ok_or(ClusterError::BinariesNotFound { searched });
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    for entry in fs::read_dir(debian).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(version) = name.split('.').map(str::parse).collect() {
            versions.push((version, entry.path().join("bin")));
        }
    }
    versions.sort();
    let mut candidates: Vec<PathBuf> = versions.into_iter().rev().map(|(_, bin)| bin).collect();
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        candidates.extend(Some(PathBuf::from(dir)).filter(|_| out.status.success()));
    }
    for dir in env::split_paths(&env::var_os("PATH").unwrap_or_default()) {
        let real = fs::canonicalize(dir.join("initdb"));
        candidates.extend(real.ok().and_then(|p| Some(p.parent()?.to_path_buf())));
    }
    candidates.into_iter().find(has_bins).ok_or_else(|| {
        let debian = debian.display();
        let searched = format!("RELAY_PG_BINDIR (unset), {debian}/*/bin, pg_config --bindir, PATH");
        ClusterError::BinariesNotFound { searched }
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

/// Run with all stdio null; true on exit status 0.
fn quiet_ok(cmd: &mut Command) -> bool {
    let cmd = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
}

/// `test <flag> <path>` as the `postgres` user (root only).
fn postgres_can(flag: &str, path: &Path) -> bool {
    quiet_ok(
        Command::new("runuser")
            .args(["-u", "postgres", "--", "test", flag])
            .arg(path),
    )
}

/// Effective uid: the 2nd number on `/proc/self/status`'s `Uid:` line, else `id -u`.
fn euid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let from_proc = status.lines().find_map(|l| l.strip_prefix("Uid:"));
    if let Some(uid) = from_proc.and_then(|ids| ids.split_whitespace().nth(1)) {
        return uid.parse().ok();
    }
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A new empty dir `relay-pg-<pid>-<nanos>-<n>` under `/tmp` (root) or `$TMPDIR`.
fn make_temp_root(as_root: bool) -> Result<PathBuf, ClusterError> {
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

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((HOST, port)).is_ok()
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((HOST, 0)).map_err(io_err("binding 127.0.0.1:0"))?;
    let addr = listener
        .local_addr()
        .map_err(io_err("reading the bound port"))?;
    Ok(addr.port())
}

/// The port of the last start, from `postmaster.opts` (`… "-p" "54321" …`).
fn previous_port(data_dir: &Path) -> Option<u16> {
    let opts = fs::read_to_string(data_dir.join("postmaster.opts")).ok()?;
    let start = opts.find("\"-p\" \"")? + 6;
    opts[start..].split('"').next()?.parse().ok()
}

/// The last [`TAIL_LINES`] lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
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
    fn missing_binaries_error_says_what_to_install() {
        let none = Path::new("/nonexistent");
        let err = find_bin_dir_in(Some("/nonexistent".into()), none).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("apt-get install -y postgresql"), "{msg}");
        assert!(msg.contains("RELAY_PG_BINDIR=/nonexistent"), "{msg}");
    }

    #[test]
    fn helpers() {
        let text: Vec<String> = (1..=30).map(|i| i.to_string()).collect();
        assert_eq!(tail(&text.join("\n")).lines().next(), Some("11"));
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
