//! `relay-soak`: opens many WebSocket sessions against engagement-relay, inserts a steady load,
//! and checks every delivery: latency (commit → receive, send → receive), loss, duplicates and
//! leaks, with the relay's CPU and memory. Exit status 1 on any leak, loss or duplicate, or a
//! p99 above `--slo-ms`.

mod churn;
mod curves;
mod drain;
mod histograms;
mod ingest;
mod load;
mod multi;
mod nodes;
mod plot;
mod procstat;
mod report;
mod sessions;
mod spawn;
mod wal;
mod workers;

/// The allocator of the engagement-relay binary (jemalloc, background purging), so that the
/// `__relay` child's RSS is the shipped binary's.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use engagement_relay::auth::{mint, Role};
use relay_testkit::demo::DEV_JWT_SECRET;
use tracing::info;

use crate::report::Report;
use crate::sessions::{Live, SessionSpec, StopToken};

#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    soak: SoakArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Connect churn: hold many sessions, close and open them at random, and measure the
    /// connects/s the relay sustains and its CPU and memory.
    Churn(churn::ChurnArgs),
    /// Draw the scaling curves (SVG) from folders of soak reports, as `scripts/curves`
    /// collects them.
    Curves(curves::CurvesArgs),
    /// Slot drain throughput: the relay vs pg_recvlogical on the same backlog.
    Drain(drain::DrainArgs),
    /// Batch ingest throughput through the API, commit → delivery latency, and unnest
    /// INSERT vs COPY BINARY.
    Ingest(ingest::IngestArgs),
    /// (internal) run the relay from RELAY_* variables; used by --spawn-dev.
    #[command(name = "__relay", hide = true)]
    Relay,
    /// (internal) a harness worker: sessions read from stdin; used by multi-process runs.
    #[command(name = "__worker", hide = true)]
    Worker,
}

