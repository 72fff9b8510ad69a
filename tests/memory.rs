//! Memory is returned (issue 12): after a burst of 10,000 sessions that each received events,
//! and after the replay window drained, the relay binary's resident memory
//! (`process_resident_memory_bytes`, which this also checks is exported) falls back to within
//! 2× of what it was before the burst, within a minute. Under glibc malloc it stayed at the
//! peak; the binary now runs on jemalloc with background purging.
//!
//! The real binary (the allocator is the binary's), 10,000 real WebSocket clients on loopback,
//! bounded in count and time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::common::process::start_ready;
use crate::common::{metric, user_token, TestDb};

/// Sessions in the burst.
const SESSIONS: usize = 10_000;
/// Users they belong to (25 sessions each: under the default per-user cap).
const USERS: usize = 400;
/// Events inserted during the burst (each delivered to its owner's 25 sessions).
const EVENTS: usize = 20_000;
/// Upgrades in flight at once.
const CONNECTING: usize = 200;
/// How long the relay has to give the memory back.
const RETURN_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_after_a_burst_of_sessions_and_a_window_drain() {
    engagement_relay::limits::raise_nofile_limit();
    let db = TestDb::new().await;
    let pg = db.client().await;
    // A short window, so that it drains by age soon after the burst.
    let relay = start_ready(&db, &[("RELAY_REPLAY__WINDOW", "3s")]).await;
    let rss = || async { metric(&relay.scrape().await, "process_resident_memory_bytes") };

    let users: Vec<Uuid> = pg
        .query(
            "INSERT INTO auth.users (id, email)
             SELECT gen_random_uuid(), 'burst' || n || '@example.com' FROM generate_series(1, $1::int) n
             RETURNING id",
            &[&(USERS as i32)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Warm up (one session, a few events) so lazily built state counts in the baseline.
    let warm = open(relay.addr, &users[..1], 1).await;
    insert_events(&pg, &users[..1], 10).await;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = rss().await;
    assert!(before > 0.0, "process_resident_memory_bytes is exported");

    let sessions = open(relay.addr, &users, SESSIONS).await;
    insert_events(&pg, &users, EVENTS).await;
    let readers: Vec<_> = sessions
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                // Read what arrives for a moment, then close.
                let until = tokio::time::Instant::now() + Duration::from_secs(3);
                while let Ok(Some(Ok(_))) = tokio::time::timeout_at(until, ws.next()).await {}
                let _ = ws.close(None).await;
            })
        })
        .collect();
    let peak = rss().await;
    for reader in readers {
        reader.await.unwrap();
    }
    let exposition = relay.scrape().await;
    eprintln!(
        "RSS before {:.1} MiB, at the peak {:.1} MiB; window {} events",
        before / 1048576.0,
        peak / 1048576.0,
        metric(&exposition, "relay_replay_window_events")
    );

    let started = Instant::now();
    let after = loop {
        let exposition = relay.scrape().await;
        let now = metric(&exposition, "process_resident_memory_bytes");
        let drained = metric(&exposition, "relay_replay_window_events") == 0.0
            && metric(&exposition, "relay_sessions{role=\"authenticated\"}") == 0.0;
        if drained && now <= 2.0 * before {
            break now;
        }
        assert!(
            started.elapsed() < RETURN_WITHIN,
            "RSS {:.1} MiB is over 2x the {:.1} MiB before the burst {RETURN_WITHIN:?} after it \
             (drained: {drained})",
            now / 1048576.0,
            before / 1048576.0
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!(
        "RSS {:.1} MiB {:.1} s after the burst ({:.2}x before)",
        after / 1048576.0,
        started.elapsed().as_secs_f64(),
        after / before
    );
    relay.terminate(Duration::from_secs(30)).await.unwrap();
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `n` native sessions spread over `users` ([`CONNECTING`] upgrades at a time), each
/// having received its `ready` frame.
async fn open(addr: std::net::SocketAddr, users: &[Uuid], n: usize) -> Vec<Socket> {
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = format!(
                "ws://{addr}/v1/events?access_token={}",
                user_token(users[i % users.len()], Duration::from_secs(600))
            );
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                    .await
                    .unwrap();
                match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                    Ok(Some(Ok(Message::Text(_)))) => ws,
                    other => panic!("no ready frame: {other:?}"),
                }
            })
        })
        .collect();
    let mut sockets = Vec::with_capacity(n);
    for task in tasks {
        sockets.push(task.await.unwrap());
    }
    sockets
}

/// Inserts `n` events spread over `users`, in one statement.
async fn insert_events(pg: &tokio_postgres::Client, users: &[Uuid], n: usize) {
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, event_type, value)
         SELECT ($1::uuid[])[1 + n % array_length($1::uuid[], 1)], 'burst', jsonb_build_object('n', n)
         FROM generate_series(1, $2::int) n",
        &[&users, &(n as i32)],
    )
    .await
    .unwrap();
}
