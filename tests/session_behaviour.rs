//! One session engine, two protocols: every behaviour the engine owns, run against both
//! endpoints with real clients — native `/v1/events`, and `/realtime/v1/websocket` with a
//! Phoenix (vsn 2.0.0) client joined to one `postgres_changes` channel.
//!
//! Shutdown delivers what is queued, then closes 1001; a client's close frame is echoed; a slow
//! consumer receives its 4008; a client reading as fast as it can receives a maximal
//! transaction at the default queue size; an oversized client frame closes with 1009; an
//! unreadable frame is answered (native: `error` then 1008; Realtime: a `phx_reply` error, the
//! socket stays); an idle peer is dropped; an expired token ends the session (native, 4001) or
//! its channel (Realtime); a restarted stream closes with 1012. Assertions are about what
//! arrives, never about how fast.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::process::{start_ready, PROCESS_WAIT};
use crate::common::{
    confirm_elsewhere, create_user, metric, relay_with_slow_reconnects, user_token, wait_until,
    wait_until_async, TestDb,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const T: Duration = Duration::from_secs(20);
const HOUR: Duration = Duration::from_secs(3600);
const TOPIC: &str = "realtime:session";

/// The two endpoints every behaviour runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Native,
    Realtime,
}

const BOTH: [Endpoint; 2] = [Endpoint::Native, Endpoint::Realtime];

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A session on either endpoint.
struct Session {
    ws: Ws,
    endpoint: Endpoint,
}

/// What the next frame was, whatever the protocol.
#[derive(Debug)]
enum Got {
    /// A row change: its `record`.
    Row(Value),
    /// Any other text frame (native: the frame; Realtime: `[join_ref, ref, topic, event,
    /// payload]`).
    Control(Value),
    /// A close frame with its code.
    Closed(u16),
    /// The connection ended without a close frame.
    Gone,
    /// Nothing within the timeout.
    Timeout,
}

impl Session {
    /// Opens a session for `token` on `endpoint` and waits until it streams (native: `ready`;
    /// Realtime: the join reply and "Subscribed to PostgreSQL").
    async fn open(addr: SocketAddr, endpoint: Endpoint, token: &str) -> Session {
        let url = match endpoint {
            Endpoint::Native => format!("ws://{addr}/v1/events?access_token={token}"),
            Endpoint::Realtime => {
                format!("ws://{addr}/realtime/v1/websocket?apikey={token}&vsn=2.0.0")
            }
        };
        let ws = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade")
            .0;
        let mut session = Session { ws, endpoint };
        match endpoint {
            Endpoint::Native => {
                let ready = session.control().await;
                assert_eq!(ready["type"], "ready", "{ready}");
            }
            Endpoint::Realtime => {
                let binding =
                    json!({"event": "*", "schema": "public", "table": "engagement_events"});
                let join = crate::common::phoenix::join(TOPIC, "1", token, json!([binding]));
                session.send(Message::text(join)).await;
                let reply = session.control().await;
                assert_eq!(
                    (&reply[3], &reply[4]["status"]),
                    (&json!("phx_reply"), &json!("ok"))
                );
                let system = session.control().await;
                assert_eq!(system[4]["message"], "Subscribed to PostgreSQL", "{system}");
            }
        }
        session
    }

    async fn send(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The next frame (pings and pongs skipped).
    async fn next(&mut self, timeout: Duration) -> Got {
        loop {
            let msg = match tokio::time::timeout(timeout, self.ws.next()).await {
                Err(_) => return Got::Timeout,
                Ok(None) | Ok(Some(Err(_))) => return Got::Gone,
                Ok(Some(Ok(msg))) => msg,
            };
            let text = match msg {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    return Got::Closed(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Message::Binary(_) => panic!("unexpected binary frame"),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            let value: Value = serde_json::from_str(&text).expect("a JSON frame");
            return match self.endpoint {
                Endpoint::Native if value["type"] == "insert" || value["type"] == "update" => {
                    Got::Row(value["record"].clone())
                }
                Endpoint::Realtime if value[3] == "postgres_changes" => {
                    Got::Row(value[4]["data"]["record"].clone())
                }
                _ => Got::Control(value),
            };
        }
    }

    /// The next frame, which must be a control frame.
    async fn control(&mut self) -> Value {
        match self.next(T).await {
            Got::Control(v) => v,
            other => panic!(
                "{:?}: expected a control frame, got {other:?}",
                self.endpoint
            ),
        }
    }

    /// Reads `n` rows, failing loudly on anything else.
    async fn rows(&mut self, n: usize) -> Vec<Value> {
        let mut rows = Vec::with_capacity(n);
        while rows.len() < n {
            match self.next(T).await {
                Got::Row(r) => rows.push(r),
                other => panic!(
                    "{:?}: {} of {n} rows, then {other:?}",
                    self.endpoint,
                    rows.len()
                ),
            }
        }
        rows
    }

    /// Reads until the close frame (skipping rows); returns its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.next(T).await {
                Got::Row(_) | Got::Control(_) => continue,
                Got::Closed(code) => return code,
                other => panic!("{:?}: expected a close frame, got {other:?}", self.endpoint),
            }
        }
    }

