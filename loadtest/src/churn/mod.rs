//! `relay-soak churn`: what connecting costs the relay while sessions come and go (issue 16:
//! presence bookkeeping on vs off). Holds `--sessions` native sessions of `--users` users,
//! then for `--duration` runs `--churn-concurrency` loops, each closing a random held session
//! (close handshake) and opening one for a random user, so at most that many connects are in
//! flight. A connect counts when the upgrade is complete and the `ready` frame was read; its
//! time is from the socket's creation to `ready`. The report gives connects/s over the churn,
//! connect-time quantiles, failures by kind, the relay's CPU seconds and RSS from `/proc`, and
//! what presence did: the `presence` frames `--watchers` service-role sessions
//! (`presence=true`) received, `relay_presence_online_users`, and the `relay.presence` rows
//! written. `--rate` adds a trickle of inserts to the held sessions. Everything is bounded:
//! 30 s per connect, 2 s per close, and the whole run.

mod pool;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use engagement_relay::auth::{mint, Role};
use futures_util::StreamExt;
use relay_testkit::demo::DEV_JWT_SECRET;
use tracing::info;

use self::pool::{churner, watch, Churn};
use self::report::{judge, summary, ChurnReport, Memory, Tally};
use crate::sessions::{self, StopToken};
use crate::{load, nodes, procstat, spawn};

/// Descriptors the harness keeps besides its sessions (database, metrics, stdio, runtime).
const HARNESS_RESERVE: u64 = 256;

/// `relay-soak churn`.
#[derive(Args, Clone, Debug)]
pub struct ChurnArgs {
    /// Relay WebSocket base URL (loopback only, `ws://`).
    #[arg(long, default_value = "ws://127.0.0.1:4000")]
    url: String,
    /// Relay metrics URL.
    #[arg(long, default_value = "http://127.0.0.1:9898/metrics")]
    metrics_url: String,
    /// Database the relay streams from.
    #[arg(long, env = "RELAY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The relay's JWT secret.
    #[arg(long, env = "RELAY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Pid of the relay (default: found from the URL's port, or the spawned child).
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Start a private PostgreSQL and the relay (a child process) first.
    #[arg(long)]
    spawn_dev: bool,
    /// Extra variable for the spawned relay, `NAME=value` (repeatable), e.g.
    /// `RELAY_PRESENCE__ENABLED=false`.
    #[arg(long = "relay-env", value_parser = crate::parse_setting)]
    relay_env: Vec<(String, String)>,
    /// Sessions held (the ramp opens them round-robin over the users).
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// How long the churn runs.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Close-then-open loops running at once (the connects in flight; also the ramp's).
    #[arg(long, default_value_t = 64)]
    churn_concurrency: usize,
    /// Service-role sessions with `presence=true`, counting `presence` frames.
    #[arg(long, default_value_t = 1)]
    watchers: usize,
    /// Events inserted per second during the churn (spread over the users; 0: none).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seed of the random choices (default: random, and reported).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ChurnArgs {
    /// Descriptors the harness needs at most: held sessions, connects in flight, watchers and
    /// a reserve.
    fn descriptors(&self) -> u64 {
        (self.sessions + self.churn_concurrency + self.watchers) as u64 + HARNESS_RESERVE
    }

