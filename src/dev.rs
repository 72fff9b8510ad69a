//! `engagement-relay dev`: a private PostgreSQL with `wal_level=logical`, the migrations and
//! the seed, the relay on top, and demo traffic, so one command shows live events. With
//! `--nodes N` (N > 1) the relay runs as a cluster: a private `nats-server -js` and N relay
//! processes on consecutive ports (submodule `nodes`).
//!
//! Part of the binary, not of the library: the cluster, the demo data and the PostgreSQL
//! install (as root on Debian, when the server binaries are missing) come from the
//! `relay-testkit` crate.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use engagement_relay::auth::{mint, Role};
use engagement_relay::config::{Config, InspectorPreset, Secret};
use engagement_relay::db;
use rand::seq::IndexedRandom;
use relay_testkit::demo::{
    demo_event, demo_state, DEV_JWT_SECRET, INSERT_EVENT_SQL, STATE_CHANGE_SQL,
};
use relay_testkit::install::{apt_install, can_apt_install, install_hint};
use relay_testkit::pgcluster::{find_bin_dir, Cluster, ClusterOptions, StopMode};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

mod nodes;

/// Options of `engagement-relay dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Data directory of the private cluster (kept between runs).
    pub data_dir: PathBuf,
    /// Port of the private cluster (`None`: a free one).
    pub pg_port: Option<u16>,
    /// Demo events inserted per second, spread over the seeded users (0 disables).
    pub demo_rate: f64,
    /// Relay nodes: 1 runs the relay in this process (no NATS); more start a private
    /// `nats-server -js` and that many relay processes in cluster mode.
    pub nodes: usize,
    /// The `--config` file when given explicitly (what the node processes are started with).
    pub config_file: Option<PathBuf>,
}

/// Starts the private cluster, applies migrations and the seed, runs the relay and the demo
/// traffic until `shutdown`, then stops everything, the cluster included. Missing PostgreSQL
/// server binaries are installed first when this process is root with apt-get.
///
/// Errors: no PostgreSQL server binaries and not root (the message is the line to run), their
/// install fails, the cluster cannot start, a migration fails, or the relay cannot start.
pub async fn run(
    mut config: Config,
    opts: DevOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(ensure_postgres).await??;
    if opts.nodes > 1 {
        tokio::task::spawn_blocking(nodes::ensure_nats_server).await??;
    }
    let cluster_opts = ClusterOptions {
        data_dir: Some(opts.data_dir.clone()),
        port: opts.pg_port,
        ..ClusterOptions::default()
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(cluster_opts))
        .await?
        .context("starting the private PostgreSQL cluster")?;
    info!(port = cluster.port(), data_dir = %cluster.data_dir().display(), "private PostgreSQL running");
    let result = serve(&mut config, &cluster, &opts, shutdown).await;
    let stopped = tokio::task::spawn_blocking(move || {
        let r = cluster.stop(StopMode::Fast);
        drop(cluster);
        r
    })
    .await?;
    if let Err(e) = stopped {
        warn!("stopping the private PostgreSQL: {e}");
    }
    result
}

/// Finds the PostgreSQL server binaries; when they are missing, installs `postgresql` if this
/// process is root with apt-get (logging each step), else fails with the one line to run. A
/// `RELAY_PG_BINDIR` that names no binaries is reported as it is: nothing is installed.
fn ensure_postgres() -> anyhow::Result<()> {
    match find_bin_dir() {
        Ok(_) => Ok(()),
        Err(e) if std::env::var_os("RELAY_PG_BINDIR").is_some() => Err(e.into()),
        Err(_) if can_apt_install() => {
            let why = "engagement-relay dev needs the PostgreSQL server binaries";
            apt_install(&["postgresql"], why).context("installing PostgreSQL")?;
            find_bin_dir()?;
            Ok(())
        }
        Err(_) => anyhow::bail!(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; run: {} (or set RELAY_PG_BINDIR to their directory)",
            install_hint(&["postgresql"])
        ),
    }
}

async fn serve(
    config: &mut Config,
    cluster: &Cluster,
    opts: &DevOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let url = cluster.url("postgres");
    config.database.url = Secret::new(url.clone());
    if config.auth.jwt_secret.is_empty() {
        config.auth.jwt_secret = Secret::new(DEV_JWT_SECRET);
    }
    let mut client = db::connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db::migrate::migrate(&mut client).await?;
    db::migrate::seed(&mut client).await?;
    let users: Vec<(Uuid, String)> = client
        .query(
            "SELECT id, coalesce(email, id::text) FROM auth.users ORDER BY email LIMIT 20",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    // The inspector page is on, its picker offering every demo user's token and the service
    // role's: the banner's tokens (they are local and printed anyway).
    let tokens = BannerTokens::mint(config.auth.jwt_secret.expose(), &users)?;
    config.server.inspector = true;
    config.server.inspector_presets = tokens.presets();

    if opts.nodes > 1 {
        return serve_cluster(config, &users, &tokens, &url, opts, shutdown).await;
    }
    let relay = engagement_relay::start(config.clone()).await?;
    // Sessions are refused until the replay window is rebuilt: show the URL once it works.
    tokio::select! {
        _ = relay.ready() => {}
        _ = shutdown.cancelled() => {}
    }
    print_banner(config, &relay, &tokens, &url)?;

    let demo = (opts.demo_rate > 0.0 && !users.is_empty()).then(|| {
        let ids = users.iter().map(|(id, _)| *id).collect();
        tokio::spawn(demo_traffic(
            url.clone(),
            ids,
            opts.demo_rate,
            shutdown.clone(),
        ))
    });
    let stop = relay.shutdown_token();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = stop.cancelled() => {}
    }
    shutdown.cancel();
    if let Some(demo) = demo {
        let _ = demo.await;
    }
    relay.shutdown().await?;
    Ok(())
}

