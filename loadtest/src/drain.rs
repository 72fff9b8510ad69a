//! Slot drain throughput: a backlog of inserts is decoded once by the relay and once by
//! `pg_recvlogical` (the walsender's own limit: it decodes and discards), each from its own
//! slot created at the same point before the backlog, and the two rates are compared.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use engagement_relay::db;
use tracing::info;

use crate::spawn;

/// `relay-soak drain`.
#[derive(Args, Clone)]
pub struct DrainArgs {
    /// Rows in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Rows per inserting transaction.
    #[arg(long, default_value_t = 1_000)]
    batch: u64,
    /// Measurements of each consumer (each on a fresh slot over the same WAL).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// Builds the backlog on a private cluster and times both consumers `runs` times.
pub async fn run(args: DrainArgs) -> anyhow::Result<()> {
    let cluster = spawn::start_cluster(Vec::new()).await?;
    let url = cluster.url("postgres");
    let pg = db::connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::load::create_users(&pg, 100).await?;
    let slots: Vec<(String, String)> = (0..args.runs)
        .map(|i| (format!("drain_relay_{i}"), format!("drain_recvlogical_{i}")))
        .collect();
    for (a, b) in &slots {
        for slot in [a, b] {
            pg.execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[slot],
            )
            .await?;
        }
    }
    info!(events = args.events, "building the backlog");
    let mut left = args.events;
    while left > 0 {
        let n = left.min(args.batch) as i64;
        pg.execute(
            "INSERT INTO public.engagement_events (user_id, event_type, value) \
             SELECT u.id, 'app_open', jsonb_build_object('screen', 'home', 'app_version', '2.4.1', \
                    'platform', 'ios', 'seq', g) \
             FROM generate_series(1, $1::bigint) g \
             CROSS JOIN LATERAL (SELECT id FROM auth.users ORDER BY id OFFSET g % 100 LIMIT 1) u",
            &[&n],
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        left -= n as u64;
    }
    let end_lsn: String = pg
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let recvlogical = cluster.bin_dir().join("pg_recvlogical");
    let mut rows = Vec::new();
    for (relay_slot, recv_slot) in &slots {
        let started = Instant::now();
        let status = Command::new(&recvlogical)
            .args([
                "-d",
                &url,
                "--slot",
                recv_slot,
                "--start",
                "--no-loop",
                "-f",
                "/dev/null",
            ])
            .args([
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=engagement_events_pub",
            ])
            .args(["--endpos", &end_lsn])
            .status()
            .context("running pg_recvlogical")?;
        if !status.success() {
            bail!("pg_recvlogical failed: {status}");
        }
        let recv_s = started.elapsed().as_secs_f64();
        let relay_s = time_relay(&url, relay_slot, args.events).await?;
        let (recv_rate, relay_rate) = (args.events as f64 / recv_s, args.events as f64 / relay_s);
        println!(
            "pg_recvlogical {recv_s:.2} s ({recv_rate:.0} rows/s)   relay {relay_s:.2} s ({relay_rate:.0} rows/s)   ratio {:.2}",
            relay_rate / recv_rate
        );
        rows.push((recv_s, relay_s));
    }
    let mut ratios: Vec<f64> = rows.iter().map(|(r, l)| r / l).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "median ratio relay/pg_recvlogical: {:.2}",
        ratios[ratios.len() / 2]
    );
    Ok(())
}

/// Starts a relay child on `slot` and returns the seconds until it has decoded `events` rows.
async fn time_relay(url: &str, slot: &str, events: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let relay = spawn::spawn_relay(spawn::RelayEnv {
        database_url: url,
        slot,
        extra: &[],
        https: None,
    })
    .await?;
    let metrics = format!("http://{}/metrics", relay.metrics_addr);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text = reqwest::get(&metrics).await?.text().await?;
        let received = text
            .lines()
            .find_map(|l| l.strip_prefix("relay_events_received_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if received >= events as f64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the relay decoded {received} of {events} rows in 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    relay.terminate(spawn::STOP).await?;
    Ok(seconds)
}
