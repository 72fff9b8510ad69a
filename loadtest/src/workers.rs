//! Harness worker processes: the sessions of a large run are spread over several copies of
//! this binary (`relay-soak __worker`), each under [`MAX_PER_WORKER`] sockets, so no process
//! nears its descriptor limit (~20,000 here). The parent sends each worker its share as one
//! JSON line on stdin, reads progress lines, sends `stop`, and reads back every session's
//! outcome (received sequence numbers and raw latencies), so the report accounts loss,
//! duplicates and leaks exactly and builds one latency histogram from every sample.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use engagement_relay::auth::{mint, Role};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::sessions::{self, Live, SessionOutcome, SessionSpec, StopToken};

/// Most sessions one worker process holds.
pub const MAX_PER_WORKER: usize = 15_000;

/// A relay node as a worker sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// `ws://127.0.0.1:<port>`.
    pub base: String,
    /// Its address.
    pub addr: SocketAddr,
}

/// One session of a worker's share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSession {
    /// Index of its user (`None`: firehose).
    pub user: Option<usize>,
    /// The user's UUID.
    pub user_id: Option<Uuid>,
    /// Index of its node in `targets`.
    pub target: usize,
    /// Loopback source address.
    pub source: IpAddr,
}

/// A worker's share of the run (one JSON line on its stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// JWT secret to mint the sessions' tokens with.
    pub secret: String,
    /// Token lifetime, seconds.
    pub ttl_s: u64,
    /// Sessions this worker opens per second during the ramp.
    pub connect_rate: f64,
    /// Every node.
    pub targets: Vec<Target>,
    /// Resume with `since` on the other nodes when a node drops a session.
    pub resume: bool,
    /// The sessions.
    pub sessions: Vec<WorkerSession>,
}

/// A progress line of a worker.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    ready: usize,
    failed: usize,
    received: u64,
}

/// The last line of a worker: its sessions' outcomes, in its share's order.
#[derive(Debug, Serialize, Deserialize)]
struct Outcomes {
    outcomes: Vec<SessionOutcome>,
}

/// Builds session `s`'s spec: a token for its user (or the service role), its node, and with
/// `resume` the other nodes to resume on.
pub fn session_spec(
    s: &WorkerSession,
    targets: &[Target],
    secret: &str,
    ttl: Duration,
    resume: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<SessionSpec> {
    let token = match s.user_id {
        Some(id) => mint(secret, Some(id), Role::Authenticated, ttl)?,
        None => mint(secret, None, Role::ServiceRole, ttl)?,
    };
    let url_of = |t: &Target| {
        format!(
            "{}/v1/events?access_token={token}",
            t.base.trim_end_matches('/')
        )
    };
    let target = targets
        .get(s.target)
        .context("session target out of range")?;
    let resume_to = if resume && targets.len() > 1 {
        (1..targets.len())
            .map(|k| &targets[(s.target + k) % targets.len()])
            .map(|t| (url_of(t), t.addr))
            .collect()
    } else {
        Vec::new()
    };
    Ok(SessionSpec {
        user: s.user,
        user_id: s.user_id.map(|u| u.to_string()),
        url: url_of(target),
        tls,
        relay: target.addr,
        source: s.source,
        resume_to,
    })
}

/// `relay-soak __worker`: reads its share from stdin, opens the sessions at its connect rate,
/// prints progress every 200 ms, and on `stop` (or stdin closing) stops them and prints the
/// outcomes.
pub async fn serve_worker() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await?
        .context("no worker spec on stdin")?;
    let spec: WorkerSpec = serde_json::from_str(&first).context("worker spec")?;
    let ttl = Duration::from_secs(spec.ttl_s);
    let live = Arc::new(Live::default());
    let stop = StopToken::new();
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "stop" {
                    break;
                }
            }
            stop.cancel();
        })
    };
    let progress = {
        let live = live.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut out = tokio::io::stdout();
            loop {
                let p = Progress {
                    ready: live.ready.load(Ordering::Relaxed),
                    failed: live.failed.load(Ordering::Relaxed),
                    received: live.received.load(Ordering::Relaxed),
                };
                let mut line = serde_json::to_vec(&p).unwrap_or_default();
                line.push(b'\n');
                if out.write_all(&line).await.is_err() || out.flush().await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(spec.sessions.len());
    for (i, s) in spec.sessions.iter().enumerate() {
        if stop.is_cancelled() {
            break;
        }
        let due = Duration::from_secs_f64(i as f64 / spec.connect_rate.max(1.0));
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let session = session_spec(s, &spec.targets, &spec.secret, ttl, spec.resume, None)?;
        tasks.push(tokio::spawn(sessions::run(
            session,
            live.clone(),
            stop.clone(),
        )));
    }
    let _ = stopper.await;
    let _ = progress.await;
    let mut outcomes = Vec::with_capacity(spec.sessions.len());
    for task in tasks {
        outcomes.push(task.await.unwrap_or_default());
    }
    outcomes.resize_with(spec.sessions.len(), SessionOutcome::default);
    let mut line = serde_json::to_vec(&Outcomes { outcomes })?;
    line.push(b'\n');
    let mut out = tokio::io::stdout();
    out.write_all(&line).await?;
    out.flush().await?;
    Ok(())
}

/// One worker as the parent sees it.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Indexes (in the whole run) of its sessions, in its share's order.
    indexes: Vec<usize>,
    reader: JoinHandle<anyhow::Result<Vec<SessionOutcome>>>,
}