/// `--nodes N`: NATS and N relay processes instead of the relay in this process, the demo
/// traffic, then everything stopped on `shutdown` (or when starting a node fails).
async fn serve_cluster(
    config: &Config,
    users: &[(Uuid, String)],
    tokens: &BannerTokens<'_>,
    url: &str,
    opts: &DevOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let nats = nodes::start_nats().await?;
    let node_config = nodes::NodeConfig {
        config_file: opts.config_file.clone(),
        database_url: url.to_string(),
        jwt_secret: config.auth.jwt_secret.expose().to_string(),
        listen: config.server.listen,
        metrics_listen: config.metrics.listen,
        inspector_presets: config.server.inspector_presets.clone(),
    };
    let mut cluster = nodes::start(opts.nodes, nats, &node_config, &shutdown).await?;
    if !shutdown.is_cancelled() {
        print_cluster_banner(config, &cluster, tokens, url)?;
    }
    let demo = (opts.demo_rate > 0.0 && !users.is_empty()).then(|| {
        let ids = users.iter().map(|(id, _)| *id).collect();
        tokio::spawn(demo_traffic(
            url.to_string(),
            ids,
            opts.demo_rate,
            shutdown.clone(),
        ))
    });
    cluster.watch(&shutdown).await;
    if let Some(demo) = demo {
        let _ = demo.await;
    }
    cluster.stop().await;
    Ok(())
}

/// The cluster's banner: NATS, then each node's URLs (a `connect` and an `inspector` line per
/// node).
fn print_cluster_banner(
    config: &Config,
    cluster: &nodes::Nodes,
    tokens: &BannerTokens<'_>,
    url: &str,
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let secret = config.auth.jwt_secret.expose();
    let n = cluster.nodes.len();
    let mut text = String::new();
    writeln!(
        text,
        "\nengagement-relay dev is running {n} nodes (Ctrl-C stops them, nats-server and the private PostgreSQL)\n"
    )?;
    writeln!(text, "  database   {url}")?;
    writeln!(text, "  nats       {}", cluster.nats_url())?;
    if let Some((id, email, token)) = tokens.user() {
        writeln!(text, "  user       {email} ({id})")?;
        writeln!(text, "  token      {token}")?;
    }
    let service = &tokens.service;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let (port, metrics) = (node.addr.port(), node.metrics_addr.port());
        writeln!(
            text,
            "  node {i}     http://127.0.0.1:{port}  metrics http://127.0.0.1:{metrics}/metrics"
        )?;
        if let Some((_, _, token)) = tokens.user() {
            writeln!(
                text,
                "  connect    ws://127.0.0.1:{port}/v1/events?access_token={token}"
            )?;
        }
        writeln!(
            text,
            "  firehose   ws://127.0.0.1:{port}/v1/events?access_token={service}"
        )?;
        writeln!(text, "{}", inspector_line(port))?;
    }
    writeln!(
        text,
        "  resume     a client may reconnect to any node with ?since=<cursor>"
    )?;
    finish_banner(&mut text, secret)
}

/// Prints how to connect. Written in one piece and never panics: a closed stdout (the
/// reader went away) must not take the relay down.
fn print_banner(
    config: &Config,
    relay: &engagement_relay::Relay,
    tokens: &BannerTokens<'_>,
    url: &str,
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let secret = config.auth.jwt_secret.expose();
    let port = relay.server_addr().port();
    let metrics_port = relay.metrics_addr().port();
    let mut text = String::new();
    writeln!(
        text,
        "\nengagement-relay dev is running (Ctrl-C stops it and the private PostgreSQL)\n"
    )?;
    writeln!(text, "  database   {url}")?;
    writeln!(text, "  metrics    http://127.0.0.1:{metrics_port}/metrics")?;
    if let Some((id, email, token)) = tokens.user() {
        let stream = format!("ws://127.0.0.1:{port}/v1/events?access_token={token}");
        writeln!(text, "  user       {email} ({id})")?;
        writeln!(text, "  token      {token}")?;
        writeln!(text, "  connect    {stream}")?;
        writeln!(text, "             e.g. npx wscat -c '{stream}'")?;
    }
    writeln!(
        text,
        "  firehose   ws://127.0.0.1:{port}/v1/events?access_token={}",
        tokens.service
    )?;
    writeln!(text, "{}", inspector_line(port))?;
    finish_banner(&mut text, secret)
}

