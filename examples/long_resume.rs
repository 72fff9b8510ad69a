//! Long resume from JetStream (issue 14, BENCHMARKS.md §10.5): one cluster node with
//! `replay.window = 1h` on a private PostgreSQL and a private `nats-server -js`; `--total` events commit (default 3,600,000: 30 minutes at
//! 2,000 events/s), `--mine` (default 10,000) of them that user's, spread evenly; the node's
//! in-memory window keeps only the newest `replay.max_events` (default here 100,000), so the
//! cursor of the user's first event is long gone from it. The client then resumes with `since=<cursor>` and the time
//! from the upgrade request to the `recovered` frame is printed, with the replayed count.
//!
//! Usage: `cargo run --release --example long_resume -- [--total N] [--mine N] [--runs N]
//! [--window-events N]`

use std::time::{Duration, Instant};

use engagement_relay::auth::{mint, Role};
use engagement_relay::config::{Config, Secret};
use engagement_relay::db;
use futures_util::StreamExt;
use relay_testkit::nats::{NatsOptions, NatsServer};
use relay_testkit::pgcluster::{Cluster, ClusterOptions};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const SECRET: &str = "long-resume-secret-with-at-least-32-characters";

fn arg(name: &str, default: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).ok_or(format!("{name} N"))?.parse()?),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total = arg("--total", 3_600_000)?;
    let mine = arg("--mine", 10_000)?.min(total).max(1);
    let runs = arg("--runs", 5)?;
    let window_events = arg("--window-events", 100_000)?;
    let pg = tokio::task::spawn_blocking(|| {
        Cluster::start(ClusterOptions {
            fast: true,
            ..Default::default()
        })
    })
    .await??;
    let nats = tokio::task::spawn_blocking(|| NatsServer::start(NatsOptions::default())).await??;
    let url = pg.url("postgres");
    let mut admin = db::connect(&url).await?;
    db::migrate::migrate(&mut admin).await?;

    let mut config = Config::default();
    config.database.url = Secret::new(url.clone());
    config.auth.jwt_secret = Secret::new(SECRET.to_string());
    config.server.listen = "127.0.0.1:0".parse()?;
    config.metrics.listen = "127.0.0.1:0".parse()?;
    config.replay.window = Duration::from_secs(3600);
    config.replay.max_events = usize::try_from(window_events)?;
    config.cluster.nats_url = Secret::new(nats.url());
    let relay = engagement_relay::start(config).await?;
    relay.ready().await;

    let user = Uuid::new_v4();
    let others = 1_000;
    admin
        .execute(
            "INSERT INTO auth.users (id, email) VALUES ($1, 'me@example.com')",
            &[&user],
        )
        .await?;
    admin
        .execute(
            "INSERT INTO auth.users (id, email) SELECT gen_random_uuid(), 'u' || n || '@example.com' FROM generate_series(1, $1::int) n",
            &[&others],
        )
        .await?;
    let token = mint(
        SECRET,
        Some(user),
        Role::Authenticated,
        Duration::from_secs(7200),
    )?;
    let base = format!(
        "ws://{}/v1/events?access_token={token}",
        relay.server_addr()
    );
    let (mut live, _) = tokio_tungstenite::connect_async(base.as_str()).await?;
    next_json(&mut live).await?;

    // Every `every`-th event is the user's; the others go round the other users.
    let every = (total / mine).max(1) as i64;
    let want = (0..total as i64).filter(|n| n % every == 0).count();
    // The user's live session is read all along (it answers pings; its queue never fills) and
    // sees its last event once everything is through the stream; the cursor the client holds
    // is its first event, the oldest of the run.
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        let mut since = String::new();
        while seen < want {
            let frame = next_json(&mut live).await.map_err(|e| e.to_string())?;
            if frame["type"] == "insert" {
                if seen == 0 {
                    since = frame["cursor"].as_str().unwrap_or_default().to_string();
                }
                seen += 1;
            }
        }
        Ok::<_, String>(since)
    });
    let started = Instant::now();
    let chunk: i64 = 100_000;
    let mut from: i64 = 0;
    while from < total as i64 {
        let to = (from + chunk).min(total as i64);
        admin
            .execute(
                "WITH o AS (SELECT array_agg(id) AS ids FROM auth.users WHERE id <> $4)
                 INSERT INTO public.engagement_events (user_id, event_type, value)
                 SELECT CASE WHEN n % $3 = 0 THEN $4 ELSE o.ids[1 + n % $5] END,
                        'app_open', jsonb_build_object('n', n)
                 FROM generate_series($1::bigint, $2::bigint - 1) n, o",
                &[&from, &to, &every, &user, &i64::from(others)],
            )
            .await?;
        from = to;
    }
    let inserted = started.elapsed();
    let since = reader.await??;
    println!(
        "committed {total} events ({want} of the user's) in {:.1} s; all through the stream after {:.1} s",
        inserted.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    for run in 1..=runs {
        let t0 = Instant::now();
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("{base}&since={since}").as_str()).await?;
        let mut replayed = 0;
        let recovered = loop {
            let frame = next_json(&mut ws).await?;
            match frame["type"].as_str() {
                Some("recovered") => break frame,
                Some("ready") => {}
                _ => replayed += 1,
            }
        };
        println!(
            "run {run}: recovered after {:.0} ms: replayed {replayed}, complete {}",
            t0.elapsed().as_secs_f64() * 1e3,
            recovered["complete"]
        );
    }
    relay.shutdown().await?;
    drop(nats);
    drop(pg);
    Ok(())
}

async fn next_json<S>(ws: &mut S) -> Result<serde_json::Value, Box<dyn std::error::Error>>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(Duration::from_secs(600), ws.next())
            .await?
            .ok_or("connection closed")??;
        if let Message::Text(text) = message {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}
