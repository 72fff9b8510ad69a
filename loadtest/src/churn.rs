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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use engagement_relay::auth::{mint, Role};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_testkit::demo::DEV_JWT_SECRET;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tracing::info;

use crate::report::{self, Quantiles};
use crate::sessions::{self, Live, SessionOutcome, SessionSpec, StopToken, Ws};
use crate::{load, nodes, procstat, spawn};

/// Longest a connect may take, socket to `ready`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause of a churn loop after a failed connect, so a refusing relay is not spun on.
const FAILURE_PAUSE: Duration = Duration::from_millis(50);
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
    /// Database the relay streams from [env: RELAY_DATABASE_URL].
    #[arg(long, env = "RELAY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The relay's JWT secret [env: RELAY_JWT_SECRET].
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

/// Connects of one phase (ramp or churn).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Phase {
    /// Wall time, seconds.
    pub seconds: f64,
    /// Sessions that reached `ready`.
    pub connects: u64,
    /// Connects that failed.
    pub failures: u64,
    /// Those by error (its first 80 characters).
    pub failure_kinds: BTreeMap<String, u64>,
    /// `connects / seconds`.
    pub per_second: f64,
    /// Socket created → `ready` read, of the connects that succeeded.
    pub connect_ms: Quantiles,
    /// The relay's CPU seconds over the phase (0 when its pid is unknown).
    pub relay_cpu_seconds: f64,
    /// `relay_cpu_seconds` per 1,000 connects (in the churn each comes with one close).
    pub relay_cpu_s_per_1000_connects: f64,
}

/// The relay's memory.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Memory {
    /// Pid measured (0 when unknown).
    pub pid: u32,
    /// RSS before the first session, bytes.
    pub rss_before_ramp_bytes: u64,
    /// RSS with every session held, before the churn, bytes.
    pub rss_after_ramp_bytes: u64,
    /// RSS at the end of the churn, bytes.
    pub rss_after_churn_bytes: u64,
    /// Peak RSS during the churn (sampled every 250 ms), bytes.
    pub max_rss_churn_bytes: u64,
}

/// The report of a churn run (`--out`).
#[derive(Debug, Default, Serialize)]
pub struct ChurnReport {
    /// The run's parameters (with the seed used).
    pub params: serde_json::Value,
    /// Opening the held sessions.
    pub ramp: Phase,
    /// The churn.
    pub churn: Phase,
    /// Sessions held when the churn ended.
    pub held_at_end: usize,
    /// Held sessions the relay closed (by close code, `dropped` without one).
    pub relay_closed: BTreeMap<String, u64>,
    /// `presence` frames the watchers received during the churn.
    pub presence_frames: u64,
    /// `relay_presence_online_users` at the end of the churn (`None`: no scrape).
    pub online_users: Option<f64>,
    /// Rows in `relay.presence` (`last_seen`) 2 s after every session closed.
    pub last_seen_rows: Option<i64>,
    /// Events inserted during the churn (`--rate`), and received by held sessions.
    pub events_sent: u64,
    /// Events received by the held sessions.
    pub events_received: u64,
    /// The relay's memory.
    pub relay: Memory,
    /// Why the run failed (empty when it passed).
    pub failures: Vec<String>,
}

/// One side's counts of connects: successes with their time, failures by kind.
struct Tally {
    connects: u64,
    failures: BTreeMap<String, u64>,
    micros: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            connects: 0,
            failures: BTreeMap::new(),
            micros: report::histogram(),
        }
    }

    fn record(&mut self, result: &Result<(), String>, took: Duration) {
        match result {
            Ok(()) => {
                self.connects += 1;
                let _ = self.micros.record((took.as_micros() as u64).max(1));
            }
            Err(e) => *self.failures.entry(report::error_kind(e)).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.connects += other.connects;
        for (kind, n) in other.failures {
            *self.failures.entry(kind).or_default() += n;
        }
        let _ = self.micros.add(&other.micros);
    }

    fn phase(&self, seconds: f64, relay_cpu_seconds: f64) -> Phase {
        Phase {
            seconds,
            connects: self.connects,
            failures: self.failures.values().sum(),
            failure_kinds: self.failures.clone(),
            per_second: self.connects as f64 / seconds.max(1e-9),
            connect_ms: report::quantiles(&self.micros),
            relay_cpu_seconds,
            relay_cpu_s_per_1000_connects: relay_cpu_seconds * 1000.0 / self.connects.max(1) as f64,
        }
    }
}

/// A held session: its stop switch and the task reading it (which closes it when stopped).
struct Held {
    stop: StopToken,
    task: JoinHandle<()>,
}

