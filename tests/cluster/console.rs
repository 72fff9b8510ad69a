//! The operator's console across nodes (issue 16) on a real `nats-server -js` and real relay
//! nodes: presence shared through the JetStream bucket (a user connected on one node is online
//! on every node, `presence` frames included), admin actions announced on the control subject
//! (a disconnect or revocation issued on one node closes the user's sessions on the others), a
//! crashed node's users leaving presence within `presence.node_timeout`, and a stopped node's
//! at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::support::{nats, node_with, process_node_with, shutdown, user_and_token, T};
use crate::common::ws::{self, connect, connect_addr, Client, Upgrade};
use crate::common::{metric, scrape, service_token, user_token, wait_until_async, TestDb};
use engagement_relay::Relay;

/// `presence.node_timeout` in these tests (its minimum).
const NODE_TIMEOUT: Duration = Duration::from_secs(3);

/// `n` cluster nodes with `presence.node_timeout` = `timeout`, started one after the other.
async fn nodes(db: &TestDb, url: &str, n: usize, timeout: Duration) -> Vec<Relay> {
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(node_with(db, url, |c| c.presence.node_timeout = timeout).await);
    }
    nodes
}

/// `GET /v1/presence/{user}` on the node at `addr`, with a service token.
async fn presence(addr: SocketAddr, user: Uuid) -> Value {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/v1/presence/{user}"))
        .bearer_auth(service_token())
        .send()
        .await
        .expect("GET /v1/presence");
    assert_eq!(response.status(), 200, "GET /v1/presence/{user} on {addr}");
    response.json().await.expect("a JSON body")
}