/// A soak run.
#[derive(Args, Clone)]
pub(crate) struct SoakArgs {
    /// Relay WebSocket base URL (loopback only): `ws://` or `wss://` (then give `--ca`).
    #[arg(long, default_value = "ws://127.0.0.1:4000")]
    url: String,
    /// PEM file of the CA that signed the relay's certificate, trusted (alone) for `wss://`.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// With --spawn-dev: the relay serves wss:// with a certificate for 127.0.0.1 from a CA
    /// generated at start (written to a temporary folder; the sessions trust it).
    #[arg(long, requires = "spawn_dev")]
    tls: bool,
    /// Relay metrics URL.
    #[arg(long, default_value = "http://127.0.0.1:9898/metrics")]
    metrics_url: String,
    /// Database the relay streams from [env: RELAY_DATABASE_URL].
    #[arg(long, env = "RELAY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The relay's JWT secret [env: RELAY_JWT_SECRET].
    #[arg(long, env = "RELAY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// User sessions to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Distinct users (sessions are spread round-robin; several per user when connections > users).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Extra service-role sessions that receive every event.
    #[arg(long, default_value_t = 0)]
    firehose: usize,
    /// Events inserted per second (0: idle sessions only).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// How long the insert load runs.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Sessions opened per second during the ramp.
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// Longest wait for straggling deliveries after the load stops.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// After every session closed, wait this long and sample the relay's RSS again
    /// (`rss_settled_bytes`: is memory returned once the burst is over?). 0 skips it.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// p99 commit → receive latency above this fails the run.
    #[arg(long, default_value_t = 500.0)]
    slo_ms: f64,
    /// Check correctness only (leaks, loss, duplicates), not the latency SLO.
    #[arg(long)]
    no_slo: bool,
    /// Pid of the relay (default: found from the URL's port, or the spawned child).
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Start a private PostgreSQL and the relay first (needs PostgreSQL server binaries).
    #[arg(long)]
    spawn_dev: bool,
    /// Extra server setting for the --spawn-dev cluster, `name=value` (repeatable), e.g.
    /// `fsync=off` to take the disk's flush latency out of commit → receive.
    #[arg(long = "pg-setting", value_parser = parse_setting)]
    pg_settings: Vec<(String, String)>,
    /// Spawn a private PostgreSQL, a private `nats-server -js` and N relay nodes in cluster
    /// mode (same slot and configuration), and spread the sessions over them.
    #[arg(long, conflicts_with_all = ["spawn_dev", "targets"], value_parser = clap::value_parser!(u16).range(1..=16))]
    nodes: Option<u16>,
    /// A relay node's WebSocket base URL (repeatable, loopback only): spread the sessions over
    /// these running nodes instead of `--url`.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// The metrics URL of each `--target`, in the same order (repeatable; optional).
    #[arg(long = "target-metrics")]
    target_metrics: Vec<String>,
    /// Harness worker processes holding the sessions (0: as many as needed, each under
    /// 15,000 sockets; multi-node runs and runs above 15,000 sessions always use workers).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// With --nodes: SIGKILL the publisher node this long into the insert load, and measure
    /// the time until another node publishes (sessions resume with `since` on other nodes).
    #[arg(long, requires = "nodes", value_parser = humantime::parse_duration)]
    kill_publisher_after: Option<Duration>,
    /// Sessions a node drops resume with `since` on another node (multi-node runs).
    #[arg(long)]
    resume: bool,
    /// Sample the WAL the slot retains once a second during the load (`--slot`).
    #[arg(long)]
    sample_wal: bool,
    /// The relay's replication slot (for --sample-wal; spawned relays use `relay_soak`).
    #[arg(long, default_value = "relay_soak")]
    slot: String,
    /// Extra variable for spawned relays, `NAME=value` (repeatable), e.g.
    /// `RELAY_REPLAY__WINDOW=1h`.
    #[arg(long = "relay-env", value_parser = parse_setting)]
    relay_env: Vec<(String, String)>,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Draw the latency distribution (SVG) here.
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tokio_postgres=warn".into()),
        )
        .with_writer(std::io::stderr);
    if matches!(cli.command, Some(Command::Relay)) {
        // The parent (`relay_testkit::RelayProcess`) reads the JSON log: `relay listening`.
        logging.json().init();
    } else {
        logging.init();
    }
    engagement_relay::limits::raise_nofile_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(&e.into()),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Relay) => spawn::serve_relay().await.map(|()| true),
            Some(Command::Worker) => workers::serve_worker().await.map(|()| true),
            Some(Command::Churn(args)) => churn::run(args).await,
            Some(Command::Curves(args)) => curves::run(args).map(|()| true),
            Some(Command::Drain(args)) => drain::run(args).await.map(|()| true),
            Some(Command::Ingest(args)) => ingest::run(args).await.map(|()| true),
            None => soak(cli.soak).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => fail(&e),
    }
}

