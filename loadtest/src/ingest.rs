//! `relay-soak ingest`: batch-ingest throughput through the relay's `POST /v1/events/batch`
//! (service role) for several batch sizes, and the latency from each batch's commit to its
//! events' delivery on a firehose WebSocket; then, straight to the database, the unnest
//! `INSERT` the API uses against `COPY … FROM STDIN BINARY`, at the same batch sizes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use engagement_relay::auth::{mint, Role};
use engagement_relay::db;
use futures_util::StreamExt;
use relay_testkit::demo::DEV_JWT_SECRET;
use serde_json::{json, Value};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::spawn;

/// `relay-soak ingest`.
#[derive(Args, Clone)]
pub struct IngestArgs {
    /// Batch sizes to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    sizes: Vec<usize>,
    /// Events sent per batch size.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
}

/// Receive-time minus commit timestamp of every event the firehose got, in ms.
type Latencies = Arc<Mutex<Vec<f64>>>;

/// Runs the measurement on a private cluster with a relay child; prints one line per figure.
pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    if args.sizes.iter().any(|s| *s == 0 || *s > 5_000) || args.events == 0 {
        bail!("--sizes must be 1 to 5000 and --events at least 1");
    }
    let cluster = spawn::start_cluster(Vec::new()).await?;
    let url = cluster.url("postgres");
    let pg = db::connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let users = crate::load::create_users(&pg, 100).await?;
    let relay = spawn::spawn_relay(spawn::RelayEnv {
        database_url: &url,
        slot: "relay_ingest",
        // A 5,000-row transaction reaches the firehose at once: a queue of the default 1,024
        // would close it as a slow consumer (4008) before it could read.
        extra: &[
            ("RELAY_INGEST__KEY_RATE", "1000000"),
            ("RELAY_INGEST__KEY_BURST", "1000000"),
            // Throughput is the measurement: the rows limit (issue 12) must not be.
            ("RELAY_INGEST__KEY_ROWS_PER_SECOND", "1000000"),
            ("RELAY_INGEST__KEY_ROWS_BURST", "1000000"),
            ("RELAY_LIMITS__SESSION_QUEUE", "16384"),
        ],
        https: None,
    })
    .await?;
    let token = mint(
        DEV_JWT_SECRET,
        None,
        Role::ServiceRole,
        Duration::from_secs(3600),
    )?;
    let latencies = firehose(&relay.addr.to_string(), &token).await?;
    let http = reqwest::Client::new();
    let endpoint = format!("http://{}/v1/events/batch", relay.addr);
    for &size in &args.sizes {
        let bodies: Vec<String> = batches(&users, args.events, size)
            .map(|events| json!({ "events": events }).to_string())
            .collect();
        let before = latencies.lock().map(|l| l.len()).unwrap_or(0);
        let started = Instant::now();
        for body in bodies {
            let response = http
                .post(&endpoint)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            if response.status().as_u16() != 201 {
                bail!(
                    "batch refused: {} {}",
                    response.status(),
                    response.text().await?
                );
            }
        }
        let elapsed = started.elapsed();
        let got = wait_for(&latencies, before + args.events).await?;
        let mut lat = got[before..].to_vec();
        lat.sort_by(f64::total_cmp);
        println!(
            "api batch {size:>5}: {:>6.0} events/s ({} events in {:.2} s); commit → firehose p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            args.events as f64 / elapsed.as_secs_f64(),
            args.events,
            elapsed.as_secs_f64(),
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(0.0),
        );
    }
    for &size in &args.sizes {
        let unnest = timed(args.events, || {
            insert_unnest(&pg, &users, args.events, size)
        })
        .await?;
        let copy = timed(args.events, || insert_copy(&pg, &users, args.events, size)).await?;
        println!("db batch {size:>5}: unnest INSERT {unnest:>6.0} rows/s, COPY BINARY {copy:>6.0} rows/s");
    }
    relay.terminate(spawn::STOP).await?;
    drop(cluster);
    Ok(())
}

/// The events to send, `size` per batch, spread over `users`.
fn batches(users: &[Uuid], events: usize, size: usize) -> impl Iterator<Item = Vec<Value>> + '_ {
    (0..events).step_by(size).map(move |start| {
        (start..(start + size).min(events))
            .map(|i| json!({"user_id": users[i % users.len()], "event_type": "steps_import", "value": {"steps": i}}))
            .collect()
    })
}

/// A service-role socket that records each event's commit → receive latency.
async fn firehose(addr: &str, token: &str) -> anyhow::Result<Latencies> {
    let url = format!("ws://{addr}/v1/events?access_token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .context("firehose connect")?;
    let latencies: Latencies = Arc::default();
    let sink = latencies.clone();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(text) = msg else { continue };
            let now = chrono::Utc::now().timestamp_micros();
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let Some(commit) = frame["commit_timestamp"].as_str() else {
                continue;
            };
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(commit) {
                let ms = (now - t.timestamp_micros()) as f64 / 1000.0;
                if let Ok(mut l) = sink.lock() {
                    l.push(ms);
                }
            }
        }
    });
    Ok(latencies)
}

/// Waits (at most 120 s) until `n` latencies are recorded; returns them.
async fn wait_for(latencies: &Latencies, n: usize) -> anyhow::Result<Vec<f64>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = latencies.lock().map(|l| l.clone()).unwrap_or_default();
        if got.len() >= n {
            return Ok(got);
        }
        if Instant::now() > deadline {
            bail!("the firehose received {} of {n} events", got.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Rows per second of `f`, which inserts `rows` rows.
async fn timed<F, Fut>(rows: usize, f: F) -> anyhow::Result<f64>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    f().await?;
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// The API's statement: one `INSERT … FROM unnest(…)` per batch, each in a transaction.
async fn insert_unnest(
    pg: &tokio_postgres::Client,
    users: &[Uuid],
    events: usize,
    size: usize,
) -> anyhow::Result<()> {
    for start in (0..events).step_by(size) {
        let n = size.min(events - start);
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        let owners: Vec<Uuid> = (start..start + n).map(|i| users[i % users.len()]).collect();
        let types = vec!["steps_import"; n];
        let times: Vec<Option<chrono::DateTime<chrono::Utc>>> = vec![None; n];
        let values: Vec<Value> = (start..start + n).map(|i| json!({"steps": i})).collect();
        pg.execute(
            "INSERT INTO public.engagement_events (id, user_id, event_type, \"timestamp\", value) \
             SELECT id, user_id, event_type, coalesce(ts, now()), value \
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::jsonb[]) \
               AS t(id, user_id, event_type, ts, value)",
            &[&ids, &owners, &types, &times, &values],
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// `COPY … FROM STDIN BINARY`, one per batch (its own transaction).
async fn insert_copy(
    pg: &tokio_postgres::Client,
    users: &[Uuid],
    events: usize,
    size: usize,
) -> anyhow::Result<()> {
    let types = [
        Type::UUID,
        Type::UUID,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::JSONB,
    ];
    for start in (0..events).step_by(size) {
        let sink = pg
            .copy_in(
                "COPY public.engagement_events (id, user_id, event_type, \"timestamp\", value) \
                 FROM STDIN BINARY",
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        let now = chrono::Utc::now();
        for i in start..(start + size).min(events) {
            let value = json!({"steps": i});
            writer
                .as_mut()
                .write(&[
                    &Uuid::new_v4(),
                    &users[i % users.len()],
                    &"steps_import",
                    &now,
                    &value,
                ])
                .await?;
        }
        writer.finish().await?;
    }
    Ok(())
}
