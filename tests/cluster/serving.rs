//! Serving from the stream: every node writes the same frames; clients spread over three nodes
//! receive exactly their own user's events, once and in commit order, on every node; the slot
//! is confirmed on PubAck, not a replay window later; a node started late rebuilds its window
//! from JetStream (the slot no longer has those events); when the publisher stops, the standby
//! takes the slot and a client of the stopped node resumes on it without a gap.

use std::time::Duration;

use super::support::{
    confirmed_lsn, first_node, nats, node, node_with, nodes, publisher, replay, shutdown,
    slot_confirmed_past_commits, user_and_token, Clients, T,
};
use crate::common::workload::Load;
use crate::common::ws::{connect, Client};
use crate::common::{create_user, insert_event, wait_until, TestDb};
use engagement_relay::model::Cursor;
use engagement_relay::Relay;
use serde_json::json;
use uuid::Uuid;

/// A first node on `db` and NATS `url` holding the slot, a client of the database, a user, their
/// token and a live session of theirs on the node.
async fn first_node_and_session(
    db: &TestDb,
    url: &str,
) -> (Relay, tokio_postgres::Client, Uuid, String, Client) {
    let first = first_node(db, url).await;
    let pg = db.client().await;
    let (user, token) = user_and_token(&pg).await;
    let (live, _) = connect(&first, &token, "").await;
    (first, pg, user, token, live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_the_same_frames_and_the_slot_is_confirmed_on_puback() {
    let nats = nats().await;
    let db = TestDb::new().await;
    let nodes = nodes(&db, &nats.url(), 2).await;
    publisher(&nodes).await;
    let pg = db.client().await;
    let (user, token) = user_and_token(&pg).await;
    let (mut a, _) = connect(&nodes[0], &token, "").await;
    let (mut b, _) = connect(&nodes[1], &token, "").await;
    for n in 0..5 {
        insert_event(&pg, user, "app_open", json!({ "n": n })).await;
    }
    let from_a = a.events(5, T).await;
    let from_b = b.events(5, T).await;
    assert_eq!(from_a, from_b, "both nodes write the same frames");
    // The default replay window is minutes; PubAcks confirm within seconds.
    slot_confirmed_past_commits(&pg, &db).await;
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_three_nodes_get_exactly_their_own_events_on_every_node() {
    let nats = nats().await;
    let db = TestDb::new().await;
    let nodes = nodes(&db, &nats.url(), 3).await;
    publisher(&nodes).await;
    let pg = db.client().await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(create_user(&pg).await);
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.server_addr()).collect();
    let clients = Clients::start(&addrs, &users).await;
    // Every fifth statement commits three users' rows in one transaction.
    let load = Load::start(&db.url, users.clone(), 100, 0);
    clients.received(25).await;
    for (node, record) in clients.settle(&pg, load).await {
        assert_eq!(
            record.connects, 1,
            "a client of node {node} had to reconnect"
        );
        assert!(record.recovered.is_empty(), "node {node}: {record:?}");
    }
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_node_rebuilds_its_window_from_jetstream_not_from_the_slot() {
    let nats = nats().await;
    let db = TestDb::new().await;
    let (first, pg, user, token, mut live) = first_node_and_session(&db, &nats.url()).await;
    for n in 0..8 {
        insert_event(&pg, user, "app_open", json!({ "n": n })).await;
    }
    let seen = live.events(8, T).await;
    let since = seen[2]["cursor"].as_str().unwrap().to_string();
    let cursor: Cursor = since.parse().unwrap();
    // The slot has moved past the cursor: only JetStream still holds what follows it.
    slot_confirmed_past_commits(&pg, &db).await;
    assert!(confirmed_lsn(&pg, &db.name).await as u64 > cursor.lsn);

    let late = node(&db, &nats.url()).await;
    assert!(!late.holds_slot(), "the late node is a standby");
    let (mut resumed, _) = connect(&late, &token, &format!("&since={since}")).await;
    assert_eq!(resumed.events(5, T).await, seen[3..]);
    let recovered = resumed.next_json(T).await.unwrap();
    assert_eq!(recovered["type"], "recovered", "{recovered}");
    assert_eq!(recovered["complete"], true, "{recovered}");
    assert_eq!(recovered["replayed"], 5, "{recovered}");
    // And it serves live events too.
    insert_event(&pg, user, "app_open", json!({ "n": 8 })).await;
    assert_eq!(resumed.events(1, T).await, live.events(1, T).await);
    late.shutdown().await.unwrap();
    first.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_rebuilt_from_inside_a_transaction_does_not_claim_its_earlier_rows() {
    let nats = nats().await;
    let db = TestDb::new().await;
    let (first, pg, user, token, mut live) = first_node_and_session(&db, &nats.url()).await;
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, event_type, value) \
         SELECT $1, 'app_open', jsonb_build_object('n', n) FROM generate_series(1, 4) n",
        &[&user],
    )
    .await
    .unwrap();
    let mut seen = live.events(4, T).await;
    // Rows the activity trigger wrote in the same transaction, if streamed, come too.
    while let Some(frame) = live.next_json(Duration::from_millis(300)).await {
        seen.push(frame);
    }
    let cursors: Vec<Cursor> = seen
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        cursors.iter().all(|c| c.lsn == cursors[0].lsn),
        "one transaction"
    );
    let since = cursors[0];

    // The late node reads back only the stream's last two messages: rows of that transaction
    // after the first, not all of them. It must not call a replay of those complete.
    let late = node_with(&db, &nats.url(), |c| c.replay.max_events = 2).await;
    let (replayed, recovered) = replay(&late, &token, &since.to_string()).await;
    if recovered["complete"] == true {
        assert_eq!(
            replayed,
            seen[1..],
            "complete, so every row after the cursor"
        );
    } else {
        assert!(replayed.is_empty(), "{recovered}");
    }
    late.shutdown().await.unwrap();
    first.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_publisher_stops_the_standby_takes_the_slot_and_clients_resume_on_it() {
    let nats = nats().await;
    let db = TestDb::new().await;
    let first = first_node(&db, &nats.url()).await;
    let second = node(&db, &nats.url()).await;
    let pg = db.client().await;
    let (user, token) = user_and_token(&pg).await;
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
