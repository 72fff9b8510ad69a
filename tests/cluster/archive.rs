//! The JetStream stream as the cluster's long history (issue 14): a resume whose cursor is
//! older than the node's in-memory window is answered from the stream, complete, with the
//! owner's events only; a user's erased rows are erased from the stream too, so such a
//! resume replays only their deletes.

use crate::common::ws::{connect, Client};
use crate::common::{assert_at_least, create_user, insert_event, scrape, wait_until_async, TestDb};
use async_nats::jetstream;
use engagement_relay::Relay;
use futures_util::StreamExt;
use relay_testkit::nats::NatsServer;

use super::support::{nats, node_with, replay, user_and_token, T};
use serde_json::json;
use uuid::Uuid;

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
        let (user, token) = user_and_token(&pg).await;
        let other = create_user(&pg).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_older_than_the_window_is_answered_from_jetstream() {
    let mut s = Setup::new().await;
    for n in 0..20 {
        insert_event(&s.pg, s.user, "app_open", json!({ "n": n })).await;
        insert_event(&s.pg, s.other, "app_open", json!({ "n": n })).await;
    }
    let seen = s.live.events(20, T).await;
    let since = seen[1]["cursor"].as_str().unwrap();

    let (events, recovered) = replay(&s.node, &s.token, since).await;
    assert_eq!(recovered["complete"], true, "{recovered}");
    assert_eq!(
        events,
        seen[2..],
        "the user's 18 later events, in order, nobody else's"
    );
    assert_eq!(recovered["replayed"], 18, "{recovered}");
    let metrics = scrape(&s.node).await;
    let name = "relay_cluster_archive_resumes_total{complete=\"true\"}";
    assert_at_least(&metrics, name, 1.0);

    // A cursor from before the stream began cannot be answered complete.
    let (events, recovered) = replay(&s.node, &s.token, &"0".repeat(32)).await;
    assert_eq!(recovered["complete"], false, "{recovered}");
    assert!(events.is_empty());
    s.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_rows_are_erased_from_the_stream_and_no_resume_replays_them() {
    let mut s = Setup::new().await;
    for n in 0..6 {
        insert_event(&s.pg, s.user, "app_open", json!({ "n": n })).await;
    }
    let seen = s.live.events(6, T).await;
    let since = seen[0]["cursor"].as_str().unwrap().to_string();
    s.pg.execute("SELECT * FROM public.delete_user_data($1)", &[&s.user])
        .await
        .unwrap();
    let deletes = s.live.events(6, T).await;
    assert!(deletes.iter().all(|d| d["type"] == "delete"), "{deletes:?}");
    // Enough of the other user's events to push the user's out of the in-memory window.
    for n in 0..10 {
        insert_event(&s.pg, s.other, "app_open", json!({ "n": n })).await;
    }

    // In the stream, the user's subject keeps only the deletes.
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let stream = jetstream::new(client)
        .get_stream("ENGAGEMENT_RELAY")
        .await
        .unwrap();
    let subject = format!("relay.*.*.{}", s.user);
    wait_until_async(
        "the user's inserts are erased from the stream",
        T,
        || async { operations(&stream, &subject).await == vec!["delete"; 6] },
    )
    .await;
    assert_at_least(&scrape(&s.node).await, "relay_cluster_erased_total", 6.0);

    // A resume from before the deletes replays only them, complete.
    let (events, recovered) = replay(&s.node, &s.token, &since).await;
    assert_eq!(recovered["complete"], true, "{recovered}");
    assert_eq!(events, deletes);
    s.node.shutdown().await.unwrap();
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
