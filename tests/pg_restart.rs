//! PostgreSQL restarted mid-stream: the relay reconnects by itself, `/readyz` follows the
//! stream, and inserts made after the restart arrive. (Own test binary: it restarts the shared
//! cluster.)

mod common;

use std::time::Duration;

use common::ws::connect;
use common::{cluster, create_user, insert_event, user_token, wait_until, TestDb};
use engagement_relay::pgcluster::StopMode;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

async fn readyz(relay: &engagement_relay::Relay) -> u16 {
    let url = format!("http://{}/readyz", relay.server_addr());
    reqwest::get(&url).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reconnects_after_postgresql_restarts() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    assert_eq!(readyz(&relay).await, 200);
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (mut client, _) = connect(&relay, &user_token(user, Duration::from_secs(3600)), "").await;
    insert_event(&pg, user, "app_open", json!({"n": 1})).await;
    client.events(1, T).await;
    drop(pg);

    for mode in [StopMode::Fast, StopMode::Immediate] {
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
        assert_eq!(readyz(&relay).await, 200);
        let pg = db.client().await;
        let id = insert_event(&pg, user, "app_open", json!({"after": format!("{mode:?}")})).await;
        let got = client.events(1, T).await.remove(0);
        assert_eq!(
            got["record"]["id"],
            id.to_string(),
            "after a {mode:?} restart"
        );
    }
    let metrics = common::scrape(&relay).await;
    assert!(metrics.contains("relay_replication_reconnects_total"));
    relay.shutdown().await.unwrap();
}
