//! The relay as a child process, for crash and signal tests and for measuring it apart from a
//! harness: started on port-0 listeners with a JSON log on stderr (collected in memory, its
//! warnings optionally echoed), its addresses read from its `relay listening` log line,
//! `/readyz` polled, SIGTERM or SIGKILL at the end. The one copy of this for `tests/` and
//! `loadtest/`.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::time::{sleep, Instant};

/// Polling interval of every wait here.
const POLL: Duration = Duration::from_millis(20);

/// Why a relay child could not be started, reached or stopped. Each variant that waited carries
/// the relay's log so far (one line per entry, JSON as it was written).
#[derive(Debug, thiserror::Error)]
pub enum RelayProcessError {
    /// The program could not be spawned (not found, not executable).
    #[error("spawning the relay: {0}")]
    Spawn(#[source] io::Error),
    /// It exited before it was listening or ready (bad configuration, database unreachable).
    #[error("the relay exited with {status}; its log:\n{log}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// Its log.
        log: String,
    },
    /// No `relay listening` log line within the timeout.
    #[error("the relay did not listen within {timeout:?}; its log:\n{log}")]
    NotListening {
        /// How long it was given.
        timeout: Duration,
        /// Its log.
        log: String,
    },
    /// `/readyz` did not answer 200 within the timeout.
    #[error("the relay did not become ready within {timeout:?}; its log:\n{log}")]
    NotReady {
        /// How long it was given.
        timeout: Duration,
        /// Its log.
        log: String,
    },
    /// It was still running `timeout` after SIGTERM (it has been SIGKILLed since).
    #[error("the relay did not exit within {timeout:?} of SIGTERM (killed); its log:\n{log}")]
    NotStopped {
        /// How long it was given.
        timeout: Duration,
        /// Its log.
        log: String,
    },
    /// Signalling or waiting for the process failed.
    #[error("{context}: {source}")]
    Os {
        /// What was being done, e.g. `sending SIGTERM`.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// How [`RelayProcess::start_with`] starts the child.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// How long to wait for the `relay listening` log line (default 30 s).
    pub listen_timeout: Duration,
    /// Also copy each WARN and ERROR log line to this process's stderr as it arrives (default
    /// off: tests keep their output quiet; the soak harness shows the relay's warnings).
    pub echo_warnings: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            listen_timeout: Duration::from_secs(30),
            echo_warnings: false,
        }
    }
}

/// A running relay child. Dropping it SIGKILLs and reaps the child.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    log: Arc<Mutex<Vec<Value>>>,
    /// Its WebSocket/HTTP address (from its log).
    pub addr: SocketAddr,
    /// Its metrics address (from its log).
    pub metrics_addr: SocketAddr,
}

impl RelayProcess {
    /// [`RelayProcess::start_with`] with the default [`StartOptions`].
    ///
    /// # Errors
    /// As [`RelayProcess::start_with`].
    pub async fn start(command: Command) -> Result<RelayProcess, RelayProcessError> {
        Self::start_with(command, StartOptions::default()).await
    }

    /// Spawns `command` (the relay binary with its arguments and `RELAY_*` environment, or any
    /// program that runs the relay from them) and waits until it listens, not until it is ready.
    ///
    /// Set on top of the caller's environment: `RELAY_LOG__FORMAT=json` (the log is parsed),
    /// and unless the caller set them, `RELAY_LISTEN` and `RELAY_METRICS_LISTEN` to
    /// `127.0.0.1:0` and `RUST_LOG=info`. Stdin and stdout are null, stderr is collected.
    ///
    /// # Errors
    /// [`RelayProcessError::Spawn`]; [`RelayProcessError::Exited`] if it exits first;
    /// [`RelayProcessError::NotListening`] after `options.listen_timeout`.
    pub async fn start_with(
        mut command: Command,
        options: StartOptions,
    ) -> Result<RelayProcess, RelayProcessError> {
        let set: Vec<_> = command.get_envs().map(|(k, _)| k.to_owned()).collect();
        let is_set = |key: &str| set.iter().any(|k| k == OsStr::new(key));
        for (key, value) in [
            ("RELAY_LISTEN", "127.0.0.1:0"),
            ("RELAY_METRICS_LISTEN", "127.0.0.1:0"),
            ("RUST_LOG", "info"),
        ] {
            if !is_set(key) {
                command.env(key, value);
            }
        }
        command
            .env("RELAY_LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(RelayProcessError::Spawn)?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = log.clone();
            let echo = options.echo_warnings;
            std::thread::spawn(move || collect(stderr, &sink, echo));
        }
        let mut process = RelayProcess {
            child,
            log,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let deadline = Instant::now() + options.listen_timeout;
        loop {
            let log = RelayLog(process.log());
            let field = |name| log.field("relay listening", name)?.parse().ok();
            if let (Some(addr), Some(metrics)) = (field("server_addr"), field("metrics_addr")) {
                process.addr = addr;
                process.metrics_addr = metrics;
                return Ok(process);
            }
            process.check_running()?;
            if Instant::now() > deadline {
                return Err(RelayProcessError::NotListening {
                    timeout: options.listen_timeout,
                    log: process.log_text(),
                });
            }
            sleep(POLL).await;
        }
    }

    /// Waits until `GET /readyz` answers 200 (stream connected, replay window rebuilt).
    ///
    /// # Errors
    /// [`RelayProcessError::Exited`], or [`RelayProcessError::NotReady`] after `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), RelayProcessError> {
        self.wait_ready_with(&reqwest::Client::new(), "http", timeout)
            .await
    }

