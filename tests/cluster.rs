//! Cluster mode on a real `nats-server -js` (issue 14): two relay nodes on one database and
//! one slot. One holds the slot and publishes; both serve their sessions from the JetStream
//! stream, with the same frames and cursors; the slot is confirmed on PubAck, not a replay
//! window later; when the publisher stops, the standby takes the slot and a client of the
//! stopped node resumes on the other without a gap.

use std::time::Duration;

use crate::common::ws::connect;
use crate::common::{create_user, insert_event, user_token, wait_until, wait_until_async, TestDb};
use engagement_relay::config::Secret;
use engagement_relay::Relay;
use relay_testkit::nats::{NatsOptions, NatsServer};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

async fn nats() -> NatsServer {
    tokio::task::spawn_blocking(|| NatsServer::start(NatsOptions::default()))
        .await
        .unwrap()
        .expect("nats-server starts (apt-get install -y nats-server)")
}

async fn node(db: &TestDb, nats: &NatsServer) -> Relay {
    let url = nats.url();
    db.relay_with(move |c| {
        c.cluster.nats_url = Secret::new(url);
        c.cluster.takeover_interval = Duration::from_millis(200);
    })
    .await
}

async fn confirmed_lsn(pg: &tokio_postgres::Client, slot: &str) -> i64 {
    pg.query_one(
        "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_the_same_frames_and_the_slot_is_confirmed_on_puback() {
    let nats = nats().await;
    let db = TestDb::new().await;
    let first = node(&db, &nats).await;
    let second = node(&db, &nats).await;
    wait_until("one node holds the slot", T, || {
        first.holds_slot() != second.holds_slot()
    })
    .await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, Duration::from_secs(3600));
    let (mut a, _) = connect(&first, &token, "").await;
    let (mut b, _) = connect(&second, &token, "").await;
    for n in 0..5 {
        insert_event(&pg, user, "app_open", json!({ "n": n })).await;
    }
    let from_a = a.events(5, T).await;
    let from_b = b.events(5, T).await;
    assert_eq!(from_a, from_b, "both nodes write the same frames");
    let last: i64 = pg
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap()
        .get(0);
    // The default replay window is minutes; PubAcks confirm within seconds.
    wait_until_async("the slot is confirmed past the events", T, || async {
        confirmed_lsn(&pg, &db.name).await >= last
    })
    .await;
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_publisher_stops_the_standby_takes_the_slot_and_clients_resume_on_it() {
    let nats = nats().await;
    let db = TestDb::new().await;
    let first = node(&db, &nats).await;
    wait_until("the first node holds the slot", T, || first.holds_slot()).await;
    let second = node(&db, &nats).await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, Duration::from_secs(3600));
    let (mut on_first, _) = connect(&first, &token, "").await;
    let (mut on_second, _) = connect(&second, &token, "").await;
    insert_event(&pg, user, "app_open", json!({ "n": 1 })).await;
    let seen = on_first.events(1, T).await.remove(0);
    assert_eq!(on_second.events(1, T).await[0], seen);
    let cursor = seen["cursor"].as_str().unwrap().to_string();

    first.shutdown().await.unwrap();
    assert_eq!(on_first.close_code(T).await, 1001);
    wait_until("the standby takes the slot", T, || second.holds_slot()).await;
    for n in 2..=4 {
        insert_event(&pg, user, "app_open", json!({ "n": n })).await;
    }
    let live = on_second.events(3, T).await;
    // The first node's client resumes on the second node, from its cursor, without a gap.
    let (mut resumed, _) = connect(&second, &token, &format!("&since={cursor}")).await;
    assert_eq!(resumed.events(3, T).await, live);
    let recovered = resumed.next_json(T).await.unwrap();
    assert_eq!(recovered["type"], "recovered", "{recovered}");
    assert_eq!(recovered["complete"], true, "{recovered}");
    second.shutdown().await.unwrap();
}