/// Waits (at most `within`) until the node at `addr` reports `user` with `online`; returns
/// the presence it reported.
async fn wait_presence(addr: SocketAddr, user: Uuid, online: bool, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let seen = presence(addr, user).await;
        if seen["online"] == online {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {addr} reports user {user} online={online}: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST` `path` on the node at `addr` with a service token and `body`: status and JSON body.
async fn admin(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .bearer_auth(service_token())
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The next `presence` frame about `user` on a service session opened with `presence=true`.
async fn presence_frame(ws: &mut Client, user: Uuid) -> Value {
    loop {
        let frame = ws.next_json(T).await.expect("a presence frame");
        if frame["type"] == "presence" && frame["user_id"] == user.to_string() {
            return frame;
        }
    }
}

/// `GET path` on the node at `addr` with a service token: its JSON body (status 200).
async fn service_get(addr: SocketAddr, path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(service_token())
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(response.status(), 200, "GET {path} on {addr}");
    response.json().await.expect("a JSON body")
}

/// Waits until every one of `relays` sees `n` nodes' heartbeats.
async fn presence_nodes(relays: &[&Relay], n: f64) {
    for relay in relays {
        wait_until_async("every node sees every heartbeat", T, || async {
            metric(&scrape(relay).await, "relay_cluster_presence_nodes") == n
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_connected_on_one_node_is_online_on_every_node_and_in_presence_frames() {
    let nats = nats().await;
    let db = TestDb::new().await;
    let relays = nodes(&db, &nats.url(), 3, NODE_TIMEOUT).await;
    let (a, b, c) = (&relays[0], &relays[1], &relays[2]);
    presence_nodes(&[a, b, c], 3.0).await;
    let pg = db.client().await;
    let (user, token) = user_and_token(&pg).await;
    let (mut watcher, _) = connect(b, &service_token(), "&presence=true").await;
    assert_eq!(presence(c.server_addr(), user).await["online"], false);

    // One node holds the slot and says so; the others are standbys.
    wait_until_async(
        "one publisher and two standbys in /v1/status",
        T,
        || async {
            let mut roles = Vec::new();
            for relay in [a, b, c] {
                let status = service_get(relay.server_addr(), "/v1/status").await;
                roles.push(
                    status["node"]["role"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            roles.sort();
            roles == ["publisher", "standby", "standby"]
        },
    )
    .await;

    let (session, ready) = connect(a, &token, "").await;
    let seen = wait_presence(c.server_addr(), user, true, T).await;
    // The per-user view is the answering node's: A has the session, C none.
    let on_a = service_get(a.server_addr(), &format!("/v1/status/users/{user}")).await;
    assert_eq!(
        on_a["sessions"][0]["session_id"], ready["session_id"],
        "{on_a}"
    );
    let on_c = service_get(c.server_addr(), &format!("/v1/status/users/{user}")).await;
    assert_eq!(
        (&on_c["online"], &on_c["sessions"]),
        (&json!(true), &json!([])),
        "{on_c}"
    );
    let status_c = service_get(c.server_addr(), "/v1/status").await;
    assert_eq!(status_c["presence"]["online_users"], 1, "{status_c}");
    assert_eq!(status_c["sessions"]["total"], 0, "{status_c}");
    let status_b = service_get(b.server_addr(), "/v1/status").await;
    assert_eq!(status_b["sessions"]["native"], 1, "the watcher: {status_b}");
    assert_eq!(seen["sessions"], 1, "{seen}");
    assert_eq!(
        seen["endpoints"],
        json!({"native": 1, "realtime": 0}),
        "{seen}"
    );
    assert!(seen["online_since"].is_string(), "{seen}");
    let frame = presence_frame(&mut watcher, user).await;
    assert_eq!(
        frame,
        json!({"type": "presence", "user_id": user, "online": true, "sessions": 1})
    );

    drop(session);
    let frame = presence_frame(&mut watcher, user).await;
    assert_eq!(
        frame,
        json!({"type": "presence", "user_id": user, "online": false, "sessions": 0})
    );
    wait_presence(c.server_addr(), user, false, T).await;
    wait_until_async("C reports the user's last_seen", T, || async {
        presence(c.server_addr(), user).await["last_seen"].is_string()
    })
    .await;
    shutdown(relays).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_or_a_revocation_issued_on_one_node_closes_the_users_sessions_on_the_others() {
    let nats = nats().await;
    let db = TestDb::new().await;
    let relays = nodes(&db, &nats.url(), 3, NODE_TIMEOUT).await;
    let (a, b, c) = (&relays[0], &relays[1], &relays[2]);
    let pg = db.client().await;
    let (user, token) = user_and_token(&pg).await;
    // The token's `iat` is at most this second.
    let minted = Utc::now().timestamp();

    // A disconnect issued on B closes the sessions on A and C.
    let (mut on_a, _) = connect(a, &token, "").await;
    let (mut on_c, _) = connect(c, &token, "").await;
    let (status, body) = admin(
        b.server_addr(),
        &format!("/v1/admin/users/{user}/disconnect"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["closed_on_node"], 0, "{body}");
    assert_eq!(on_a.close_code(T).await, 4004);
    assert_eq!(on_c.close_code(T).await, 4004);

    // A revocation issued on A closes the sessions on B and C, and C refuses the token.
    let (mut on_b, _) = connect(b, &token, "").await;
    let (mut on_c, _) = connect(c, &token, "").await;
    let issued_before = DateTime::from_timestamp(minted + 1, 0).unwrap();
    let (status, body) = admin(
        a.server_addr(),
        "/v1/admin/revocations",
        json!({"user_id": user, "issued_before": issued_before}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(on_b.close_code(T).await, 4001);
    assert_eq!(on_c.close_code(T).await, 4001);
    match ws::upgrade(c, &format!("access_token={token}"), None).await {
        Upgrade::Refused(status, body) => {
            assert_eq!(status, 401, "{body}");
            assert_eq!(body["error"], "token_revoked", "{body}");
        }
        Upgrade::Open(_) => panic!("C accepted a revoked token"),
    }
    // A token issued at or after `issued_before` (`iat` has a resolution of 1 s) is accepted.
    wait_until_async("the clock reaches issued_before", T, || async {
        Utc::now() >= issued_before
    })
    .await;
    let fresh = user_token(user, Duration::from_secs(3600));
    let (_on_c, ready) = connect(c, &fresh, "").await;
    assert_eq!(ready["type"], "ready");

    // The actions went over core NATS only: the event stream holds none of them.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream("ENGAGEMENT_RELAY")
        .await
        .expect("the event stream");
    let control = engagement_relay::cluster::control::subject("relay");
    assert!(
        stream
            .get_last_raw_message_by_subject(&control)
            .await
            .is_err(),
        "the event stream captured {control}"
    );
    shutdown(relays).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_nodes_users_leave_presence_within_the_node_timeout() {
    let nats = nats().await;
    let db = TestDb::new().await;
    let timeout = format!("{}s", NODE_TIMEOUT.as_secs());
    let crashed = process_node_with(
        &db,
        &nats.url(),
        &[("RELAY_PRESENCE__NODE_TIMEOUT", &timeout)],
    )
    .await;
    let relays = nodes(&db, &nats.url(), 1, NODE_TIMEOUT).await;
    let observer = &relays[0];
    presence_nodes(&[observer], 2.0).await;
    let pg = db.client().await;
    let (user, token) = user_and_token(&pg).await;
    let (_session, _) = connect_addr(crashed.addr, &token, "").await;
    let seen = wait_presence(observer.server_addr(), user, true, T).await;
    assert_eq!(seen["sessions"], 1, "{seen}");

    let killed_at = Instant::now();
    crashed.kill().unwrap();
    // Its last heartbeat was at most a third of the timeout before the kill; silent nodes are
    // looked for every second: 3 × the timeout is a bound with room to spare, and far below
    // the default (15 s) a misread setting would give.
    let gone = wait_presence(observer.server_addr(), user, false, NODE_TIMEOUT * 3).await;
    eprintln!(
        "cluster presence: SIGKILL of a node → its user offline elsewhere: {:?}",
        killed_at.elapsed()
    );
    assert_eq!(gone["sessions"], 0, "{gone}");
    wait_until_async("the observer reports the user's last_seen", T, || async {
        presence(observer.server_addr(), user).await["last_seen"].is_string()
    })
    .await;
    presence_nodes(&[observer], 1.0).await;
    shutdown(relays).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_nodes_users_leave_presence_at_once() {
    let nats = nats().await;
    let db = TestDb::new().await;
    // A node timeout longer than the wait below: only the stop itself can explain the offline.
    let long = Duration::from_secs(60);
    let mut relays = nodes(&db, &nats.url(), 2, long).await;
    let pg = db.client().await;
    let (user, token) = user_and_token(&pg).await;
    let (_session, _) = connect(&relays[0], &token, "").await;
    let observer = relays[1].server_addr();
    wait_presence(observer, user, true, T).await;

    let stopped = relays.remove(0);
    stopped.shutdown().await.unwrap();
    wait_presence(observer, user, false, T).await;
    shutdown(relays).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_rebuilt_after_nats_restarts_with_an_empty_memory_bucket() {
    let mut nats = nats().await;
    let db = TestDb::new().await;
    let relays = nodes(&db, &nats.url(), 2, NODE_TIMEOUT).await;
    let (a, b) = (&relays[0], &relays[1]);
    let pg = db.client().await;
    let (stays, stays_token) = user_and_token(&pg).await;
    let (leaves, leaves_token) = user_and_token(&pg).await;
    let (_stays, _) = connect(a, &stays_token, "").await;
    let (leaving, _) = connect(a, &leaves_token, "").await;
    wait_presence(b.server_addr(), stays, true, T).await;
    wait_presence(b.server_addr(), leaves, true, T).await;

    // The bucket is in memory: the restarted server has none of its keys. One user leaves
    // while NATS is down (A cannot write the delete then).
    tokio::task::block_in_place(|| nats.stop()).unwrap();
    drop(leaving);
    wait_until_async("A counts the user gone", T, || async {
        presence(a.server_addr(), leaves).await["online"] == false
    })
    .await;
    tokio::task::block_in_place(|| nats.restart()).unwrap();
    presence_nodes(&[a, b], 2.0).await;

    wait_presence(b.server_addr(), leaves, false, T).await;
    // Past the grace after B's new watch, in which every count must be confirmed again: the
    // user still connected was put again by A.
    tokio::time::sleep(NODE_TIMEOUT + Duration::from_secs(2)).await;
    let seen = presence(b.server_addr(), stays).await;
    assert_eq!(seen["online"], true, "{seen}");
    assert_eq!(seen["sessions"], 1, "{seen}");
    shutdown(relays).await;
}
