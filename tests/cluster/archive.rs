//! The JetStream stream as the cluster's long history (issue 14): a resume whose cursor is
//! older than the node's in-memory window is answered from the stream, complete, with the
//! owner's events only; a user's erased rows are erased from the stream too, so such a
//! resume replays only their deletes.

use std::time::Duration;

use crate::common::ws::{connect, Client};
use crate::common::{
    assert_at_least, create_user, insert_event, scrape, user_token, wait_until_async, TestDb,
};
use async_nats::jetstream;
use engagement_relay::Relay;
use futures_util::StreamExt;
use relay_testkit::nats::NatsServer;

use super::support::{nats, node_with};
use serde_json::{json, Value};
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);

/// A cluster node whose in-memory window holds only the newest 8 events, two users, and a
/// live session of the first.
struct Setup {
    nats: NatsServer,
    _db: TestDb,
    node: Relay,
    pg: tokio_postgres::Client,
    user: Uuid,
    other: Uuid,
    token: String,
    live: Client,
}

impl Setup {
    async fn new() -> Setup {
        let nats = nats().await;
        let db = TestDb::new().await;
        let node = node_with(&db, &nats.url(), |c| c.replay.max_events = 8).await;
        let pg = db.client().await;
        let (user, other) = (create_user(&pg).await, create_user(&pg).await);
        let token = user_token(user, Duration::from_secs(3600));
        let (live, _) = connect(&node, &token, "").await;
        Setup {
            nats,
            _db: db,
            node,
            pg,
            user,
            other,
            token,
            live,
        }
    }
}

/// Reads a resume's replay up to its `recovered` frame: the events, then that frame.
async fn replay(relay: &Relay, token: &str, since: &str) -> (Vec<Value>, Value) {
    let (mut ws, _) = connect(relay, token, &format!("&since={since}")).await;
    let mut events = Vec::new();
    loop {
        let frame = ws.next_json(T).await.expect("a frame before recovered");
        if frame["type"] == "recovered" {
            return (events, frame);
        }
        events.push(frame);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_older_than_the_window_is_answered_from_jetstream() {
    let Setup {
        nats: _nats,
        node,
        pg,
        user,
        other,
        token,
        mut live,
        _db,
    } = Setup::new().await;
    for n in 0..20 {
        insert_event(&pg, user, "app_open", json!({ "n": n })).await;
        insert_event(&pg, other, "app_open", json!({ "n": n })).await;
    }
    let seen = live.events(20, T).await;
    let since = seen[1]["cursor"].as_str().unwrap();

    let (events, recovered) = replay(&node, &token, since).await;
    assert_eq!(recovered["complete"], true, "{recovered}");
    assert_eq!(
        events,
        seen[2..],
        "the user's 18 later events, in order, nobody else's"
    );
    assert_eq!(recovered["replayed"], 18, "{recovered}");
    let metrics = scrape(&node).await;
    let name = "relay_cluster_archive_resumes_total{complete=\"true\"}";
    assert_at_least(&metrics, name, 1.0);

    // A cursor from before the stream began cannot be answered complete.
    let (events, recovered) = replay(&node, &token, &"0".repeat(32)).await;
    assert_eq!(recovered["complete"], false, "{recovered}");
    assert!(events.is_empty());
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_rows_are_erased_from_the_stream_and_no_resume_replays_them() {
    let Setup {
        nats,
        node,
        pg,
        user,
        other,
        token,
        mut live,
        _db,
    } = Setup::new().await;
    for n in 0..6 {
        insert_event(&pg, user, "app_open", json!({ "n": n })).await;
    }
    let seen = live.events(6, T).await;
    let since = seen[0]["cursor"].as_str().unwrap().to_string();
    pg.execute("SELECT * FROM public.delete_user_data($1)", &[&user])
        .await
        .unwrap();
    let deletes = live.events(6, T).await;
    assert!(deletes.iter().all(|d| d["type"] == "delete"), "{deletes:?}");
    // Enough of the other user's events to push the user's out of the in-memory window.
    for n in 0..10 {
        insert_event(&pg, other, "app_open", json!({ "n": n })).await;
    }

    // In the stream, the user's subject keeps only the deletes.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let stream = jetstream::new(client)
        .get_stream("ENGAGEMENT_RELAY")
        .await
        .unwrap();
    let subject = format!("relay.*.*.{user}");
    wait_until_async(
        "the user's inserts are erased from the stream",
        T,
        || async { operations(&stream, &subject).await == vec!["delete"; 6] },
    )
    .await;
    assert_at_least(&scrape(&node).await, "relay_cluster_erased_total", 6.0);

    // A resume from before the deletes replays only them, complete.
    let (events, recovered) = replay(&node, &token, &since).await;
    assert_eq!(recovered["complete"], true, "{recovered}");
    assert_eq!(events, deletes);
    node.shutdown().await.unwrap();
}

/// The `Relay-Op` of every message stored on `subject`, in stream order.
async fn operations(stream: &jetstream::stream::Stream, subject: &str) -> Vec<String> {
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: subject.to_string(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(1000)
        .messages()
        .await
        .unwrap();
    let mut ops = Vec::new();
    while let Some(Ok(message)) = batch.next().await {
        let op = message.headers.as_ref().and_then(|h| h.get("Relay-Op"));
        ops.push(op.map_or("?", |v| v.as_str()).to_string());
    }
    ops
}