pub(crate) fn parse_setting(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not name=value"))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("relay-soak: {e:#}");
    ExitCode::from(2)
}

/// Runs a soak; `Ok(passed)`.
async fn soak(mut args: SoakArgs) -> anyhow::Result<bool> {
    if args.users == 0 || args.connections == 0 && args.firehose == 0 {
        bail!("--users and --connections (or --firehose) must be at least 1");
    }
    if args.nodes.is_some()
        || !args.targets.is_empty()
        || args.workers > 0
        || args.connections + args.firehose > workers::MAX_PER_WORKER
    {
        return multi::soak(args).await;
    }
    let mut _cluster = None;
    let mut child = None;
    let mut _certs = None;
    if args.spawn_dev {
        let tls = if args.tls {
            let certs = spawn::TlsFiles::generate()?;
            args.ca = Some(certs.ca.clone());
            Some(certs)
        } else {
            None
        };
        let extra = tls.as_ref().map(spawn::TlsFiles::env).unwrap_or_default();
        let mut extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        extra.extend(args.relay_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let https = match &args.ca {
            Some(ca) if args.tls => Some(https_client(ca)?),
            _ => None,
        };
        let (cluster, relay) = spawn::dev(args.pg_settings.clone(), &extra, https).await?;
        let url = cluster.url("postgres");
        let scheme = if args.tls { "wss" } else { "ws" };
        args.url = format!("{scheme}://{}", relay.addr);
        _certs = tls;
        args.metrics_url = format!("http://{}/metrics", relay.metrics_addr);
        args.database_url = Some(url);
        args.jwt_secret = Some(DEV_JWT_SECRET.into());
        args.relay_pid = Some(relay.pid());
        child = Some(relay);
        _cluster = Some(cluster);
    }
    let relay = loopback_target(&args.url)?;
    let tls = match (&args.ca, args.url.starts_with("wss://")) {
        (Some(ca), true) => Some(
            relay_testkit::tls::client_config_from_pem(ca)
                .with_context(|| format!("--ca {}", ca.display()))?,
        ),
        (None, true) => {
            bail!("--url wss://… needs --ca <pem> (the CA that signed the relay's certificate)")
        }
        (_, false) => None,
    };
    let database_url =
        crate::report::required(&args.database_url, "--database-url", "--spawn-dev")?;
    let secret = crate::report::required(&args.jwt_secret, "--jwt-secret", "--spawn-dev")?;
    let pid = args
        .relay_pid
        .or_else(|| procstat::pid_listening_on(relay.port()));

    let bound = Duration::from_secs_f64(args.connections as f64 / args.connect_rate.max(1.0))
        + args.duration
        + args.drain
        + args.settle
        + Duration::from_secs(180);
    let report = tokio::time::timeout(bound, run(&args, relay, tls, &database_url, &secret, pid))
        .await
        .map_err(|_| anyhow::anyhow!("the run exceeded its time bound ({bound:?})"))??;
    if let Some(child) = child {
        child.terminate(spawn::STOP).await?;
    }
    crate::report::conclude(
        &report::summary(&report),
        &report,
        &report.failures,
        args.out.as_deref(),
    )
}

/// The relay's address, refusing anything outside 127.0.0.0/8.
pub(crate) fn loopback_target(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .context("--url must start with ws:// or wss://")?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = host_port
        .parse()
        .with_context(|| format!("--url: `{host_port}` is not an IPv4 address and port"))?;
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Ok(addr),
        _ => bail!("--url: load is only sent to 127.0.0.0/8, not {}", addr.ip()),
    }
}

async fn run(
    args: &SoakArgs,
    relay: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    database_url: &str,
    secret: &str,
    pid: Option<u32>,
) -> anyhow::Result<Report> {
    let db = engagement_relay::db::connect(database_url)
        .await
        .map_err(|e| anyhow::anyhow!("--database-url: {e}"))?;
    let users = load::create_users(&db, args.users).await?;
    let ttl = args.duration + Duration::from_secs(3600);
    let base = args.url.trim_end_matches('/');
    let mut specs = Vec::with_capacity(args.connections + args.firehose);
    for i in 0..args.connections {
        let user = i % users.len();
        let token = mint(secret, Some(users[user]), Role::Authenticated, ttl)?;
        specs.push(SessionSpec {
            user: Some(user),
            user_id: Some(users[user].to_string()),
            url: format!("{base}/v1/events?access_token={token}"),
            tls: tls.clone(),
            relay,
            source: sessions::source_address(i),
            resume_to: Vec::new(),
        });
    }
    let service = mint(secret, None, Role::ServiceRole, ttl)?;
    for i in 0..args.firehose {
        specs.push(SessionSpec {
            user: None,
            user_id: None,
            url: format!("{base}/v1/events?access_token={service}"),
            tls: tls.clone(),
            relay,
            source: sessions::source_address(args.connections + i),
            resume_to: Vec::new(),
        });
    }

    let monitor = pid.map(procstat::monitor);
    let before = pid.and_then(procstat::sample).unwrap_or_default();
    let metrics_before = scrape(&args.metrics_url).await;

    // Ramp.
    let live = Arc::new(Live::default());
    let stop = StopToken::new();
    let total = specs.len();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    let users_of: Vec<Option<usize>> = specs.iter().map(|s| s.user).collect();
    for (i, spec) in specs.into_iter().enumerate() {
        let due = Duration::from_secs_f64(i as f64 / args.connect_rate.max(1.0));
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        tasks.push(tokio::spawn(sessions::run(
            spec,
            live.clone(),
            stop.clone(),
        )));
    }
    let ramp_deadline = Instant::now() + Duration::from_secs(120);
    while live.ready.load(Ordering::Relaxed) + live.failed.load(Ordering::Relaxed) < total {
        if Instant::now() > ramp_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = live.ready.load(Ordering::Relaxed);
    let ramp = started.elapsed();
    let ramp_end = pid.and_then(procstat::sample).unwrap_or_default();
    info!(connected, total, ramp = ?ramp, "sessions connected");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_ramp = pid.and_then(procstat::sample).unwrap_or_default();
    let steady_started = Instant::now();

    // Hold: the insert load.
    info!(rate = args.rate, duration = ?args.duration, "inserting");
    let sent = load::insert_load(&db, &users, args.rate, args.duration).await?;
    let mut per_user = vec![0u64; users.len()];
    for &owner in &sent.owner {
        per_user[owner as usize] += 1;
    }
    let expected: u64 = users_of
        .iter()
        .map(|u| u.map_or(sent.owner.len() as u64, |u| per_user[u]))
        .sum();

    // Drain: wait for stragglers.
    let drain_deadline = Instant::now() + args.drain;
    while live.received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let steady_end = pid.and_then(procstat::sample).unwrap_or_default();
    let steady_seconds = steady_started.elapsed().as_secs_f64();
    stop.cancel();
    let mut outcomes = Vec::with_capacity(total);
    for task in tasks {
        outcomes.push(task.await.unwrap_or_default());
    }
    let end = pid.and_then(procstat::sample).unwrap_or_default();
    let metrics_after = scrape(&args.metrics_url).await;
    let settled = if args.settle.is_zero() {
        Default::default()
    } else {
        info!(settle = ?args.settle, "sessions closed; waiting before the last RSS sample");
        tokio::time::sleep(args.settle).await;
        pid.and_then(procstat::sample).unwrap_or_default()
    };

    let mut report = Report::default();
    report::account(&mut report, &sent, &outcomes, &users_of);
    report.relay.pid = pid.unwrap_or(0);
    report.steady = report::Steady::between(
        &[after_ramp],
        &[steady_end],
        steady_seconds,
        (report.sent, report.delivered),
        &[&metrics_after],
    );
    report.ramp = report::Ramp {
        tls: tls.is_some(),
        connected,
        seconds: ramp.as_secs_f64(),
        per_second: connected as f64 / ramp.as_secs_f64().max(1e-9),
        relay_cpu_seconds: (ramp_end.cpu_seconds - before.cpu_seconds).max(0.0),
    };
    report.relay.cpu_seconds = (end.cpu_seconds - before.cpu_seconds).max(0.0);
    report.relay.max_rss_bytes = monitor.as_ref().map_or(0, |(rx, _)| rx.borrow().1);
    report.relay.rss_before_ramp_bytes = before.rss_bytes;
    report.relay.rss_after_ramp_bytes = after_ramp.rss_bytes;
    report.relay.rss_settled_bytes = settled.rss_bytes;
    report.relay.rss_per_connection_bytes =
        after_ramp.rss_bytes.saturating_sub(before.rss_bytes) / connected.max(1) as u64;
    report.relay_metrics = report::RelayMetrics::between(&metrics_before, &metrics_after);
    report.params = serde_json::json!({
        "connections": args.connections, "users": args.users, "firehose": args.firehose,
        "rate": args.rate, "duration_s": args.duration.as_secs_f64(),
        "settle_s": args.settle.as_secs_f64(),
        "connect_rate": args.connect_rate, "slo_ms": args.slo_ms,
        "pg_settings": args.pg_settings,
    });
    report::judge(&mut report, &sent, args.slo_ms, args.no_slo);
    if let Some(path) = &args.svg {
        let title = format!(
            "relay-soak: {} sessions, {} users, {} events/s for {:?}",
            args.connections, args.users, args.rate, args.duration
        );
        plot::draw(path, &report::latencies_ms(&outcomes), args.slo_ms, &title)?;
    }
    Ok(report)
}

/// An HTTP client trusting only the CA in the PEM file `ca` (the spawned relay's `/readyz`).
fn https_client(ca: &std::path::Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .build()?)
}

pub(crate) async fn scrape(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}
