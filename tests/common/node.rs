//! Runs `tests/js/client.mjs` (the real @supabase/realtime-js or supabase-js) as a child
//! process: JSON lines out, commands in.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// A running client script.
pub struct NodeClient {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
}

impl NodeClient {
    /// Starts `node tests/js/client.mjs <mode> <options>`.
    pub fn start(mode: &str, options: Value) -> NodeClient {
        Self::start_with_env(mode, options, &[])
    }

    /// [`NodeClient::start`] with extra environment variables, e.g. `NODE_EXTRA_CA_CERTS` to
    /// trust a test CA.
    pub fn start_with_env(mode: &str, options: Value, env: &[(&str, &str)]) -> NodeClient {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
        let mut child = Command::new("node")
            .current_dir(dir)
            .envs(env.iter().copied())
            .args(["client.mjs", mode, &options.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (tests/js needs `npm ci`; scripts/test does it)");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        NodeClient {
            child,
            stdin,
            lines,
        }
    }

    /// The next line for which `want` holds, skipping others; panics after `timeout`.
    pub async fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(v)) if want(&v) => return v,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("client exited while waiting for {what}"),
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }

    /// Waits for a subscribe status (`SUBSCRIBED`, `CHANNEL_ERROR`, `CLOSED`, …).
    pub async fn status(&mut self, status: &str) -> Value {
        self.expect(status, Duration::from_secs(20), |v| v["status"] == status)
            .await
    }

    /// The next `n` change payloads; nothing else may be a change meanwhile.
    pub async fn changes(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let v = self
                .expect("a change", Duration::from_secs(20), |v| {
                    v.get("change").is_some()
                })
                .await;
            out.push(v["change"].clone());
        }
        out
    }

    /// Asserts that no change arrives within `quiet`.
    pub async fn no_change(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Err(_) | Ok(None) => return,
                Ok(Some(v)) if v.get("change").is_some() => panic!("unexpected change: {v}"),
                Ok(Some(_)) => continue,
            }
        }
    }

    /// Sends a command line (`{"cmd": …}`).
    pub async fn command(&mut self, cmd: Value) {
        let line = format!("{cmd}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
    }

    /// Asks the client to quit and waits for it.
    pub async fn quit(mut self) {
        self.command(serde_json::json!({"cmd": "quit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}
