//! PostgreSQL restarted (fast, then immediate stop) under a steady insert load: the relay
//! reconnects by itself, `/readyz` follows the stream, and clients that stay connected receive
//! every committed row exactly once, in commit order, without reconnecting. (Own test binary:
//! it restarts this binary's cluster.)

mod common;

use std::time::Duration;

use common::workload::{settle, Load, Recorder};
use common::{cluster, create_user, wait_until, TestDb};
use engagement_relay::pgcluster::StopMode;
use tokio::sync::watch;

const T: Duration = Duration::from_secs(30);

async fn readyz(relay: &engagement_relay::Relay) -> u16 {
    let url = format!("http://{}/readyz", relay.server_addr());
    reqwest::get(&url).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_clients_see_every_event_across_postgresql_restarts() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    assert_eq!(readyz(&relay).await, 200);
    let pg = db.client().await;
    let users = vec![create_user(&pg).await, create_user(&pg).await];
    let (_addr, rx) = watch::channel(relay.server_addr());
    let recorders: Vec<_> = users
        .iter()
        .map(|u| Recorder::start(rx.clone(), *u, true))
        .collect();
    let load = Load::start(&db.url, users.clone(), 50, 0);

    for (round, mode) in [StopMode::Fast, StopMode::Immediate]
        .into_iter()
        .enumerate()
    {
        let before = 10 * (round + 1);
        for r in &recorders {
            assert!(r.wait(T, |rec| rec.seqs.len() >= before).await);
        }
        let c = cluster().await;
        tokio::task::spawn_blocking(move || c.stop(mode))
            .await
            .unwrap()
            .unwrap();
        wait_until("the relay notices the outage", T, || !relay.is_streaming()).await;
        assert_eq!(readyz(&relay).await, 503);
        tokio::task::spawn_blocking(move || c.restart_server())
            .await
            .unwrap()
            .unwrap();
        wait_until("the relay reconnects", T, || relay.is_streaming()).await;
        assert_eq!(readyz(&relay).await, 200, "after a {mode:?} restart");
    }
    for r in &recorders {
        assert!(r.wait(T, |rec| rec.seqs.len() >= 40).await);
    }
    let pg = db.client().await;
    let records = settle(&pg, load, recorders, T).await;
    for record in &records {
        assert_eq!(record.connects, 1, "never reconnected");
    }
    let metrics = common::scrape(&relay).await;
    assert!(metrics.contains("relay_replication_reconnects_total"));
    relay.shutdown().await.unwrap();
}
