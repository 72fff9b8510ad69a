//! The real `engagement-relay` binary as a child process (for crash and signal tests): started
//! on a test database with port-0 listeners, its JSON log collected, killed or terminated.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{wait_until, TestDb, SECRET};

/// A running relay process.
pub struct RelayProcess {
    child: Child,
    log: Arc<Mutex<Vec<Value>>>,
    /// Its WebSocket/HTTP address.
    pub addr: SocketAddr,
    /// Its metrics address.
    pub metrics_addr: SocketAddr,
}

impl RelayProcess {
    /// Starts `engagement-relay run` on `db` (slot named after the database) with extra
    /// `RELAY_*` variables, and waits until it listens (not until it is ready).
    pub async fn start(db: &TestDb, env: &[(&str, &str)]) -> RelayProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_engagement-relay"));
        command
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--database-url", &db.url, "--jwt-secret", SECRET])
            .env("RELAY_DATABASE__SLOT", &db.name)
            .env("RELAY_DATABASE__STATUS_INTERVAL", "200ms")
            .env("RELAY_DATABASE__RECONNECT_MIN", "100ms")
            .env("RELAY_DATABASE__RECONNECT_MAX", "1s")
            .env("RELAY_LOG__FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn engagement-relay");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap().push(value);
            }
        });
        let mut process = RelayProcess {
            child,
            log,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let listening = RelayLog(process.log());
            if let (Some(addr), Some(metrics)) = (
                listening.field("relay listening", "server_addr"),
                listening.field("relay listening", "metrics_addr"),
            ) {
                process.addr = addr.parse().expect("server_addr");
                process.metrics_addr = metrics.parse().expect("metrics_addr");
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("the relay exited with {status}: {:?}", process.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `/readyz` answers 200 (stream connected, replay window rebuilt).
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.addr);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay did not become ready: {:?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /metrics`: the exposition text.
    pub async fn scrape(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Every log line so far (JSON objects; a non-JSON line as a string).
    pub fn log(&self) -> Vec<Value> {
        self.log.lock().unwrap().clone()
    }

    /// The first log message starting with `prefix`, in full.
    pub fn message(&self, prefix: &str) -> Option<String> {
        RelayLog(self.log()).message(prefix)
    }

    /// Field `field` of the first log line whose message starts with `prefix`.
    pub fn field(&self, prefix: &str, field: &str) -> Option<String> {
        RelayLog(self.log()).field(prefix, field)
    }

    /// SIGKILL: no shutdown at all, as in a crash.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then waits (at most 30 s) for the exit.
    pub async fn terminate(mut self) -> (ExitStatus, RelayLog) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.expect("kill -TERM").success());
        let child = &mut self.child;
        let mut status = None;
        wait_until(
            "the relay exits after SIGTERM",
            Duration::from_secs(30),
            || {
                status = child.try_wait().expect("try_wait");
                status.is_some()
            },
        )
        .await;
        // Let the log reader drain the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = RelayLog(self.log());
        (status.expect("exited"), log)
    }
}

/// The log of a relay that exited.
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

    /// Field `field` of the first line whose message starts with `prefix`.
    pub fn field(&self, prefix: &str, field: &str) -> Option<String> {
        Some(self.line(prefix)?[field].as_str()?.to_string())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
