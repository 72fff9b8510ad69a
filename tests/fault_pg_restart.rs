//! PostgreSQL restarted (fast, then immediate stop) under a steady insert load: the relay
//! reconnects by itself, `/readyz` follows the stream, and clients that stay connected receive
//! every committed row exactly once, in commit order, without reconnecting: native sessions and
//! a Supabase Realtime channel alike. (On a cluster of its own: it restarts it.)

use std::time::Duration;

use crate::common::workload::{assert_exact, committed, settle, Load, Record, Recorder};
use crate::common::{create_user, private_cluster, user_token, wait_until, TestDb};
use futures_util::{SinkExt, StreamExt};
use relay_testkit::pgcluster::StopMode;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);

async fn readyz(relay: &engagement_relay::Relay) -> u16 {
    let url = format!("http://{}/readyz", relay.server_addr());
    reqwest::get(&url).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_clients_see_every_event_across_postgresql_restarts() {
    let cluster = private_cluster().await;
    let db = TestDb::on(&cluster).await;
    let relay = db.relay().await;
    assert_eq!(readyz(&relay).await, 200);
    let pg = db.client().await;
    let users = vec![create_user(&pg).await, create_user(&pg).await];
    let (_addr, rx) = watch::channel(relay.server_addr());
    let recorders: Vec<_> = users
        .iter()
        .map(|u| Recorder::start(rx.clone(), *u, true))
        .collect();
    for r in &recorders {
        r.subscribed().await;
    }
    let (stop_channel, channel) = realtime_channel(&relay, users[0]).await;
    let load = Load::start(&db.url, users.clone(), 50, 0);

    for (round, mode) in [StopMode::Fast, StopMode::Immediate]
        .into_iter()
        .enumerate()
    {
        let before = 10 * (round + 1);
        for r in &recorders {
            assert!(r.wait(T, |rec| rec.seqs.len() >= before).await);
        }
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.stop(mode))
            .await
            .unwrap()
            .unwrap();
        wait_until("the relay notices the outage", T, || !relay.is_streaming()).await;
        assert_eq!(readyz(&relay).await, 503);
        // The HTTP API answers with a JSON 503 while the database is down, not a hang or a 500.
        let (status, body) = post_event(&relay, users[0]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("database_unavailable")),
            "{body}"
        );
        let c = cluster.clone();
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
    let _ = stop_channel.send(());
    let expected = committed(&pg).await.remove(&users[0]).unwrap();
    assert_exact(users[0], &channel.await.unwrap(), &expected);
    for record in &records {
        assert_eq!(record.connects, 1, "never reconnected");
    }
    let metrics = crate::common::scrape(&relay).await;
    assert!(metrics.contains("relay_replication_reconnects_total"));
    relay.shutdown().await.unwrap();
}

/// Joins a Supabase Realtime channel (vsn 2.0.0) on `postgres_changes` INSERT for `user`, and
/// collects the `seq` of every row it receives until told to stop. Panics if the socket closes.
async fn realtime_channel(
    relay: &engagement_relay::Relay,
    user: Uuid,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Record>) {
    let token = user_token(user, Duration::from_secs(3600));
    let url = format!(
        "ws://{}/realtime/v1/websocket?apikey={token}&vsn=2.0.0",
        relay.server_addr()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let binding = json!({"event": "INSERT", "schema": "public", "table": "engagement_events",
                         "filter": format!("user_id=eq.{user}")});
    let join = json!(["1", "1", "realtime:faults", "phx_join",
        {"config": {"postgres_changes": [binding]}, "access_token": token}]);
    ws.send(Message::text(join.to_string())).await.unwrap();
    // The join reply and the system message come first.
    let mut joined = 0;
    while joined < 2 {
        if let Some(Ok(Message::Text(_))) = ws.next().await {
            joined += 1;
        }
    }
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut record = Record::default();
        loop {
            let msg = tokio::select! {
                _ = &mut stopped => return record,
                msg = ws.next() => msg,
            };
            let Some(Ok(Message::Text(text))) = msg else {
                assert!(
                    matches!(msg, Some(Ok(_))),
                    "the channel's socket ended: {msg:?}"
                );
                continue;
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame[3] == "postgres_changes" {
                let row = &frame[4]["data"]["record"];
                record.leaks += usize::from(row["user_id"] != json!(user.to_string()));
                record.seqs.push(row["value"]["seq"].as_i64().unwrap());
            }
        }
    });
    (stop, task)
}

/// `POST /v1/events` of one event for `user`; the status and the JSON body.
async fn post_event(relay: &engagement_relay::Relay, user: Uuid) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/events", relay.server_addr()))
        .bearer_auth(user_token(user, Duration::from_secs(3600)))
        .body(json!({"user_id": user, "event_type": "app_open"}).to_string())
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null),
    )
}
