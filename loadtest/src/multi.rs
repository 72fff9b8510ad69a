//! A run over several nodes and/or harness worker processes (`--nodes`, `--target`,
//! `--workers`, or more sessions than one process can hold): the sessions live in worker
//! processes, spread round-robin over the nodes and source addresses; every worker's outcomes
//! come back to this process, which accounts them exactly as a single-process run does. Each
//! node's CPU and RSS are measured apart, and the relays' histograms are summed bucket by
//! bucket.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::nodes::{self, Node, Spawned, Takeover};
use crate::report::{self, NodeUsage, Report};
use crate::workers::{self, Target, WorkerSpec, Workers};
use crate::{load, procstat, spawn, wal, SoakArgs};
use relay_testkit::demo::DEV_JWT_SECRET;

/// A multi-process run: sets up the nodes (`--nodes`: PostgreSQL, NATS and the cluster;
/// `--spawn-dev`: PostgreSQL and one relay; `--target`s; else `--url`), runs, prints the
/// summary and writes the report; `Ok(passed)`.
pub async fn soak(mut args: SoakArgs) -> anyhow::Result<bool> {
    if args.tls || args.url.starts_with("wss://") {
        anyhow::bail!("multi-process runs (--nodes, --target, --workers, over 15,000 sessions) speak ws:// only");
    }
    let mut _pg = None;
    let mut single = None;
    let mut spawned = None;
    let nodes: Vec<Node> = if let Some(n) = args.nodes {
        let pg = spawn::start_cluster(args.pg_settings.clone()).await?;
        let url = pg.url("postgres");
        let (s, nodes) = nodes::spawn_cluster(usize::from(n), &url, &args.relay_env).await?;
        args.database_url = Some(url);
        args.jwt_secret = Some(DEV_JWT_SECRET.into());
        spawned = Some(s);
        _pg = Some(pg);
        nodes
    } else if args.spawn_dev {
        let extra: Vec<(&str, &str)> = args
            .relay_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (pg, relay) = spawn::dev(args.pg_settings.clone(), &extra, None).await?;
        let url = pg.url("postgres");
        let node = Node {
            url: format!("ws://{}", relay.addr),
            addr: relay.addr,
            metrics_url: Some(format!("http://{}/metrics", relay.metrics_addr)),
            pid: Some(relay.pid()),
        };
        args.database_url = Some(url);
        args.jwt_secret = Some(DEV_JWT_SECRET.into());
        single = Some(relay);
        _pg = Some(pg);
        vec![node]
    } else {
        let urls = if args.targets.is_empty() {
            vec![args.url.clone()]
        } else {
            args.targets.clone()
        };
        let mut nodes = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let addr = crate::loopback_target(url)?;
            let metrics_url = if args.targets.is_empty() {
                Some(args.metrics_url.clone())
            } else {
                args.target_metrics.get(i).cloned()
            };
            let pid = if args.targets.is_empty() {
                args.relay_pid
            } else {
                None
            };
            nodes.push(Node {
                url: url.trim_end_matches('/').to_string(),
                addr,
                metrics_url,
                pid,
            });
        }
        nodes
    };
    let database_url =
        crate::report::required(&args.database_url, "--database-url", "--spawn-dev, --nodes")?;
    let secret = crate::report::required(&args.jwt_secret, "--jwt-secret", "--spawn-dev, --nodes")?;
    let total = args.connections + args.firehose;
    let bound = Duration::from_secs_f64(total as f64 / args.connect_rate.max(1.0))
        + args.duration
        + args.drain
        + Duration::from_secs(300);
    let (report, spawned) =
        tokio::time::timeout(bound, run(&args, &nodes, spawned, &database_url, &secret))
            .await
            .map_err(|_| anyhow::anyhow!("the run exceeded its time bound ({bound:?})"))??;
    if let Some(relay) = single {
        relay.terminate(spawn::STOP).await?;
    }
    if let Some(spawned) = spawned {
        for relay in spawned.relays.into_iter().flatten() {
            relay.terminate(spawn::STOP).await?;
        }
    }
    crate::report::conclude(
        &report::summary(&report),
        &report,
        &report.failures,
        args.out.as_deref(),
    )
}

