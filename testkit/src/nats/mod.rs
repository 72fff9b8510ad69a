//! Private NATS servers with JetStream for tests and `dev`: one [`NatsServer`], or a
//! [`NatsCluster`] of several routed together. Linux only; everything is blocking
//! (`std::process`), so call it from `tokio::task::spawn_blocking` in async code.
//!
//! * **Binary**: `$RELAY_NATS_SERVER`, else `nats-server` on `PATH`, else `/usr/sbin` and
//!   `/usr/bin` ([`find_nats_server`]). Debian 12 ships 2.9.10 (`apt-get install -y
//!   nats-server`), which is what this is written against. It runs as root as it is: there is
//!   no user switch as for PostgreSQL.
//! * **Command**: `nats-server -js -sd <store dir> -a 127.0.0.1 -p <port> -m <monitor port>
//!   [--name <name>] [--cluster nats://127.0.0.1:<cluster port> --cluster_name <cluster>
//!   --routes nats://127.0.0.1:<peer>,…] [extra args]`, stdin null, stdout and stderr appended
//!   to `<store dir>/nats-server.log`.
//! * **Ready**: the monitoring port answers `GET /healthz` with 200 within 10 s. A standalone
//!   server asks plain `/healthz`, which 2.9 answers 200 once JetStream is up. A cluster member
//!   asks `/healthz?js-enabled-only=true` (JetStream enabled on this server; 2.9 already
//!   supports the parameter), because plain `/healthz` stays 503 until the member has a
//!   JetStream meta leader, which needs a quorum of the cluster: [`NatsCluster`] waits for
//!   that.
//! * **Ports**: `port: None` (and `monitor_port: None`) take a free port from
//!   [`crate::free_port`], held (bound here) until just before the spawn; if the server still
//!   finds one taken (`address already in use`) it is started again on fresh free ports, up to
//!   5 attempts. Explicit ports are used as given, and [`NatsServer::restart`] reuses the ports
//!   of the first start.
//! * **Files**: `store_dir: None` is a new temp dir `$TMPDIR/relay-nats-<pid>-<nanos>-<n>`,
//!   removed on drop; an explicit store dir is created when missing and kept. JetStream's
//!   data is under `<store dir>/jetstream/`.
//!
//! Submodules: `monitor` finds the binary and reads `/healthz` and `/jsz`; `cluster` is
//! [`NatsCluster`].

mod cluster;
mod monitor;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{absolute, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub use cluster::{NatsCluster, CLUSTER_NAME};
pub use monitor::find_nats_server;

use crate::net::{free_port, PortGuard};

const HOST: &str = "127.0.0.1";
/// Longest wait for a started server to answer its health check.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait after SIGTERM before [`NatsServer::stop`] sends SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_ATTEMPTS: u32 = 5;
const POLL: Duration = Duration::from_millis(25);
const TAIL_LINES: usize = 20;
const LOG_FILE: &str = "nats-server.log";
/// What nats-server logs when a listener cannot bind its port.
const PORT_TAKEN: &str = "address already in use";

/// Errors from finding, starting, checking and stopping `nats-server`.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// No executable `nats-server` was found. The message says how to install it.
    #[error("nats-server not found (searched: {searched}); install it: apt-get install -y nats-server (as root; otherwise sudo apt-get install -y nats-server), or set RELAY_NATS_SERVER to the binary")]
    BinaryNotFound {
        /// The places looked at, e.g. `RELAY_NATS_SERVER (unset), PATH, /usr/sbin/nats-server`.
        searched: String,
    },
    /// The options cannot describe a server, e.g. port 0, a name with spaces, a cluster member
    /// without a server name, a cluster of 0 servers.
    #[error("invalid NATS options: {0}")]
    InvalidOptions(String),
    /// The server exited before it was healthy (a bad argument, a port taken).
    #[error("{what} exited ({status}); last output:\n{log_tail}")]
    Exited {
        /// The server, e.g. `nats-server n2 (port 40123)`.
        what: String,
        /// Its exit status, e.g. `exit status: 1`.
        status: String,
        /// The last ~20 lines its log got from this start.
        log_tail: String,
    },
    /// The health check did not pass in time; the process is left running (its owner's drop
    /// kills it).
    #[error("{what} not ready after {waited:?} (last answer: {last}); last output:\n{log_tail}")]
    Unhealthy {
        /// The server or cluster, e.g. `nats-server (port 40123)`.
        what: String,
        /// How long it was waited for.
        waited: Duration,
        /// The last health answer or request error, e.g. `503 {"status":"unavailable",…}`.
        last: String,
        /// The last ~20 lines of the (first unhealthy) server's log.
        log_tail: String,
    },
    /// A filesystem or process error.
    #[error(transparent)]
    Io(#[from] crate::IoError),
}

fn io_err(context: impl std::fmt::Display) -> impl FnOnce(io::Error) -> NatsError {
    crate::io_error::io_err(context)
}

/// How to start a [`NatsServer`]. `Default`: free ports, a temp store dir, no name, standalone.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Client port on 127.0.0.1 (1–65535). `None`: a free one.
    pub port: Option<u16>,
    /// HTTP monitoring port on 127.0.0.1 (1–65535). `None`: a free one.
    pub monitor_port: Option<u16>,
    /// JetStream store dir (`-sd`): created when missing, kept after drop. `None`: a temp dir,
    /// removed on drop.
    pub store_dir: Option<PathBuf>,
    /// Server name (`--name`): no whitespace. Required for a cluster member.
    pub name: Option<String>,
    /// Cluster membership; `None`: standalone.
    pub cluster: Option<RouteOptions>,
    /// Further arguments appended to the command line as given (e.g. `["-DV"]` to trace).
    pub args: Vec<String>,
}