impl Held {
    /// Closes the session (close handshake, at most [`CLOSE_TIMEOUT`]) and waits for it.
    async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The held sessions and the connects in flight that will join them.
struct Pool {
    sessions: Vec<Held>,
    opening: usize,
}

/// What the ramp and the churn loops share.
struct Churn {
    /// Per user: the `/v1/events` URL with the user's token, and the user's id.
    users: Vec<(String, String)>,
    relay: SocketAddr,
    /// Sessions held, and connects in flight; the churn keeps `target` of both together.
    held: Mutex<Pool>,
    target: usize,
    /// Events received by held sessions (and those the relay dropped, in `failed`).
    live: Arc<Live>,
    /// Parent of every held session's stop switch.
    all: StopToken,
    next_source: AtomicUsize,
    relay_closed: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Churn {
    fn spec(&self, url: String, user: Option<(usize, String)>) -> SessionSpec {
        let i = self.next_source.fetch_add(1, Ordering::Relaxed);
        SessionSpec {
            user: user.as_ref().map(|u| u.0),
            user_id: user.map(|u| u.1),
            url,
            tls: None,
            relay: self.relay,
            source: sessions::source_address(i),
            resume_to: Vec::new(),
        }
    }

    /// Opens a session of `user` (at most [`CONNECT_TIMEOUT`]) and holds it. The caller has
    /// counted it in `opening`.
    async fn open(self: &Arc<Self>, user: usize) -> Result<(), String> {
        let result = self.connect(user).await;
        let mut pool = lock(&self.held);
        pool.opening -= 1;
        let held = result?;
        pool.sessions.push(held);
        Ok(())
    }

    async fn connect(self: &Arc<Self>, user: usize) -> Result<Held, String> {
        let (url, id) = &self.users[user];
        let spec = self.spec(url.clone(), Some((user, id.clone())));
        let (ws, _) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            sessions::open(&spec.url, spec.relay, &spec),
        )
        .await
        .map_err(|_| "timed out before ready".to_string())??;
        let stop = self.all.child_token();
        let task = tokio::spawn(hold(ws, spec, self.clone(), stop.clone()));
        Ok(Held { stop, task })
    }
}

/// Reads a held session until `stop`, then closes it; counts a close by the relay.
async fn hold(mut ws: Ws, spec: SessionSpec, churn: Arc<Churn>, stop: StopToken) {
    let mut out = SessionOutcome::default();
    let mut cursor = None;
    if sessions::serve(&mut ws, &mut out, &spec, &churn.live, &stop, &mut cursor).await {
        let code = out.close_code.map_or("dropped".into(), |c| c.to_string());
        *lock(&churn.relay_closed).entry(code).or_default() += 1;
        return;
    }
    close(&mut ws).await;
}

/// Sends a close frame and reads until the relay closes the connection (at most
/// [`CLOSE_TIMEOUT`]).
async fn close(ws: &mut Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// A service-role `presence=true` session: counts `presence` frames into `frames` until
/// `stop`. `Err` when the relay closed it first.
async fn watch(mut ws: Ws, stop: StopToken, frames: Arc<AtomicU64>) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            msg = ws.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                if serde_json::from_str::<Kind>(&t).is_ok_and(|k| k.kind == "presence") {
                    frames.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("watcher closed by the relay: {frame:?}"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("watcher: {e}")),
            None => return Err("watcher dropped by the relay".into()),
        }
    }
    close(&mut ws).await;
    Ok(())
}

/// One churn loop until `deadline`: close a random held session (while `target` are held or
/// being opened), open one for a random user.
async fn churner(churn: Arc<Churn>, deadline: Instant, seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::new();
    while Instant::now() < deadline {
        let victim = {
            let mut pool = lock(&churn.held);
            let full = pool.sessions.len() + pool.opening >= churn.target;
            pool.opening += 1;
            (full && !pool.sessions.is_empty()).then(|| {
                let i = rng.random_range(0..pool.sessions.len());
                pool.sessions.swap_remove(i)
            })
        };
        if let Some(victim) = victim {
            victim.close().await;
        }
        let user = rng.random_range(0..churn.users.len());
        let started = Instant::now();
        let result = churn.open(user).await;
        tally.record(&result, started.elapsed());
        if result.is_err() {
            tokio::time::sleep(FAILURE_PAUSE).await;
        }
    }
    tally
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
    let database_url = args
        .database_url
        .clone()
        .context("--database-url (or --spawn-dev) is required")?;
    let secret = args
        .jwt_secret
        .clone()
        .context("--jwt-secret (or --spawn-dev) is required")?;
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
    println!("{}", summary(&report));
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for failure in &report.failures {
        eprintln!("FAIL: {failure}");
    }
    Ok(report.failures.is_empty())
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
    let churn = Arc::new(Churn {
        users,
        relay,
        held: Mutex::new(Pool {
            sessions: Vec::with_capacity(args.sessions + args.churn_concurrency),
            opening: 0,
        }),
        target: args.sessions,
        live: Arc::new(Live::default()),
        all: StopToken::new(),
        next_source: AtomicUsize::new(0),
        relay_closed: Mutex::new(BTreeMap::new()),
    });
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
                lock(&churn.held).opening += 1;
                let result = churn.open(i % churn.users.len()).await;
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
    info!(held = lock(&churn.held).sessions.len(), ramp = ?started.elapsed(), "sessions held; churning");

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
    report.events_received = churn.live.received.load(Ordering::Relaxed);
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
    let held = std::mem::take(&mut lock(&churn.held).sessions);
    report.held_at_end = held.len();
    churn.all.cancel();
    for h in held {
        h.close().await;
    }
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
    report.relay_closed = lock(&churn.relay_closed).clone();
    judge(&mut report);
    Ok(report)
}