/// Runs the sessions of `args` over `nodes` in worker processes, the insert load here, and
/// (with `--kill-publisher-after`) SIGKILLs the publisher among `spawned` under load.
pub async fn run(
    args: &SoakArgs,
    nodes: &[Node],
    spawned: Option<Spawned>,
    database_url: &str,
    secret: &str,
) -> anyhow::Result<(Report, Option<Spawned>)> {
    let db = engagement_relay::db::connect(database_url)
        .await
        .map_err(|e| anyhow::anyhow!("--database-url: {e}"))?;
    let users = load::create_users(&db, args.users).await?;
    let plan = workers::plan(args.connections, args.firehose, &users, nodes.len());
    let users_of: Vec<Option<usize>> = plan.iter().map(|s| s.user).collect();
    let node_of: Vec<usize> = plan.iter().map(|s| s.target).collect();
    let total = plan.len();
    let template = WorkerSpec {
        secret: secret.to_string(),
        ttl_s: (args.duration + Duration::from_secs(3600)).as_secs(),
        connect_rate: args.connect_rate,
        targets: nodes
            .iter()
            .map(|n| Target {
                base: n.url.clone(),
                addr: n.addr,
            })
            .collect(),
        resume: args.kill_publisher_after.is_some() || args.resume,
        sessions: Vec::new(),
    };
    let n_workers = workers::count_for(total, args.workers);

    let pids: Vec<Option<u32>> = nodes
        .iter()
        .map(|n| n.pid.or_else(|| procstat::pid_listening_on(n.addr.port())))
        .collect();
    let monitors: Vec<_> = pids.iter().map(|p| p.map(procstat::monitor)).collect();
    let sample_all = || -> Vec<procstat::Sample> {
        pids.iter()
            .map(|p| p.and_then(procstat::sample).unwrap_or_default())
            .collect()
    };
    let before = sample_all();
    let metrics_before = scrape_all(nodes).await;

    info!(
        sessions = total,
        workers = n_workers,
        nodes = nodes.len(),
        "ramp"
    );
    let started = Instant::now();
    let pool = Workers::start(n_workers, plan, &template).await?;
    let ramp_bound = Duration::from_secs_f64(total as f64 / args.connect_rate.max(1.0))
        + Duration::from_secs(120);
    while pool.ready() + pool.failed() < total && started.elapsed() < ramp_bound {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected = pool.ready();
    let ramp = started.elapsed();
    let ramp_end = sample_all();
    info!(connected, total, ramp = ?ramp, "sessions connected");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_ramp = sample_all();
    let steady_started = Instant::now();
    let harness_rss: u64 = pool
        .pids()
        .into_iter()
        .filter_map(procstat::sample)
        .map(|s| s.rss_bytes)
        .sum();

    let wal_stop = CancellationToken::new();
    let wal = args.sample_wal.then(|| {
        tokio::spawn(wal::sample(
            database_url.to_string(),
            args.slot.clone(),
            wal_stop.clone(),
        ))
    });
    let (killer, spawned) = match (args.kill_publisher_after, spawned) {
        (Some(after), Some(mut spawned)) => {
            let nodes = nodes.to_vec();
            let killer = tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let t = nodes::kill_publisher(&mut spawned, &nodes, Duration::from_secs(60)).await;
                (t, spawned)
            });
            (Some(killer), None)
        }
        (after, spawned) => {
            if after.is_some() {
                tracing::warn!("--kill-publisher-after needs --nodes (spawned nodes); ignored");
            }
            (None, spawned)
        }
    };
    let measures = Measures {
        connected,
        ramp,
        before,
        ramp_end,
        after_ramp,
        steady_started,
        harness_rss,
        metrics_before,
        monitors,
        pids,
        n_workers,
    };
    let load = Load {
        db,
        users,
        users_of,
        node_of,
    };
    finish(
        args, nodes, pool, load, spawned, killer, wal, wal_stop, measures,
    )
    .await
}

/// The load's side: the database, the users, and each session's user and node.
struct Load {
    db: tokio_postgres::Client,
    users: Vec<uuid::Uuid>,
    users_of: Vec<Option<usize>>,
    node_of: Vec<usize>,
}

type Monitor = (
    tokio::sync::watch::Receiver<(procstat::Sample, u64)>,
    tokio::task::JoinHandle<()>,
);

/// What was measured before the load.
struct Measures {
    connected: usize,
    ramp: Duration,
    before: Vec<procstat::Sample>,
    ramp_end: Vec<procstat::Sample>,
    after_ramp: Vec<procstat::Sample>,
    /// When the insert load started (the steady phase).
    steady_started: Instant,
    harness_rss: u64,
    metrics_before: Vec<String>,
    monitors: Vec<Option<Monitor>>,
    pids: Vec<Option<u32>>,
    n_workers: usize,
}

type Killer = tokio::task::JoinHandle<(anyhow::Result<Takeover>, Spawned)>;