    /// [`RelayProcess::wait_ready`] with `client` and `scheme`: `https` with a client that
    /// trusts the relay's certificate when it serves TLS (`server.tls_cert`).
    ///
    /// # Errors
    /// As [`RelayProcess::wait_ready`].
    pub async fn wait_ready_with(
        &mut self,
        client: &reqwest::Client,
        scheme: &str,
        timeout: Duration,
    ) -> Result<(), RelayProcessError> {
        let url = format!("{scheme}://{}/readyz", self.addr);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            self.check_running()?;
            if Instant::now() > deadline {
                return Err(RelayProcessError::NotReady {
                    timeout,
                    log: self.log_text(),
                });
            }
            sleep(POLL).await;
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /metrics`: the exposition text, empty if the relay did not answer.
    pub async fn scrape(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Every log line so far: JSON objects, a line that is not JSON as a string.
    pub fn log(&self) -> Vec<Value> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The first log message starting with `prefix`, in full.
    pub fn message(&self, prefix: &str) -> Option<String> {
        RelayLog(self.log()).message(prefix)
    }

    /// Field `field` of the first log line whose message starts with `prefix`.
    pub fn field(&self, prefix: &str, field: &str) -> Option<String> {
        RelayLog(self.log()).field(prefix, field)
    }

    /// SIGKILL, as in a crash (no shutdown at all), then reaps the child.
    ///
    /// # Errors
    /// [`RelayProcessError::Os`] if the kill or the wait fails.
    pub fn kill(mut self) -> Result<(), RelayProcessError> {
        self.child.kill().map_err(os("sending SIGKILL"))?;
        self.child.wait().map_err(os("reaping the relay"))?;
        Ok(())
    }

    /// SIGTERM (graceful shutdown: drain, close 1001, acknowledge), then waits up to `timeout`
    /// for the exit. Returns the exit status and the whole log.
    ///
    /// # Errors
    /// [`RelayProcessError::Os`] if the signal cannot be sent; [`RelayProcessError::NotStopped`]
    /// (after a SIGKILL) if it is still running after `timeout`.
    pub async fn terminate(
        mut self,
        timeout: Duration,
    ) -> Result<(ExitStatus, RelayLog), RelayProcessError> {
        crate::sigterm(self.child.id()).map_err(os("sending SIGTERM"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(os("waiting for the relay"))? {
                // Let the log reader take the last lines.
                sleep(Duration::from_millis(100)).await;
                return Ok((status, RelayLog(self.log())));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(RelayProcessError::NotStopped {
                    timeout,
                    log: self.log_text(),
                });
            }
            sleep(POLL).await;
        }
    }

    /// `Err(Exited)` once the child has exited.
    fn check_running(&mut self) -> Result<(), RelayProcessError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(RelayProcessError::Exited {
                status,
                log: self.log_text(),
            }),
            Ok(None) => Ok(()),
            Err(e) => Err(os("waiting for the relay")(e)),
        }
    }

    fn log_text(&self) -> String {
        let lines: Vec<String> = self.log().iter().map(Value::to_string).collect();
        lines.join("\n")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn os(context: &'static str) -> impl FnOnce(io::Error) -> RelayProcessError {
    move |source| RelayProcessError::Os { context, source }
}

/// Reads `stderr` line by line into `sink` until it closes (the child exited); with `echo`,
/// copies warnings and errors to this process's stderr.
/// A line that is not UTF-8 is kept lossily rather than ending the reader (which would leave
/// the child blocked on a full pipe).
fn collect(stderr: impl io::Read, sink: &Mutex<Vec<Value>>, echo: bool) {
    let mut reader = BufReader::new(stderr);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
        let value = serde_json::from_str(&line).unwrap_or(Value::String(line.clone()));
        if echo && matches!(value["level"].as_str(), Some("WARN" | "ERROR")) {
            let _ = writeln!(io::stderr().lock(), "{line}");
        }
        sink.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(value);
    }
}

/// A relay's log: the JSON lines of `tracing-subscriber`'s JSON format (message and fields
/// under `fields`).
#[derive(Debug, Clone)]
pub struct RelayLog(pub Vec<Value>);

impl RelayLog {
    /// The fields of the first line whose message starts with `prefix`.
    fn line(&self, prefix: &str) -> Option<&Value> {
        self.0.iter().map(|l| &l["fields"]).find(|fields| {
            fields["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
        })
    }

    /// The first message starting with `prefix`.
    pub fn message(&self, prefix: &str) -> Option<String> {
        Some(self.line(prefix)?["message"].as_str()?.to_string())
    }

    /// Field `field` (a string) of the first line whose message starts with `prefix`.
    pub fn field(&self, prefix: &str, field: &str) -> Option<String> {
        Some(self.line(prefix)?[field].as_str()?.to_string())
    }
}