/// The banner line of the inspector page on `port` (`server.inspector`, on under `dev`).
fn inspector_line(port: u16) -> String {
    format!("  inspector  http://127.0.0.1:{port}/inspector")
}

/// The tokens of `dev`, valid 24 h: every seeded user's (with its id and email; the banner
/// prints the first one's) and the service role's. The inspector's picker offers them all.
struct BannerTokens<'a> {
    users: Vec<(Uuid, &'a str, String)>,
    service: String,
}

impl<'a> BannerTokens<'a> {
    fn mint(secret: &str, users: &'a [(Uuid, String)]) -> anyhow::Result<BannerTokens<'a>> {
        let ttl = Duration::from_secs(24 * 3600);
        let users = users
            .iter()
            .map(|(id, email)| {
                let token = mint(secret, Some(*id), Role::Authenticated, ttl)?;
                Ok((*id, email.as_str(), token))
            })
            .collect::<anyhow::Result<_>>()?;
        let service = mint(secret, None, Role::ServiceRole, ttl)?;
        Ok(BannerTokens { users, service })
    }

    /// The first seeded user's (id, email, token): the one the banner prints.
    fn user(&self) -> Option<&(Uuid, &'a str, String)> {
        self.users.first()
    }

    /// `server.inspector_presets`: each user's token labelled by email, then the service
    /// role's.
    fn presets(&self) -> Vec<InspectorPreset> {
        let users = self.users.iter().map(|(_, email, token)| InspectorPreset {
            label: (*email).to_string(),
            token: Secret::new(token.clone()),
        });
        users
            .chain(std::iter::once(InspectorPreset {
                label: "service_role".into(),
                token: Secret::new(self.service.clone()),
            }))
            .collect()
    }
}

/// Ends a banner with how to mint more tokens and prints it in one piece; never panics: a
/// closed stdout (the reader went away) must not take the relay down.
fn finish_banner(text: &mut String, secret: &str) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    use std::io::Write as _;
    writeln!(
        text,
        "  new token  engagement-relay --jwt-secret '{secret}' token --sub <uuid>\n"
    )?;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(())
}

/// First wait before reconnecting the demo traffic; doubles up to [`DEMO_RECONNECT_MAX`].
const DEMO_RECONNECT_MIN: Duration = Duration::from_millis(250);
/// Longest wait between the demo traffic's reconnect attempts.
const DEMO_RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Inserts demo events at `rate` per second, spread over `users`, until `stop`. When the
/// connection is lost (PostgreSQL restarted) it reconnects with a doubling backoff
/// ([`DEMO_RECONNECT_MIN`] to [`DEMO_RECONNECT_MAX`]), logging once per outage.
async fn demo_traffic(url: String, users: Vec<Uuid>, rate: f64, stop: CancellationToken) {
    // At most 1,000 per second: `interval` refuses a zero period (e.g. `--demo-rate inf`).
    let period = Duration::from_secs_f64(1.0 / rate.clamp(0.001, 1000.0));
    let mut backoff = DEMO_RECONNECT_MIN;
    let mut outage = false;
    loop {
        match db::connect(&url).await {
            Ok(client) => {
                if outage {
                    info!("demo traffic reconnected");
                }
                backoff = DEMO_RECONNECT_MIN;
                match demo_session(&client, &users, period, &stop).await {
                    Ok(()) => return,
                    Err(e) => warn!("demo traffic paused: {}; reconnecting", db::describe(&e)),
                }
                outage = true;
            }
            Err(e) if !outage => {
                warn!("demo traffic paused: {e}; reconnecting");
                outage = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(DEMO_RECONNECT_MAX);
    }
}

/// One connection's demo traffic: an insert every `period` (and, one tick in eight, a change of
/// the user's engagement state: an update of `user_engagement_states`, streamed from the second
/// change on, and a transition row). Returns `Ok` when `stop` is cancelled, the error when the
/// connection is lost; a statement that fails on a live connection is logged and skipped.
async fn demo_session(
    client: &tokio_postgres::Client,
    users: &[Uuid],
    period: Duration,
    stop: &CancellationToken,
) -> Result<(), tokio_postgres::Error> {
    let insert = client.prepare(INSERT_EVENT_SQL).await?;
    let transition = client.prepare(STATE_CHANGE_SQL).await?;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let Some(&user) = users.choose(&mut rand::rng()) else {
            return Ok(());
        };
        let (event_type, value) = demo_event();
        let inserted = client.execute(&insert, &[&user, &event_type, &value]).await;
        let changed = match inserted {
            Ok(_) if rand::random_ratio(1, 8) => {
                client.execute(&transition, &[&user, &demo_state()]).await
            }
            other => other,
        };
        match changed {
            Err(e) if client.is_closed() => return Err(e),
            Err(e) => warn!("demo statement failed: {}", db::describe(&e)),
            Ok(_) => {}
        }
    }
}
