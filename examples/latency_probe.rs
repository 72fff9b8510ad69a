//! Connects to a relay's native endpoint, receives N events and prints the commit → receive
//! latency distribution (client clock minus each event's `commit_timestamp`; same host, so
//! one clock). A quick check for a running relay; the soak harness is the full benchmark.
//!
//! Usage: `cargo run --release --example latency_probe -- '<ws url with access_token>' [N]`

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: latency_probe <ws-url> [events]")?;
    let want: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(400);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let mut latencies_ms = Vec::with_capacity(want);
    while latencies_ms.len() < want {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await?
            .ok_or("connection closed")??;
        let Message::Text(text) = msg else { continue };
        let frame: serde_json::Value = serde_json::from_str(&text)?;
        if frame["type"] != "insert" {
            continue;
        }
        let received = chrono::Utc::now();
        let committed = chrono::DateTime::parse_from_rfc3339(
            frame["commit_timestamp"]
                .as_str()
                .ok_or("no commit_timestamp")?,
        )?;
        latencies_ms.push(
            (received - committed.to_utc())
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1e3,
        );
    }
    latencies_ms.sort_by(f64::total_cmp);
    let q = |p: f64| {
        latencies_ms[((p * latencies_ms.len() as f64) as usize).min(latencies_ms.len() - 1)]
    };
    println!(
        "events={} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        latencies_ms.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        latencies_ms[latencies_ms.len() - 1]
    );
    Ok(())
}