/// Cluster membership of one server: where it listens for routes and which to dial.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    /// `--cluster_name`, the same on every member: no whitespace.
    pub name: String,
    /// Cluster (route) port on 127.0.0.1 (`--cluster nats://127.0.0.1:<port>`), 1–65535.
    pub port: u16,
    /// Cluster ports on 127.0.0.1 of the members to dial (`--routes`); may include `port`,
    /// which the server recognises as itself.
    pub routes: Vec<u16>,
}

/// A running (or stopped) private `nats-server` with JetStream on 127.0.0.1.
///
/// Drop kills it (SIGKILL) and removes a temp store dir; with an explicit store dir it stops it
/// gently first ([`NatsServer::stop`]) and keeps the dir. Drop never panics.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    store_dir: PathBuf,
    log_file: PathBuf,
    temp: bool,
    port: u16,
    monitor_port: u16,
    name: Option<String>,
    cluster: Option<RouteOptions>,
    args: Vec<String>,
    /// `Some` until reaped, so its pid cannot have been recycled.
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits (≤ [`START_TIMEOUT`]) until it is healthy (see the module
    /// docs). Blocks for ~50–500 ms.
    ///
    /// Errors: [`NatsError::BinaryNotFound`], [`NatsError::InvalidOptions`],
    /// [`NatsError::Exited`] (e.g. an explicit port is taken), [`NatsError::Unhealthy`],
    /// [`NatsError::Io`] (store dir, log file, spawn).
    pub fn start(opts: NatsOptions) -> Result<NatsServer, NatsError> {
        let mut server = NatsServer::prepare(opts.clone())?;
        let auto_ports = opts.port.is_none() || opts.monitor_port.is_none();
        let mut attempt = 1;
        loop {
            let client = hold(opts.port)?;
            let monitor = hold(opts.monitor_port)?;
            server.port = client.port;
            server.monitor_port = monitor.port;
            drop((client.guard, monitor.guard));
            match server.spawn().and_then(|from| server.wait_started(from)) {
                Err(NatsError::Exited { log_tail, .. })
                    if auto_ports && attempt < PORT_ATTEMPTS && log_tail.contains(PORT_TAKEN) =>
                {
                    tracing::debug!(port = server.port, "a port got taken; retrying with others");
                    attempt += 1;
                }
                result => return result.map(|()| server),
            }
        }
    }

    /// Checks the options, finds the binary and creates the store dir; starts nothing.
    pub(crate) fn prepare(opts: NatsOptions) -> Result<NatsServer, NatsError> {
        validate(&opts)?;
        let binary = find_nats_server()?;
        let (store_dir, temp) = match &opts.store_dir {
            Some(dir) => {
                let dir = absolute(dir).map_err(io_err("resolving store_dir"))?;
                fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
                (dir, false)
            }
            None => (make_temp_dir()?, true),
        };
        Ok(NatsServer {
            binary,
            log_file: store_dir.join(LOG_FILE),
            store_dir,
            temp,
            port: opts.port.unwrap_or(0),
            monitor_port: opts.monitor_port.unwrap_or(0),
            name: opts.name,
            cluster: opts.cluster,
            args: opts.args,
            child: None,
        })
    }

    /// `nats://127.0.0.1:<port>`, the URL a NATS client connects to.
    pub fn url(&self) -> String {
        format!("nats://{HOST}:{}", self.port)
    }

    /// Client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// HTTP monitoring port on 127.0.0.1 (`/healthz`, `/varz`, `/jsz`, …).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// `http://127.0.0.1:<monitor port>`.
    pub fn monitor_url(&self) -> String {
        format!("http://{HOST}:{}", self.monitor_port)
    }

    /// Cluster (route) port, `None` for a standalone server.
    pub fn cluster_port(&self) -> Option<u16> {
        self.cluster.as_ref().map(|c| c.port)
    }

    /// Server name (`--name`), if one was given.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Absolute path of the JetStream store dir (`-sd`).
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's stdout and stderr: `<store dir>/nats-server.log`, appended to by every start.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Process id of the server process; `None` once stopped or killed (or if it has exited
    /// and been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is alive (not exited, not a zombie), read from
    /// `/proc/<pid>/stat`.
    pub fn is_running(&self) -> bool {
        let Some(pid) = self.pid() else { return false };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `<pid> (<comm>) <state> …`; comm may hold spaces and parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        state.is_some_and(|s| !matches!(s, 'Z' | 'X' | 'x'))
    }

    /// This server's view of the JetStream meta leader: its server name from `/jsz`
    /// (`meta_cluster.leader`). `None` when it has none yet, is standalone, or does not answer.
    pub fn meta_leader(&self) -> Option<String> {
        let (code, body) = monitor::get(self.monitor_port, "/jsz").ok()?;
        monitor::meta_leader(&body).filter(|_| code == 200)
    }

    /// Stops the server: SIGTERM, waits up to [`STOP_TIMEOUT`] for it to exit (JetStream
    /// flushes its store), then SIGKILL. `Ok(())` at once if it is not running.
    /// Errors: [`NatsError::Io`] if the process cannot be waited for.
    pub fn stop(&mut self) -> Result<(), NatsError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if crate::sigterm(child.id()).is_ok() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(_)) => return Ok(()),
                    Ok(None) => sleep(POLL),
                    Err(_) => break,
                }
            }
            tracing::warn!(port = self.port, "nats-server ignored SIGTERM; killing it");
        }
        kill_and_reap(child, self.port)
    }

    /// Kills the server at once (SIGKILL) and waits for it to exit, as a crash would.
    /// `Ok(())` at once if it is not running. Errors: [`NatsError::Io`].
    pub fn kill(&mut self) -> Result<(), NatsError> {
        match self.child.take() {
            Some(child) => kill_and_reap(child, self.port),
            None => Ok(()),
        }
    }

    /// Stops the server if it runs ([`NatsServer::stop`]), then starts it again with the same
    /// ports, name, cluster routes and store dir, and waits (≤ [`START_TIMEOUT`]) until it is
    /// healthy. Errors: as [`NatsServer::start`] (e.g. [`NatsError::Exited`] when a port was
    /// taken meanwhile).
    pub fn restart(&mut self) -> Result<(), NatsError> {
        self.stop()?;
        let from = self.spawn()?;
        self.wait_started(from)
    }

    /// The command line's arguments.
    fn command_args(&self) -> Vec<String> {
        let store = self.store_dir.display().to_string();
        let mut args: Vec<String> = ["-js", "-sd", &store, "-a", HOST].map(String::from).into();
        args.extend(["-p".into(), self.port.to_string()]);
        args.extend(["-m".into(), self.monitor_port.to_string()]);
        if let Some(name) = &self.name {
            args.extend(["--name".into(), name.clone()]);
        }
        if let Some(cluster) = &self.cluster {
            let routes: Vec<String> = cluster.routes.iter().map(|p| route_url(*p)).collect();
            args.extend(["--cluster".into(), route_url(cluster.port)]);
            args.extend(["--cluster_name".into(), cluster.name.clone()]);
            if !routes.is_empty() {
                args.extend(["--routes".into(), routes.join(",")]);
            }
        }
        args.extend(self.args.iter().cloned());
        args
    }

    /// Spawns the process (not waiting); returns the log's length before it, where this start's
    /// output begins.
    pub(crate) fn spawn(&mut self) -> Result<u64, NatsError> {
        let log = &self.log_file;
        let opened = File::options().create(true).append(true).open(log);
        let out = opened.map_err(io_err(format!("opening {}", log.display())))?;
        let from = out.metadata().map_or(0, |m| m.len());
        let err = out
            .try_clone()
            .map_err(io_err("duplicating the log handle"))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.command_args())
            .current_dir(&self.store_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .map_err(io_err(format!("starting {}", self.binary.display())))?;
        tracing::debug!(port = self.port, pid = child.id(), "nats-server spawned");
        self.child = Some(child);
        Ok(from)
    }

    /// Polls the health check until 200 or [`START_TIMEOUT`]; fails early when the process exits.
    pub(crate) fn wait_started(&mut self, log_from: u64) -> Result<(), NatsError> {
        let path = match self.cluster {
            Some(_) => "/healthz?js-enabled-only=true",
            None => "/healthz",
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(NatsError::Exited {
                    what: self.describe(),
                    status: status.map_or_else(|| "unknown".into(), |s| s.to_string()),
                    log_tail: self.log_tail(log_from),
                });
            }
            let last = match monitor::get(self.monitor_port, path) {
                Ok((200, _)) => {
                    tracing::info!(url = %self.url(), store = %self.store_dir.display(), "nats-server started");
                    return Ok(());
                }
                Ok((code, body)) => format!("{code} {}", body.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(NatsError::Unhealthy {
                    what: self.describe(),
                    waited: START_TIMEOUT,
                    last,
                    log_tail: self.log_tail(log_from),
                });
            }
            sleep(POLL);
        }
    }

    /// `Some(status)` once the process has exited (then it is reaped and forgotten; `None`
    /// inside when waiting failed), `None` while it runs or when there is none.
    fn exit_status(&mut self) -> Option<Option<ExitStatus>> {
        let exited = match self.child.as_mut()?.try_wait() {
            Ok(None) => return None,
            Ok(Some(status)) => Some(status),
            Err(_) => None,
        };
        self.child = None;
        Some(exited)
    }

    /// e.g. `nats-server n2 (port 40123)`.
    pub(crate) fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("nats-server {name} (port {})", self.port),
            None => format!("nats-server (port {})", self.port),
        }
    }

    /// The last [`TAIL_LINES`] lines of the log from byte `from` on.
    pub(crate) fn log_tail(&self, from: u64) -> String {
        let mut text = Vec::new();
        if let Ok(mut file) = File::open(&self.log_file) {
            let _ = file.seek(SeekFrom::Start(from));
            let _ = file.read_to_end(&mut text);
        }
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let stopped = if self.temp { self.kill() } else { self.stop() };
        if let Err(e) = stopped {
            tracing::warn!(error = %e, port = self.port, "stopping nats-server on drop failed");
        }
        if self.temp {
            if let Err(e) = fs::remove_dir_all(&self.store_dir) {
                tracing::warn!(error = %e, dir = %self.store_dir.display(), "removing temp NATS store failed");
            }
        }
    }
}