/// Fills `failures`: no connect in the churn, any failed connect, any held session the relay
/// closed.
fn judge(r: &mut ChurnReport) {
    if r.churn.connects == 0 {
        r.failures
            .push("no session connected during the churn".into());
    }
    let failed = r.ramp.failures + r.churn.failures;
    if failed > 0 {
        r.failures.push(format!("{failed} connects failed"));
    }
    let closed: u64 = r.relay_closed.values().sum();
    if closed > 0 {
        r.failures.push(format!(
            "the relay closed {closed} held sessions: {:?}",
            r.relay_closed
        ));
    }
}

/// The human summary printed at the end of a run.
pub fn summary(r: &ChurnReport) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut s = String::new();
    for (name, p) in [("ramp ", &r.ramp), ("churn", &r.churn)] {
        s += &format!(
            "{name}  {} connects in {:.2} s = {:.0}/s, {} failed; connect p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; relay cpu {:.2} s ({:.3} s per 1000 connects)\n",
            p.connects, p.seconds, p.per_second, p.failures, p.connect_ms.p50, p.connect_ms.p99,
            p.connect_ms.max, p.relay_cpu_seconds, p.relay_cpu_s_per_1000_connects
        );
        for (kind, n) in &p.failure_kinds {
            s += &format!("  {n:>8} × {kind}\n");
        }
    }
    s += &format!(
        "held at end            {} (closed by the relay: {:?})\n",
        r.held_at_end, r.relay_closed
    );
    s += &format!(
        "presence               {} frames to watchers during the churn, online users {:?} at its end, {:?} last_seen rows\n",
        r.presence_frames, r.online_users, r.last_seen_rows
    );
    if r.events_sent > 0 {
        s += &format!(
            "events                 {} inserted, {} received by held sessions\n",
            r.events_sent, r.events_received
        );
    }
    s += &format!(
        "relay process          pid {}, rss {:.1} MiB before the ramp, {:.1} after it, {:.1} after the churn, max {:.1} during it\n",
        r.relay.pid,
        mib(r.relay.rss_before_ramp_bytes),
        mib(r.relay.rss_after_ramp_bytes),
        mib(r.relay.rss_after_churn_bytes),
        mib(r.relay.max_rss_churn_bytes)
    );
    s
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
        refused(&["--url=ws://10.0.0.1:4000"], 20_000, "127.0.0.0/8");
        refused(&["--url=wss://127.0.0.1:4443"], 20_000, "ws:// only");
        refused(&["--sessions=19900"], 20_000, "descriptors");
        refused(&[], 1024, "ulimit");
    }

    #[test]
    fn a_phase_divides_by_its_own_time_and_connects() {
        let mut a = Tally::new();
        a.record(&Ok(()), Duration::from_millis(2));
        a.record(&Err("connect: refused".into()), Duration::ZERO);
        let mut b = Tally::new();
        b.record(&Ok(()), Duration::from_millis(4));
        b.record(&Err("connect: refused".into()), Duration::ZERO);
        a.merge(b);
        let p = a.phase(0.5, 0.01);
        assert_eq!((p.connects, p.failures), (2, 2));
        assert_eq!(p.failure_kinds["connect: refused"], 2);
        assert!((p.per_second - 4.0).abs() < 1e-9);
        assert!((p.relay_cpu_s_per_1000_connects - 5.0).abs() < 1e-9);
        assert!(
            (p.connect_ms.p50 - 2.0).abs() < 0.01,
            "{}",
            p.connect_ms.p50
        );
        assert!((p.connect_ms.max - 4.0).abs() < 0.01);
    }
}