/// The load, the drain, the workers' outcomes, and the report.
#[allow(clippy::too_many_arguments)]
async fn finish(
    args: &SoakArgs,
    nodes: &[Node],
    pool: Workers,
    load: Load,
    spawned: Option<Spawned>,
    killer: Option<Killer>,
    wal: Option<tokio::task::JoinHandle<Option<wal::WalReport>>>,
    wal_stop: CancellationToken,
    m: Measures,
) -> anyhow::Result<(Report, Option<Spawned>)> {
    let Load {
        db,
        users,
        users_of,
        node_of,
    } = load;
    info!(rate = args.rate, duration = ?args.duration, "inserting");
    let sent = load::insert_load(&db, &users, args.rate, args.duration).await?;
    wal_stop.cancel();
    let (takeover, spawned) = match killer {
        Some(k) => {
            let (t, s) = k.await.context("the publisher killer task")?;
            (Some(t?), Some(s))
        }
        None => (None, spawned),
    };
    let mut per_user = vec![0u64; users.len()];
    for &owner in &sent.owner {
        per_user[owner as usize] += 1;
    }
    let expected: u64 = users_of
        .iter()
        .map(|u| u.map_or(sent.owner.len() as u64, |u| per_user[u]))
        .sum();
    let drain_deadline = Instant::now() + args.drain;
    while pool.received() < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let steady_end: Vec<procstat::Sample> = m
        .pids
        .iter()
        .map(|p| p.and_then(procstat::sample).unwrap_or_default())
        .collect();
    let steady_seconds = m.steady_started.elapsed().as_secs_f64();
    let outcomes = pool.stop().await;
    let end: Vec<procstat::Sample> = m
        .pids
        .iter()
        .map(|p| p.and_then(procstat::sample).unwrap_or_default())
        .collect();
    let metrics_after = scrape_all(nodes).await;

    let mut report = Report::default();
    report::account(&mut report, &sent, &outcomes, &users_of);
    report.steady = report::Steady::between(
        &m.after_ramp,
        &steady_end,
        steady_seconds,
        (report.sent, report.delivered),
        &metrics_after.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    report.ramp = report::Ramp {
        tls: false,
        connected: m.connected,
        seconds: m.ramp.as_secs_f64(),
        per_second: m.connected as f64 / m.ramp.as_secs_f64().max(1e-9),
        relay_cpu_seconds: m
            .ramp_end
            .iter()
            .zip(&m.before)
            .map(|(e, b)| (e.cpu_seconds - b.cpu_seconds).max(0.0))
            .sum(),
    };
    for (i, node) in nodes.iter().enumerate() {
        let sessions = outcomes
            .iter()
            .zip(&node_of)
            .filter(|(o, &n)| n == i && o.connected)
            .count();
        let grown = m.after_ramp[i]
            .rss_bytes
            .saturating_sub(m.before[i].rss_bytes);
        report.nodes.push(NodeUsage {
            url: node.url.clone(),
            pid: m.pids[i].unwrap_or(0),
            sessions,
            cpu_seconds: (end[i].cpu_seconds - m.before[i].cpu_seconds).max(0.0),
            max_rss_bytes: m.monitors[i].as_ref().map_or(0, |(rx, _)| rx.borrow().1),
            rss_before_ramp_bytes: m.before[i].rss_bytes,
            rss_after_ramp_bytes: m.after_ramp[i].rss_bytes,
            rss_per_connection_bytes: grown / sessions.max(1) as u64,
        });
    }
    report.relay.cpu_seconds = report.nodes.iter().map(|n| n.cpu_seconds).sum();
    report.relay.max_rss_bytes = report
        .nodes
        .iter()
        .map(|n| n.max_rss_bytes)
        .max()
        .unwrap_or(0);
    // Summed over the nodes, as the single-node report gives them for its one relay.
    report.relay.rss_before_ramp_bytes = report.nodes.iter().map(|n| n.rss_before_ramp_bytes).sum();
    report.relay.rss_after_ramp_bytes = report.nodes.iter().map(|n| n.rss_after_ramp_bytes).sum();
    let grown = report
        .relay
        .rss_after_ramp_bytes
        .saturating_sub(report.relay.rss_before_ramp_bytes);
    report.relay.rss_per_connection_bytes = grown / m.connected.max(1) as u64;
    report.harness_workers = m.n_workers;
    report.harness_rss_bytes = m.harness_rss;
    let pairs: Vec<(&str, &str)> = m
        .metrics_before
        .iter()
        .zip(&metrics_after)
        .map(|(b, a)| (b.as_str(), a.as_str()))
        .collect();
    report.relay_metrics = report::RelayMetrics::summed(&pairs);
    report.takeover = takeover;
    if let Some(wal) = wal {
        report.wal = wal.await.ok().flatten();
    }
    report.params = serde_json::json!({
        "connections": args.connections, "users": args.users, "firehose": args.firehose,
        "rate": args.rate, "duration_s": args.duration.as_secs_f64(),
        "connect_rate": args.connect_rate, "slo_ms": args.slo_ms,
        "pg_settings": args.pg_settings, "nodes": nodes.len(), "workers": m.n_workers,
        "relay_env": args.relay_env,
        "kill_publisher_after_s": args.kill_publisher_after.map(|d| d.as_secs_f64()),
    });
    report::judge(&mut report, &sent, args.slo_ms, args.no_slo);
    Ok((report, spawned))
}

async fn scrape_all(nodes: &[Node]) -> Vec<String> {
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        out.push(match &node.metrics_url {
            Some(url) => crate::scrape(url).await,
            None => String::new(),
        });
    }
    out
}