/// The workers of a run, with their summed progress.
pub struct Workers {
    workers: Vec<Worker>,
    ready: Arc<Vec<AtomicUsize>>,
    failed: Arc<Vec<AtomicUsize>>,
    received: Arc<Vec<AtomicU64>>,
    total: usize,
}

/// How many workers `sessions` sessions need (at least `min`).
pub fn count_for(sessions: usize, min: usize) -> usize {
    sessions.div_ceil(MAX_PER_WORKER).max(min).max(1)
}

impl Workers {
    /// Starts `n` workers and hands each its share: session `i` goes to worker `i % n`, each
    /// worker ramping at `connect_rate / n` so the whole ramp keeps `connect_rate`.
    pub async fn start(
        n: usize,
        sessions: Vec<WorkerSession>,
        template: &WorkerSpec,
    ) -> anyhow::Result<Workers> {
        let n = n.max(1);
        let total = sessions.len();
        let mut shares: Vec<(Vec<usize>, Vec<WorkerSession>)> = vec![Default::default(); n];
        for (i, s) in sessions.into_iter().enumerate() {
            shares[i % n].0.push(i);
            shares[i % n].1.push(s);
        }
        let ready = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
        let failed = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
        let received = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let mut workers = Vec::with_capacity(n);
        for (w, (indexes, share)) in shares.into_iter().enumerate() {
            let mut child = Command::new(std::env::current_exe()?)
                .arg("__worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a harness worker")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let spec = WorkerSpec {
                sessions: share,
                connect_rate: template.connect_rate / n as f64,
                ..template.clone()
            };
            let mut line = serde_json::to_vec(&spec)?;
            line.push(b'\n');
            stdin.write_all(&line).await?;
            stdin.flush().await?;
            let (ready, failed, received) = (ready.clone(), failed.clone(), received.clone());
            let reader = tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Some(line) = lines.next_line().await? {
                    if let Ok(p) = serde_json::from_str::<Progress>(&line) {
                        ready[w].store(p.ready, Ordering::Relaxed);
                        failed[w].store(p.failed, Ordering::Relaxed);
                        received[w].store(p.received, Ordering::Relaxed);
                    } else if let Ok(o) = serde_json::from_str::<Outcomes>(&line) {
                        return Ok(o.outcomes);
                    }
                }
                anyhow::bail!("worker {w} ended without its outcomes")
            });
            workers.push(Worker {
                child,
                stdin: Some(stdin),
                indexes,
                reader,
            });
        }
        Ok(Workers {
            workers,
            ready,
            failed,
            received,
            total,
        })
    }

    /// Sessions that reached `ready`, over every worker.
    pub fn ready(&self) -> usize {
        self.ready.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Sessions that failed or ended, over every worker.
    pub fn failed(&self) -> usize {
        self.failed.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Events received, over every worker.
    pub fn received(&self) -> u64 {
        self.received
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }

    /// Pids of the worker processes.
    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(|w| w.child.id()).collect()
    }

    /// Stops every worker and returns every session's outcome in the run's order (a worker
    /// that fails leaves its sessions as never connected, with the error).
    pub async fn stop(mut self) -> Vec<SessionOutcome> {
        for w in &mut self.workers {
            if let Some(mut stdin) = w.stdin.take() {
                let _ = stdin.write_all(b"stop\n").await;
                let _ = stdin.flush().await;
            }
        }
        let mut all: Vec<SessionOutcome> = Vec::with_capacity(self.total);
        all.resize_with(self.total, SessionOutcome::default);
        for mut w in self.workers {
            let result = match tokio::time::timeout(Duration::from_secs(120), &mut w.reader).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(anyhow::anyhow!("worker did not answer within 120 s")),
            };
            let _ = w.child.wait().await;
            match result {
                Ok(outcomes) => {
                    for (i, o) in w.indexes.into_iter().zip(outcomes) {
                        all[i] = o;
                    }
                }
                Err(e) => {
                    tracing::error!("harness worker: {e:#}");
                    for i in w.indexes {
                        all[i].error = Some(format!("harness worker failed: {e}"));
                    }
                }
            }
        }
        all
    }
}

/// The share of each session: users round-robin as in single-node mode; the k-th session of
/// user u on node (u + k) mod nodes, so a user with several sessions has them on different
/// nodes (the per-user checks then compare nodes); source addresses 127.0.0.1–250
/// round-robin.
pub fn plan(
    connections: usize,
    firehose: usize,
    users: &[Uuid],
    nodes: usize,
) -> Vec<WorkerSession> {
    let nodes = nodes.max(1);
    let mut plan = Vec::with_capacity(connections + firehose);
    for i in 0..connections + firehose {
        let user = (i < connections).then(|| i % users.len().max(1));
        plan.push(WorkerSession {
            user,
            user_id: user.and_then(|u| users.get(u).copied()),
            target: (i % users.len().max(1) + i / users.len().max(1)) % nodes,
            source: sessions::source_address(i),
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_sessions_land_on_different_nodes() {
        let users: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let plan = plan(9, 1, &users, 3);
        for u in 0..3 {
            let mut nodes: Vec<usize> = plan
                .iter()
                .filter(|s| s.user == Some(u))
                .map(|s| s.target)
                .collect();
            nodes.sort_unstable();
            assert_eq!(nodes, [0, 1, 2], "user {u}");
        }
        assert_eq!(plan[9].user, None, "the firehose session comes last");
        assert_eq!(count_for(45_000, 0), 3);
        assert_eq!(count_for(10, 2), 2);
    }
}
