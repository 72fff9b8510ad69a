//! The database side: soak users in `auth.users`, and the steady insert load whose every row
//! carries a unique sequence number and its send time, so each delivery can be checked.

use std::time::{Duration, Instant};

use anyhow::Context;
use engagement_relay::db;
use tokio_postgres::Client;
use uuid::Uuid;

/// Creates `n` users in `auth.users` (fresh UUIDs, `soak-…@example.com`) and returns them.
pub async fn create_users(client: &Client, n: usize) -> anyhow::Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    for chunk in ids.chunks(10_000) {
        let emails: Vec<String> = chunk
            .iter()
            .map(|id| format!("soak-{id}@example.com"))
            .collect();
        client
            .execute(
                "INSERT INTO auth.users (id, email) SELECT * FROM unnest($1::uuid[], $2::text[])",
                &[&chunk, &emails],
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating soak users: {}", db::describe(&e)))?;
    }
    Ok(ids)
}

/// What the load generator inserted: `owner[seq]` is the user index of event `seq`.
#[derive(Debug, Default)]
pub struct Sent {
    /// User index per sequence number.
    pub owner: Vec<u32>,
    /// Insert statements that failed (their rows are not in `owner`).
    pub failed_batches: u64,
}

/// Inserts `rate` events/s for `duration`, spread round-robin over `users`, in small
/// multi-row transactions (one every ~5 ms). Returns what was committed.
pub async fn insert_load(
    client: &Client,
    users: &[Uuid],
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Sent> {
    let insert = client
        .prepare(
            "INSERT INTO public.engagement_events (user_id, event_type, value) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[])",
        )
        .await
        .context("preparing the insert")?;
    let mut sent = Sent::default();
    if rate <= 0.0 || users.is_empty() {
        tokio::time::sleep(duration).await;
        return Ok(sent);
    }
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_user = 0usize;
    loop {
        tick.tick().await;
        let elapsed = start.elapsed().min(duration);
        let due = (rate * elapsed.as_secs_f64()) as usize;
        let n = due.saturating_sub(sent.owner.len()).min(1_000);
        if n > 0 {
            let mut ids = Vec::with_capacity(n);
            let mut types = Vec::with_capacity(n);
            let mut values = Vec::with_capacity(n);
            let mut owners = Vec::with_capacity(n);
            let sent_us = chrono::Utc::now().timestamp_micros();
            for k in 0..n {
                let seq = (sent.owner.len() + k) as u64;
                let (event_type, mut value) = relay_testkit::demo::demo_event();
                value["seq"] = seq.into();
                value["sent_us"] = sent_us.into();
                ids.push(users[next_user]);
                types.push(event_type);
                values.push(value);
                owners.push(next_user as u32);
                next_user = (next_user + 1) % users.len();
            }
            match client.execute(&insert, &[&ids, &types, &values]).await {
                Ok(_) => sent.owner.extend(owners),
                Err(e) => {
                    sent.failed_batches += 1;
                    tracing::warn!("insert failed: {}", db::describe(&e));
                }
            }
        }
        if elapsed >= duration && sent.owner.len() >= due {
            return Ok(sent);
        }
    }
}
