//! `engagement-relay dev`: a private PostgreSQL with `wal_level=logical`, the migrations and
//! the seed, the relay on top, and demo traffic, so one command shows live events.
//!
//! Part of the binary, not of the library: the cluster and the demo data come from the
//! `relay-testkit` crate.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use engagement_relay::auth::{mint, Role};
use engagement_relay::config::{Config, Secret};
use engagement_relay::db;
use rand::seq::IndexedRandom;
use relay_testkit::demo::{
    demo_event, demo_state, DEV_JWT_SECRET, INSERT_EVENT_SQL, STATE_CHANGE_SQL,
};
use relay_testkit::pgcluster::{Cluster, ClusterOptions, StopMode};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

/// Options of `engagement-relay dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Data directory of the private cluster (kept between runs).
    pub data_dir: PathBuf,
    /// Port of the private cluster (`None`: a free one).
    pub pg_port: Option<u16>,
    /// Demo events inserted per second, spread over the seeded users (0 disables).
    pub demo_rate: f64,
}

/// Starts the private cluster, applies migrations and the seed, runs the relay and the demo
/// traffic until `shutdown`, then stops everything, the cluster included.
///
/// Errors: the cluster cannot start (e.g. no PostgreSQL server binaries: the message says what
/// to install), a migration fails, or the relay cannot start.
pub async fn run(
    mut config: Config,
    opts: DevOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
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
        .map_err(|e| anyhow::anyhow!(db::describe(&e)))?;
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

    let relay = engagement_relay::start(config.clone()).await?;
    // Sessions are refused until the replay window is rebuilt: show the URL once it works.
    tokio::select! {
        _ = relay.ready() => {}
        _ = shutdown.cancelled() => {}
    }
    print_banner(config, &relay, &users, &url)?;

    let demo = (opts.demo_rate > 0.0 && !users.is_empty()).then(|| {
        let ids = users.iter().map(|(id, _)| *id).collect();
        tokio::spawn(demo_traffic(client, ids, opts.demo_rate, shutdown.clone()))
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

/// Prints how to connect. Written in one piece and never panics: a closed stdout (the
/// reader went away) must not take the relay down.
fn print_banner(
    config: &Config,
    relay: &engagement_relay::Relay,
    users: &[(Uuid, String)],
    url: &str,
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let secret = config.auth.jwt_secret.expose();
    let ttl = Duration::from_secs(24 * 3600);
    let port = relay.server_addr().port();
    let metrics_port = relay.metrics_addr().port();
    let mut text = String::new();
    writeln!(
        text,
        "\nengagement-relay dev is running (Ctrl-C stops it and the private PostgreSQL)\n"
    )?;
    writeln!(text, "  database   {url}")?;
    writeln!(text, "  metrics    http://127.0.0.1:{metrics_port}/metrics")?;
    if let Some((id, email)) = users.first() {
        let token = mint(secret, Some(*id), Role::Authenticated, ttl)?;
        let stream = format!("ws://127.0.0.1:{port}/v1/events?access_token={token}");
        writeln!(text, "  user       {email} ({id})")?;
        writeln!(text, "  token      {token}")?;
        writeln!(text, "  connect    {stream}")?;
        writeln!(text, "             e.g. npx wscat -c '{stream}'")?;
    }
    let service = mint(secret, None, Role::ServiceRole, ttl)?;
    writeln!(
        text,
        "  firehose   ws://127.0.0.1:{port}/v1/events?access_token={service}"
    )?;
    writeln!(
        text,
        "  new token  engagement-relay --jwt-secret '{secret}' token --sub <uuid>\n"
    )?;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(())
}

/// Inserts demo events at `rate` per second, spread over `users`, until `stop`.
async fn demo_traffic(
    client: tokio_postgres::Client,
    users: Vec<Uuid>,
    rate: f64,
    stop: CancellationToken,
) {
    let insert = match client.prepare(INSERT_EVENT_SQL).await {
        Ok(s) => s,
        Err(e) => return warn!("demo traffic disabled: {}", db::describe(&e)),
    };
    // One tick in eight also moves the user's engagement state: an update of
    // user_engagement_states (streamed from the second change on) and a transition row.
    let transition = client.prepare(STATE_CHANGE_SQL).await.ok();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (event_type, value) = demo_event();
        let Some(&user) = users.choose(&mut rand::rng()) else {
            return;
        };
        if let Err(e) = client.execute(&insert, &[&user, &event_type, &value]).await {
            warn!("demo insert failed: {}", db::describe(&e));
        }
        if let Some(statement) = transition.as_ref().filter(|_| rand::random_ratio(1, 8)) {
            let state = demo_state();
            if let Err(e) = client.execute(statement, &[&user, &state]).await {
                warn!("demo state change failed: {}", db::describe(&e));
            }
        }
    }
}