    /// Refuses what cannot run or would not stop: empty runs, non-loopback or `wss://`
    /// targets, over an hour, more sockets than `files` descriptors allow.
    fn check(&self, files: u64) -> anyhow::Result<()> {
        if self.sessions == 0 || self.users == 0 {
            bail!("--sessions and --users must be at least 1");
        }
        if !(1..=1024).contains(&self.churn_concurrency) {
            bail!("--churn-concurrency must be between 1 and 1024");
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(3600) {
            bail!("--duration must be between 1 ms and 1 h");
        }
        if !(0.0..=10_000.0).contains(&self.rate) {
            bail!("--rate must be between 0 and 10,000 events/s");
        }
        if !self.url.starts_with("ws://") {
            bail!("churn speaks ws:// only");
        }
        crate::loopback_target(&self.url)?;
        if self.descriptors() > files {
            bail!(
                "{} sessions need ~{} descriptors, more than this process's limit of {files} (raise `ulimit -n`, or hold fewer)",
                self.sessions,
                self.descriptors()
            );
        }
        Ok(())
    }
}

/// Runs a churn (`--spawn-dev` first, if asked), prints the summary and writes the report;
/// `Ok(passed)`: every connect succeeded and the relay closed no held session or watcher.
pub async fn run(mut args: ChurnArgs) -> anyhow::Result<bool> {
    args.check(engagement_relay::limits::nofile_limit())?;
    let mut dev = None;
    if args.spawn_dev {
        let extra: Vec<(&str, &str)> = args
            .relay_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (cluster, relay) = spawn::dev(Vec::new(), &extra, None).await?;
        args.url = format!("ws://{}", relay.addr);
        args.metrics_url = format!("http://{}/metrics", relay.metrics_addr);
        args.database_url = Some(cluster.url("postgres"));
        args.jwt_secret = Some(DEV_JWT_SECRET.into());
        args.relay_pid = Some(relay.pid());
        dev = Some((cluster, relay));
    }
    let relay = crate::loopback_target(&args.url)?;
    let database_url =
        crate::report::required(&args.database_url, "--database-url", "--spawn-dev")?;
    let secret = crate::report::required(&args.jwt_secret, "--jwt-secret", "--spawn-dev")?;
    let pid = args
        .relay_pid
        .or_else(|| procstat::pid_listening_on(relay.port()));
    // The ramp at ≥ 100 connects/s, the churn, closing, and set-up.
    let bound = Duration::from_secs_f64(args.sessions as f64 / 100.0)
        + args.duration
        + Duration::from_secs(180);
    let report = tokio::time::timeout(bound, measure(&args, relay, &database_url, &secret, pid))
        .await
        .map_err(|_| anyhow::anyhow!("the run exceeded its time bound ({bound:?})"))??;
    if let Some((_cluster, child)) = dev {
        child.terminate(spawn::STOP).await?;
    }
    crate::report::conclude(
        &summary(&report),
        &report,
        &report.failures,
        args.out.as_deref(),
    )
}

async fn measure(
    args: &ChurnArgs,
    relay: SocketAddr,
    database_url: &str,
    secret: &str,
    pid: Option<u32>,
) -> anyhow::Result<ChurnReport> {
    let db = engagement_relay::db::connect(database_url)
        .await
        .map_err(|e| anyhow::anyhow!("--database-url: {e}"))?;
    let ids = load::create_users(&db, args.users).await?;
    let ttl = args.duration + Duration::from_secs(3600);
    let base = args.url.trim_end_matches('/');
    let mut users = Vec::with_capacity(ids.len());
    for id in &ids {
        let token = mint(secret, Some(*id), Role::Authenticated, ttl)?;
        users.push((
            format!("{base}/v1/events?access_token={token}"),
            id.to_string(),
        ));
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let churn = Churn::new(users, relay, args.sessions);
    let mut report = ChurnReport {
        params: serde_json::json!({
            "sessions": args.sessions, "users": args.users,
            "duration_s": args.duration.as_secs_f64(),
            "churn_concurrency": args.churn_concurrency, "watchers": args.watchers,
            "rate": args.rate, "seed": seed, "relay_env": args.relay_env,
        }),
        ..ChurnReport::default()
    };

    // Watchers first: they see every presence change.
    let service = mint(secret, None, Role::ServiceRole, ttl)?;
    let frames = Arc::new(AtomicU64::new(0));
    let watch_stop = StopToken::new();
    let mut watchers = Vec::with_capacity(args.watchers);
    for _ in 0..args.watchers {
        let spec = churn.spec(
            format!("{base}/v1/events?access_token={service}&presence=true"),
            None,
        );
        let (ws, _) = sessions::open(&spec.url, relay, &spec)
            .await
            .map_err(|e| anyhow::anyhow!("a presence watcher could not connect: {e}"))?;
        watchers.push(tokio::spawn(watch(ws, watch_stop.clone(), frames.clone())));
    }

    // Ramp: every held session, round-robin over the users.
    let sample = || pid.and_then(procstat::sample).unwrap_or_default();
    let before = sample();
    let started = Instant::now();
    let ramp = futures_util::stream::iter(0..args.sessions)
        .map(|i| {
            let churn = churn.clone();
            async move {
                let t = Instant::now();
                let result = churn.open_nth(i).await;
                (result, t.elapsed())
            }
        })
        .buffer_unordered(args.churn_concurrency)
        .fold(Tally::new(), |mut tally, (result, took)| async move {
            tally.record(&result, took);
            tally
        })
        .await;
    let after_ramp = sample();
    report.ramp = ramp.phase(
        started.elapsed().as_secs_f64(),
        after_ramp.cpu_seconds - before.cpu_seconds,
    );
    info!(held = churn.held(), ramp = ?started.elapsed(), "sessions held; churning");

    // Churn, with the optional trickle of inserts.
    let frames_before = frames.load(Ordering::Relaxed);
    let monitor = pid.map(procstat::monitor);
    let started = Instant::now();
    let deadline = started + args.duration;
    let loops: Vec<_> = (0..args.churn_concurrency)
        .map(|k| {
            tokio::spawn(churner(
                churn.clone(),
                deadline,
                seed.wrapping_add(k as u64),
            ))
        })
        .collect();
    let inserts = async {
        match args.rate > 0.0 {
            true => load::insert_load(&db, &ids, args.rate, args.duration).await,
            false => Ok(load::Sent::default()),
        }
    };
    let (sent, loops) = tokio::join!(inserts, futures_util::future::join_all(loops));
    let mut tally = Tally::new();
    for result in loops {
        tally.merge(result.context("a churn loop panicked")?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let end = sample();
    report.churn = tally.phase(seconds, end.cpu_seconds - after_ramp.cpu_seconds);
    report.presence_frames = frames.load(Ordering::Relaxed) - frames_before;
    report.events_sent = sent?.owner.len() as u64;
    report.events_received = churn.received();
    report.online_users = nodes::gauge(
        &crate::scrape(&args.metrics_url).await,
        "relay_presence_online_users",
    );
    report.relay = Memory {
        pid: pid.unwrap_or(0),
        rss_before_ramp_bytes: before.rss_bytes,
        rss_after_ramp_bytes: after_ramp.rss_bytes,
        rss_after_churn_bytes: end.rss_bytes,
        max_rss_churn_bytes: monitor.as_ref().map_or(0, |(rx, _)| rx.borrow().1),
    };
    drop(monitor);

    // Close everything (each close bounded), then read what presence wrote.
    report.held_at_end = churn.close_all().await;
    watch_stop.cancel();
    for w in watchers {
        if let Err(e) = w.await.unwrap_or_else(|e| Err(e.to_string())) {
            report.failures.push(e);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.last_seen_rows = db
        .query_one("SELECT count(*) FROM relay.presence", &[])
        .await
        .ok()
        .map(|row| row.get(0));
    report.relay_closed = churn.relay_closed();
    judge(&mut report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        churn: ChurnArgs,
    }

    fn parse(args: &[&str]) -> ChurnArgs {
        Cli::try_parse_from(std::iter::once("churn").chain(args.iter().copied()))
            .unwrap()
            .churn
    }

    #[test]
    fn defaults_are_the_issue_16_run() {
        let a = parse(&[]);
        assert_eq!(
            (a.sessions, a.users, a.churn_concurrency),
            (10_000, 10_000, 64)
        );
        assert_eq!(a.duration, Duration::from_secs(60));
        assert_eq!(a.descriptors(), 10_000 + 64 + 1 + HARNESS_RESERVE);
        a.check(20_000).unwrap();
        let a = parse(&[
            "--sessions=50",
            "--duration=3s",
            "--relay-env",
            "RELAY_PRESENCE__ENABLED=false",
        ]);
        assert_eq!(a.sessions, 50);
        assert_eq!(
            a.relay_env,
            [("RELAY_PRESENCE__ENABLED".into(), "false".into())]
        );
    }

    #[test]
    fn what_cannot_run_or_would_not_stop_is_refused() {
        let refused = |args: &[&str], files: u64, words: &str| {
            let e = parse(args).check(files).unwrap_err().to_string();
            assert!(e.contains(words), "{args:?}: {e}");
        };
        refused(&["--churn-concurrency=0"], 20_000, "--churn-concurrency");
        refused(&["--sessions=0"], 20_000, "--sessions");
        refused(&["--duration=2h"], 20_000, "--duration");
        refused(&["--url=ws://192.0.2.1:4000"], 20_000, "127.0.0.0/8");
        refused(&["--url=wss://127.0.0.1:4443"], 20_000, "ws:// only");
        refused(&["--sessions=19900"], 20_000, "descriptors");
        refused(&[], 1024, "ulimit");
    }
}