/// SIGKILL (harmless if it has just exited: it is not reaped yet) and wait.
fn kill_and_reap(mut child: Child, port: u16) -> Result<(), NatsError> {
    let _ = child.kill();
    child
        .wait()
        .map_err(io_err(format!("waiting for nats-server (port {port})")))?;
    Ok(())
}

/// `nats://127.0.0.1:<port>`.
fn route_url(port: u16) -> String {
    format!("nats://{HOST}:{port}")
}

/// A port to use and, when it was chosen here, its reservation.
struct Held {
    port: u16,
    guard: Option<PortGuard>,
}

/// An explicit port as it is; `None`: a free port, held.
fn hold(port: Option<u16>) -> Result<Held, NatsError> {
    match port {
        Some(port) => Ok(Held { port, guard: None }),
        None => {
            let guard = free_port().map_err(io_err("binding 127.0.0.1:0"))?;
            let port = guard.port();
            Ok(Held {
                port,
                guard: Some(guard),
            })
        }
    }
}

/// Refuses what nats-server would misread: port 0 (its default port, not "any"), empty names
/// or names with whitespace, a cluster member without a server name (JetStream clustering
/// requires one).
fn validate(opts: &NatsOptions) -> Result<(), NatsError> {
    let bad = |msg: String| Err(NatsError::InvalidOptions(msg));
    let ports = [
        opts.port,
        opts.monitor_port,
        opts.cluster.as_ref().map(|c| c.port),
    ];
    let routes = opts
        .cluster
        .iter()
        .flat_map(|c| c.routes.iter().copied().map(Some));
    if ports.into_iter().chain(routes).any(|p| p == Some(0)) {
        return bad("port 0 (leave the port unset for a free one)".into());
    }
    let bad_name = |n: &str| n.is_empty() || n.chars().any(char::is_whitespace);
    if let Some(name) = opts.name.as_deref().filter(|n| bad_name(n)) {
        return bad(format!(
            "server name {name:?}: must be non-empty without whitespace"
        ));
    }
    if let Some(cluster) = &opts.cluster {
        if bad_name(&cluster.name) {
            let name = &cluster.name;
            return bad(format!(
                "cluster name {name:?}: must be non-empty without whitespace"
            ));
        }
        if opts.name.is_none() {
            return bad("a cluster member needs a server name (JetStream clustering)".into());
        }
    }
    Ok(())
}

/// A new empty dir `relay-nats-<pid>-<nanos>-<n>` under `$TMPDIR`.
fn make_temp_dir() -> Result<PathBuf, NatsError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    loop {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let nanos = now.map_or(0, |d| d.subsec_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("relay-nats-{}-{nanos:x}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
        }
    }
}

#[cfg(test)]
mod tests;
