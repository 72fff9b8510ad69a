//! `engagement-relay dev`: a private PostgreSQL with `wal_level=logical`, the migrations and
//! the seed, the relay on top, and demo traffic, so one command shows live events.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::auth::{mint, Role};
use crate::config::{Config, Secret};
use crate::db;
use crate::pgcluster::{Cluster, ClusterOptions, StopMode};

/// The JWT secret `dev` uses when none is configured: the Supabase CLI's local default, so
/// tokens minted by a local Supabase stack work too.
pub const DEV_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

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

    let relay = crate::start(config.clone()).await?;
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
    relay: &crate::Relay,
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
    let insert = match client
        .prepare(
            "INSERT INTO public.engagement_events (user_id, event_type, value) VALUES ($1, $2, $3)",
        )
        .await
    {
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
        let user = *users.choose(&mut rand::rng()).unwrap_or(&users[0]);
        if let Err(e) = client.execute(&insert, &[&user, &event_type, &value]).await {
            warn!("demo insert failed: {}", db::describe(&e));
        }
        if let Some(statement) = transition.as_ref().filter(|_| rand::random_ratio(1, 8)) {
            let state = *STATES.choose(&mut rand::rng()).unwrap_or(&STATES[0]);
            if let Err(e) = client.execute(statement, &[&user, &state]).await {
                warn!("demo state change failed: {}", db::describe(&e));
            }
        }
    }
}

/// The engagement states (seed story 1.1, `user_engagement_states.state`).
const STATES: [&str; 5] = [
    "active",
    "goodbye_sent",
    "help_flow",
    "remind_later",
    "dormant",
];

/// Sets user `$1`'s engagement state to `$2` and records the transition, in one statement.
const STATE_CHANGE_SQL: &str = "\
    WITH prior AS (SELECT state FROM public.user_engagement_states WHERE user_id = $1), \
    upsert AS (INSERT INTO public.user_engagement_states (user_id, state) VALUES ($1, $2) \
        ON CONFLICT (user_id) DO UPDATE SET state = EXCLUDED.state, last_activity_at = now() \
        RETURNING user_id) \
    INSERT INTO public.engagement_state_transitions (user_id, from_state, to_state, trigger) \
    SELECT $1, (SELECT state FROM prior), $2, 'demo' FROM upsert";

/// A random event of one of the seed's four types with a realistic payload.
pub fn demo_event() -> (&'static str, serde_json::Value) {
    let mut rng = rand::rng();
    match rng.random_range(0..4) {
        0 => (
            "app_open",
            json!({"screen": *["home", "goals", "coach", "insights"].choose(&mut rng).unwrap_or(&"home"),
                   "app_version": "2.4.1", "platform": if rng.random_bool(0.5) { "ios" } else { "android" }}),
        ),
        1 => (
            "goal_complete",
            json!({"goal_id": Uuid::new_v4(), "goal_type": "steps", "target": 8000,
                   "achieved": rng.random_range(8000..14000)}),
        ),
        2 => (
            "steps_import",
            json!({"source": "apple_health", "steps": rng.random_range(500..4000),
                   "date": chrono::Utc::now().format("%Y-%m-%d").to_string()}),
        ),
        _ => (
            "coach_message",
            json!({"message_id": Uuid::new_v4(), "direction": "outbound", "channel": "push",
                   "sentiment": "positive"}),
        ),
    }
}
