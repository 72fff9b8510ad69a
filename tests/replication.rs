//! Stream promises: the slot's confirmed flush LSN advances, a slow consumer is closed with
//! 4008 while a fast one keeps up, shutdown closes sessions with 1001 and acknowledges the final
//! LSN, `/metrics` has latency samples after deliveries, and a misconfigured database is a
//! clear error at start.

use std::time::Duration;

use crate::common::ws::connect;
use crate::common::{
    confirm_elsewhere, create_user, insert_event, relay_with_slow_reconnects, scrape, user_token,
    TestDb,
};
use serde_json::json;

const T: Duration = Duration::from_secs(15);
const HOUR: Duration = Duration::from_secs(3600);

async fn confirmed_flush_lsn(pg: &tokio_postgres::Client, slot: &str) -> u64 {
    let row = pg
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) as u64
}

/// Waits until the slot's confirmed flush LSN reaches `target` (the walsender applies status
/// reports asynchronously).
async fn wait_confirmed(pg: &tokio_postgres::Client, slot: &str, target: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let confirmed = confirmed_flush_lsn(pg, slot).await;
        if confirmed >= target {
            return confirmed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "confirmed_flush_lsn stuck at {confirmed:x}, expected {target:x}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The commit LSN an event frame's cursor carries (its first 16 hex digits).
fn commit_lsn(event: &serde_json::Value) -> u64 {
    u64::from_str_radix(&event["cursor"].as_str().unwrap()[..16], 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_replay_window_the_confirmed_flush_lsn_reaches_delivered_events() {
    let db = TestDb::new().await;
    let relay = db.relay_with(|c| c.replay.window = Duration::ZERO).await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (mut client, _) = connect(&relay, &user_token(user, HOUR), "").await;
    let before = confirmed_flush_lsn(&pg, &db.name).await;
    for i in 0..20 {
        insert_event(&pg, user, "app_open", json!({"i": i})).await;
    }
    // Confirmed up to the last transaction's commit LSN: a restart reads that one again.
    let target = commit_lsn(client.events(20, T).await.last().unwrap());
    assert!(wait_confirmed(&pg, &db.name, target).await > before);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_with_4008_while_a_fast_one_keeps_up() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| c.limits.session_queue = std::num::NonZero::new(64).unwrap())
        .await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, HOUR);
    let (mut slow, _) = connect(&relay, &token, "").await;
    let (mut fast, _) = connect(&relay, &token, "").await;
    // Start reading the slow socket as soon as the router has dropped it, so its 4008 close
    // frame is read while the relay still waits to send it.
    let router = relay.router().clone();
    let slow_close = tokio::spawn(async move {
        crate::common::wait_until("the slow consumer is dropped", T * 4, || {
            router.session_counts().0 < 2
        })
        .await;
        slow.close_code(T).await
    });
    // ~20 MB of frames, one row per transaction: more than the socket buffers hold, so the
    // slow queue must fill, while a reading consumer keeps up.
    const N: usize = 1000;
    let reader = tokio::spawn(async move {
        let events = fast.events(N, T).await;
        (fast, events.len())
    });
    let pad = "x".repeat(20_000);
    for i in 0..N {
        insert_event(&pg, user, "steps_import", json!({"i": i, "pad": pad})).await;
    }
    let (_fast, received) = reader.await.unwrap();
    assert_eq!(received, N, "the fast consumer got every event");
    assert_eq!(slow_close.await.unwrap(), 4008);
    let metrics = scrape(&relay).await;
    assert!(metrics.contains("relay_events_dropped_total{reason=\"slow_consumer\"}"));
    assert!(metrics.contains("relay_sessions_closed_total{code=\"4008\"}"));
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sessions_with_1001_and_acknowledges_the_final_lsn() {
    let db = TestDb::new().await;
    // Reports are rate-limited to one per status interval: shutting down right after a
    // delivery must wait for the last one instead of dropping it.
    let relay = db
        .relay_with(|c| {
            c.database.status_interval = Duration::from_secs(3);
            c.shutdown.grace = Duration::from_secs(10);
            c.replay.window = Duration::ZERO;
        })
        .await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (mut client, _) = connect(&relay, &user_token(user, HOUR), "").await;
    insert_event(&pg, user, "app_open", json!({})).await;
    let target = commit_lsn(&client.events(1, T).await[0]);
    relay.shutdown().await.unwrap();
    assert_eq!(client.close_code(T).await, 1001);
    // Nothing else runs on this slot after shutdown: only the relay's final report can get
    // the confirmed position there.
    wait_confirmed(&pg, &db.name, target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_replication_connection_loses_and_repeats_nothing() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (mut client, _) = connect(&relay, &user_token(user, HOUR), "").await;
    let insert_batch = |n: i32| {
        let pg = &pg;
        async move {
            pg.query(
                "INSERT INTO public.engagement_events (user_id, event_type) \
                 SELECT $1, 'app_open' FROM generate_series(1, $2::int) RETURNING id",
                &[&user, &n],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, uuid::Uuid>(0).to_string())
            .collect::<Vec<_>>()
        }
    };
    let mut expected = insert_batch(50).await;
    let mut got: Vec<String> = Vec::new();
    for round in 0..3 {
        got.extend(ids(client.events(expected.len() - got.len(), T).await));
        // Cut the walsender: the relay reconnects and the server re-sends from the slot's
        // persisted position.
        pg.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap();
        expected.extend(insert_batch(20 + round).await);
    }
    got.extend(ids(client.events(expected.len() - got.len(), T).await));
    assert_eq!(got, expected, "every row once, in commit order");
    client.assert_silent(Duration::from_millis(500)).await;
    relay.shutdown().await.unwrap();
}

fn ids(events: Vec<serde_json::Value>) -> Vec<String> {
    events
        .iter()
        .map(|e| e["record"]["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_latency_samples_after_deliveries() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (mut client, _) = connect(&relay, &user_token(user, HOUR), "").await;
    for _ in 0..3 {
        insert_event(&pg, user, "app_open", json!({})).await;
    }
    client.events(3, T).await;
    let metrics = scrape(&relay).await;
    for name in [
        "relay_delivery_latency_seconds_bucket{le=\"0.5\"}",
        "relay_delivery_latency_seconds_count",
        "relay_slo_target_seconds 0.5",
        "relay_events_received_total",
        "relay_events_delivered_total",
        "relay_sessions{role=\"authenticated\"}",
        // Its value is process-wide (last writer wins) and other tests' relays in this process
        // connect and disconnect meanwhile: this relay's own state is `is_streaming` below.
        "relay_replication_connected",
        "relay_replication_lag_bytes",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
    let count: f64 = metrics
        .lines()
        .find(|l| l.starts_with("relay_delivery_latency_seconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(count >= 3.0);
    assert!(relay.is_streaming());
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_publication_is_a_clear_error_at_start() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    pg.batch_execute("DROP PUBLICATION engagement_events_pub")
        .await
        .unwrap();
    let err = engagement_relay::start(db.config())
        .await
        .err()
        .expect("start fails");
    let text = err.to_string();
    assert!(
        text.contains("publication `engagement_events_pub` does not exist"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_on_without_the_relay_starts_the_window_over_and_closes_with_1012() {
    let db = TestDb::new().await;
    let relay = relay_with_slow_reconnects(&db).await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, HOUR);
    let (mut client, _) = connect(&relay, &token, "").await;
    insert_event(&pg, user, "app_open", json!({"n": 1})).await;
    let event = client.events(1, T).await.remove(0);
    let cursor = event["cursor"].as_str().unwrap().to_string();
    // Row 2 is streamed and confirmed by "another relay" while this one is away.
    confirm_elsewhere(&pg, &db.name, async {
        insert_event(&pg, user, "app_open", json!({"n": 2})).await;
    })
    .await;
    assert_eq!(client.close_code(T * 2).await, 1012, "told to resume");
    let (mut resumed, _) = connect(&relay, &token, &format!("&since={cursor}")).await;
    let frame = resumed.next_json(T).await.unwrap();
    assert_eq!(frame["type"], "recovered");
    assert_eq!(frame["complete"], false, "row 2 never reached this relay");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_reading_the_same_wal_issue_the_same_cursors() {
    let db = TestDb::new().await;
    let first = db.relay().await;
    let second = db
        .relay_with(|c| c.database.slot = format!("{}_b", db.name))
        .await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, HOUR);
    let (mut a, _) = connect(&first, &token, "").await;
    let (mut b, _) = connect(&second, &token, "").await;
    pg.batch_execute(&format!(
        "INSERT INTO public.engagement_events (user_id, event_type) \
         SELECT '{user}', 'app_open' FROM generate_series(1, 3)"
    ))
    .await
    .unwrap();
    let cursors = |events: Vec<serde_json::Value>| -> Vec<String> {
        events.iter().map(|e| e["cursor"].to_string()).collect()
    };
    let (from_a, from_b) = (cursors(a.events(3, T).await), cursors(b.events(3, T).await));
    assert_eq!(from_a, from_b);
    // So a client may resume on the other relay.
    let last = from_a[2].trim_matches('"').to_string();
    let (mut resumed, _) = connect(&second, &token, &format!("&since={last}")).await;
    let frame = resumed.next_json(T).await.unwrap();
    assert_eq!(
        (frame["type"].as_str(), frame["complete"].as_bool()),
        (Some("recovered"), Some(true))
    );
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}