    /// A heartbeat (Realtime) answered `ok`: the socket is still served.
    async fn assert_alive(&mut self) {
        if self.endpoint == Endpoint::Realtime {
            let heartbeat = json!([null, "hb", "phoenix", "heartbeat", {}]).to_string();
            self.send(Message::text(heartbeat)).await;
            let reply = self.control().await;
            assert_eq!(
                (&reply[1], &reply[4]["status"]),
                (&json!("hb"), &json!("ok"))
            );
        }
    }
}

/// Inserts `n` rows for `user` in one transaction, each with `pad` bytes of padding.
async fn insert_rows(pg: &tokio_postgres::Client, user: Uuid, n: i32, pad: i32) {
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, event_type, value)
         SELECT $1, 'app_open', jsonb_build_object('i', g, 'pad', repeat('x', $3))
         FROM generate_series(1, $2) g",
        &[&user, &n, &pad],
    )
    .await
    .expect("insert rows");
}

/// The `i` of each row, which must be 1..=n in order.
fn assert_in_order(endpoint: Endpoint, rows: &[Value], n: usize) {
    let is: Vec<u64> = rows
        .iter()
        .map(|r| r["value"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(
        is,
        (1..=n as u64).collect::<Vec<_>>(),
        "{endpoint:?}: every row, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_what_is_queued_then_closes_1001() {
    let db = TestDb::new().await;
    let relay = start_ready(&db, &[]).await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, HOUR);
    let mut sessions = Vec::new();
    for endpoint in BOTH {
        sessions.push(Session::open(relay.addr, endpoint, &token).await);
    }
    // Rows the clients do not read yet, more than the sockets hold: 1,500 rows of ~4 KB: the socket buffers hold a few MB, so hundreds of events are still
    // queued in the relay — more than one cooperative-scheduling budget (128 channel reads),
    // which a drain that stopped at the budget would lose.
    const N: usize = 1_500;
    insert_rows(&pg, user, N as i32, 4_000).await;
    wait_until_async("the relay received every row", T, || async {
        metric(&relay.scrape().await, "relay_events_received_total") >= N as f64
    })
    .await;
    let stop = tokio::spawn(relay.terminate(PROCESS_WAIT));
    let readers = sessions.into_iter().map(|mut session| async move {
        let rows = session.rows(N).await;
        assert_in_order(session.endpoint, &rows, N);
        assert_eq!(session.close_code().await, 1001, "{:?}", session.endpoint);
    });
    futures_util::future::join_all(readers).await;
    let (status, _) = stop.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_frame_is_echoed_then_the_connection_ends() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let token = user_token(Uuid::new_v4(), HOUR);
    for endpoint in BOTH {
        let mut session = Session::open(relay.server_addr(), endpoint, &token).await;
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        session.send(Message::Close(Some(close))).await;
        assert!(
            matches!(session.next(T).await, Got::Closed(1000)),
            "{endpoint:?}: the close frame is echoed"
        );
        assert!(matches!(session.next(T).await, Got::Gone), "{endpoint:?}");
    }
    wait_until("both sessions are gone", T, || {
        relay.router().session_counts() == (0, 0)
    })
    .await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_receives_its_4008() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| c.limits.session_queue = std::num::NonZero::new(64).unwrap())
        .await;
    let pg = db.client().await;
    for endpoint in BOTH {
        let user = create_user(&pg).await;
        let mut session =
            Session::open(relay.server_addr(), endpoint, &user_token(user, HOUR)).await;
        // ~10 MB the client does not read: more than its socket and its queue hold.
        insert_rows(&pg, user, 500, 20_000).await;
        let router = relay.router().clone();
        wait_until("the router dropped the slow session", T, || {
            router.session_counts().0 == 0
        })
        .await;
        assert_eq!(session.close_code().await, 4008, "{endpoint:?}");
    }
    let metrics = crate::common::scrape(&relay).await;
    assert!(
        metric(&metrics, "relay_sessions_closed_total{code=\"4008\"}") >= 2.0,
        "{metrics}"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_client_receives_a_maximal_transaction_at_the_default_queue_size() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let max_batch = engagement_relay::config::Config::default()
        .ingest
        .max_batch
        .get();
    let pg = db.client().await;
    for endpoint in BOTH {
        let user = create_user(&pg).await;
        let mut session =
            Session::open(relay.server_addr(), endpoint, &user_token(user, HOUR)).await;
        let reader = tokio::spawn(async move {
            let rows = session.rows(max_batch).await;
            (session, rows)
        });
        insert_rows(&pg, user, max_batch as i32, 0).await;
        let (mut session, rows) = reader.await.unwrap();
        assert_in_order(endpoint, &rows, max_batch);
        session.assert_alive().await;
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_client_frame_closes_with_1009() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| c.limits.max_client_frame_bytes = 1024)
        .await;
    let token = user_token(Uuid::new_v4(), HOUR);
    for endpoint in BOTH {
        let mut session = Session::open(relay.server_addr(), endpoint, &token).await;
        session.send(Message::text("x".repeat(4096))).await;
        assert_eq!(session.close_code().await, 1009, "{endpoint:?}");
    }
    let metrics = crate::common::scrape(&relay).await;
    // The recorder is process-wide (other tests close with 1009 too): at least these two.
    assert!(
        metric(&metrics, "relay_sessions_closed_total{code=\"1009\"}") >= 2.0,
        "{metrics}"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_frame_is_answered_with_an_error() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let token = user_token(Uuid::new_v4(), HOUR);
    let unreadable = [
        Message::text("{not json"),
        Message::text(r#"{"type":"subscribe"}"#),
        Message::binary(vec![1u8, 2, 3]),
    ];
    for endpoint in BOTH {
        for frame in unreadable.clone() {
            let mut session = Session::open(relay.server_addr(), endpoint, &token).await;
            session.send(frame.clone()).await;
            let answer = session.control().await;
            match endpoint {
                Endpoint::Native => {
                    assert_eq!(answer["type"], "error", "{frame:?}: {answer}");
                    assert_eq!(session.close_code().await, 1008, "{frame:?}");
                }
                Endpoint::Realtime => {
                    assert_eq!(answer[3], "phx_reply", "{frame:?}: {answer}");
                    assert_eq!(answer[4]["status"], "error", "{frame:?}: {answer}");
                    session.assert_alive().await;
                }
            }
        }
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_peer_is_dropped() {
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| {
            c.limits.ping_interval = Duration::from_millis(100);
            c.limits.idle_timeout = Duration::from_millis(500);
        })
        .await;
    let token = user_token(Uuid::new_v4(), HOUR);
    for endpoint in BOTH {
        // A client that stops reading never answers the pings.
        let mut session = Session::open(relay.server_addr(), endpoint, &token).await;
        wait_until("the idle session is dropped", T, || {
            relay.router().session_counts() == (0, 0)
        })
        .await;
        assert!(matches!(session.next(T).await, Got::Gone), "{endpoint:?}");
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_ends_the_session_or_its_channel() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    for endpoint in BOTH {
        let token = user_token(Uuid::new_v4(), Duration::from_secs(2));
        let mut session = Session::open(relay.server_addr(), endpoint, &token).await;
        let notice = session.control().await;
        match endpoint {
            Endpoint::Native => {
                assert_eq!(notice["code"], "token_expired", "{notice}");
                assert_eq!(session.close_code().await, 4001);
            }
            Endpoint::Realtime => {
                assert_eq!((&notice[2], &notice[3]), (&json!(TOPIC), &json!("system")));
                let message = notice[4]["message"].as_str().unwrap();
                assert!(message.starts_with("Token has expired"), "{notice}");
                let close = session.control().await;
                assert_eq!(close[3], "phx_close", "{close}");
                session.assert_alive().await;
            }
        }
        wait_until("the expired subscription is gone", T, || {
            relay.router().session_counts() == (0, 0)
        })
        .await;
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_stream_closes_with_1012() {
    let db = TestDb::new().await;
    let relay = relay_with_slow_reconnects(&db).await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, HOUR);
    let mut sessions = Vec::new();
    for endpoint in BOTH {
        sessions.push(Session::open(relay.server_addr(), endpoint, &token).await);
    }
    confirm_elsewhere(&pg, &db.name, insert_rows(&pg, user, 1, 0)).await;
    for session in &mut sessions {
        assert_eq!(session.close_code().await, 1012, "{:?}", session.endpoint);
    }
    relay.shutdown().await.unwrap();
}
