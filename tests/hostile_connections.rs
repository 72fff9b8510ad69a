//! Hostile connections (issue 12): silent and slowloris connections are closed within
//! `server.header_timeout`, keep-alive connections within `server.idle_timeout`, and meanwhile
//! `/readyz`, `/metrics` and new sessions keep working; at the open-file limit the relay keeps a
//! reserve for them; a Realtime socket that never joins is closed after `limits.join_timeout`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::common::process::{start_ready_with_open_files, RelayProcess, PROCESS_WAIT};
use crate::common::ws::connect;
use crate::common::{
    assert_at_least, create_user, insert_event, metric, phoenix, scrape, user_token,
    wait_until_async, TestDb,
};

const MINUTE: Duration = Duration::from_secs(60);
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads from `tcp` until the relay closes it (or resets it, or `limit` passes); returns how
/// long after `since` that was, `None` if it stayed open.
async fn closed_after(
    mut tcp: impl AsyncRead + Unpin,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end).await.ok()?;
    Some(since.elapsed())
}

/// Opens `n` TCP connections to `addr`, at most 100 handshakes at a time.
async fn open_many(addr: SocketAddr, n: usize) -> Vec<(TcpStream, Instant)> {
    let mut open = Vec::with_capacity(n);
    while open.len() < n {
        let mut batch = JoinSet::new();
        for _ in 0..(n - open.len()).min(100) {
            batch.spawn(async move {
                let tcp = TcpStream::connect(addr).await.expect("connect");
                (tcp, Instant::now())
            });
        }
        open.extend(batch.join_all().await);
    }
    open
}

/// `GET url` on a fresh connection (no pooling): the status.
async fn status_of(url: &str) -> u16 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    match client.get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_are_closed_within_the_header_timeout_while_the_relay_serves(
) {
    // 2,200 hostile connections plus the relay's ends of them, in this one process.
    engagement_relay::limits::raise_nofile_limit();
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|c| {
            c.server.header_timeout = HEADER_TIMEOUT;
            // The default at a high descriptor limit, below the flood: newcomers take the
            // slots of the connections pending longest, and the probes below still get in.
            c.server.max_pending = std::num::NonZero::new(1024);
        })
        .await;
    let addr = relay.server_addr();
    let started = Instant::now();
    let limit = HEADER_TIMEOUT + Duration::from_secs(10);
    let mut closes = JoinSet::new();
    for (tcp, since) in open_many(addr, 2000).await {
        closes.spawn(closed_after(tcp, since, limit));
    }
    // Slowloris: a request line, then one header byte a second, until the relay closes.
    for (tcp, since) in open_many(addr, 200).await {
        let (read, mut write) = tcp.into_split();
        closes.spawn(async move {
            let drip = async {
                write.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    write.write_all(b"X").await?;
                }
                #[allow(unreachable_code)]
                std::io::Result::Ok(())
            };
            tokio::select! {
                // Writing fails only once the relay has closed the connection.
                _ = drip => Some(since.elapsed()),
                closed = closed_after(read, since, limit) => closed,
            }
        });
    }
    let opened = started.elapsed();
    // Meanwhile the relay serves: readiness, metrics, and a new authenticated session.
    let base = format!("http://{addr}");
    assert_eq!(status_of(&format!("{base}/readyz")).await, 200);
    assert_eq!(status_of(&format!("{base}/healthz")).await, 200);
    let metrics = format!("http://{}/metrics", relay.metrics_addr());
    assert_eq!(status_of(&metrics).await, 200);
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (mut session, _) = connect(&relay, &user_token(user, MINUTE), "").await;

    let mut slowest = Duration::ZERO;
    while let Some(closed) = closes.join_next().await {
        let closed = closed
            .unwrap()
            .expect("a hostile connection was still open");
        slowest = slowest.max(closed);
    }
    eprintln!(
        "2,200 hostile connections opened in {opened:?}; all closed {:?} after the first was \
         opened, the slowest {slowest:?} after its own connect",
        started.elapsed()
    );
    let exposition = scrape(&relay).await;
    let timed_out = metric(
        &exposition,
        "relay_refused_total{reason=\"header_timeout\"}",
    );
    let evicted = metric(&exposition, "relay_refused_total{reason=\"max_pending\"}");
    assert!(evicted >= 1176.0, "2,200 over a cap of 1,024: {evicted}");
    assert!(timed_out + evicted >= 2200.0, "{timed_out} + {evicted}");
    // The upgraded session is not a pending connection: it outlives the header timeout.
    insert_event(&pg, user, "app_open", json!({})).await;
    let events = session.events(1, Duration::from_secs(10)).await;
    assert_eq!(events[0]["record"]["user_id"], user.to_string());
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_trickled_a_byte_at_a_time_gets_408_within_the_request_timeout() {
    let db = TestDb::new().await;
    let timeout = Duration::from_secs(2);
    let relay = db.relay_with(|c| c.server.request_timeout = timeout).await;
    let token = user_token(Uuid::new_v4(), MINUTE);
    let mut tcp = TcpStream::connect(relay.server_addr()).await.unwrap();
    let head = format!(
        "POST /v1/events/batch HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n["
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let since = Instant::now();
    let (mut read, mut write) = tcp.into_split();
    let drip = tokio::spawn(async move {
        while write.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut response = Vec::new();
    let read_all = read.read_to_end(&mut response);
    tokio::time::timeout(timeout + Duration::from_secs(5), read_all)
        .await
        .expect("answered and closed within the request timeout")
        .ok();
    let elapsed = since.elapsed();
    drip.abort();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.contains("\"error\":\"request_timeout\""),
        "{response}"
    );
    assert!(elapsed >= timeout, "{elapsed:?}");
    let exposition = scrape(&relay).await;
    assert_at_least(
        &exposition,
        "relay_refused_total{reason=\"request_timeout\"}",
        1.0,
    );
    relay.shutdown().await.unwrap();
}

/// Sends one `GET /healthz` on `tcp` and reads its whole response (`Content-Length` bytes).
async fn healthz_on(tcp: &mut TcpStream) -> String {
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&response).ends_with("{\"status\":\"ok\"}") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(n > 0, "closed before the response ended");
        response.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_idle_up_to_the_idle_timeout_and_each_head_has_the_header_timeout() {
    let db = TestDb::new().await;
    let idle_timeout = Duration::from_secs(3);
    let header_timeout = Duration::from_secs(1);
    let relay = db
        .relay_with(|c| {
            c.server.header_timeout = header_timeout;
            c.server.idle_timeout = idle_timeout;
        })
        .await;
    let addr = relay.server_addr();
    // Between requests a keep-alive connection is idle, not late with a head: silence longer
    // than the header timeout does not close it.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    assert!(healthz_on(&mut tcp).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(header_timeout * 2).await;
    assert!(healthz_on(&mut tcp).await.starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();
    let closed = closed_after(tcp, idle_since, idle_timeout * 4).await;
    let closed = closed.expect("an idle keep-alive connection is closed");
    assert!(
        closed >= idle_timeout - Duration::from_millis(100),
        "{closed:?}"
    );
    // The next request's head, begun but never finished, has the header timeout.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    assert!(healthz_on(&mut tcp).await.starts_with("HTTP/1.1 200"));
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
    let begun = Instant::now();
    let closed = closed_after(tcp, begun, idle_timeout * 4).await;
    let closed = closed.expect("a half-sent head is closed");
    assert!(
        closed < idle_timeout,
        "{closed:?}: the header timeout applies, not the idle one"
    );
    let exposition = scrape(&relay).await;
    assert_at_least(
        &exposition,
        "relay_refused_total{reason=\"idle_timeout\"}",
        1.0,
    );
    assert_at_least(
        &exposition,
        "relay_refused_total{reason=\"header_timeout\"}",
        1.0,
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realtime_socket_without_a_subscribed_channel_is_closed_after_the_join_timeout_and_one_with_a_channel_stays(
) {
    let db = TestDb::new().await;
    let join_timeout = Duration::from_secs(1);
    let relay = db
        .relay_with(|c| c.limits.join_timeout = join_timeout)
        .await;
    let token = user_token(Uuid::new_v4(), MINUTE);
    // Opened with an opaque key (never checked), then silent.
    let mut idle = phoenix::open(&relay, "sb_publishable_anything", "2.0.0").await;
    // A join refused for its token does not count.
    let mut refused = phoenix::open(&relay, "sb_publishable_anything", "2.0.0").await;
    let invalid = "not.a.jwt";
    let bindings = json!([{"event": "*", "schema": "public"}]);
    let join = phoenix::join("realtime:a", "1", invalid, bindings.clone());
    refused.send(Message::text(join)).await.unwrap();
    assert_eq!(phoenix::next(&mut refused).await[4]["status"], "error");
    // A channel with no postgres_changes binding subscribes nothing and holds no session slot:
    // it does not count either (else one user's sockets could hold every max_sessions permit).
    let mut bare = phoenix::open(&relay, "sb_publishable_anything", "2.0.0").await;
    let join = phoenix::join("realtime:c", "1", &token, json!([]));
    bare.send(Message::text(join)).await.unwrap();
    assert_eq!(phoenix::next(&mut bare).await[4]["status"], "ok");
    // Leaving the last channel starts the deadline again.
    let mut left = phoenix::open(&relay, "sb_publishable_anything", "2.0.0").await;
    let join = phoenix::join("realtime:d", "1", &token, bindings.clone());
    left.send(Message::text(join)).await.unwrap();
    assert_eq!(phoenix::next(&mut left).await[4]["status"], "ok");
    tokio::time::sleep(join_timeout * 2).await;
    let leave = json!(["1", "2", "realtime:d", "phx_leave", {}]).to_string();
    left.send(Message::text(leave)).await.unwrap();
    // A socket that joins stays past the deadline.
    let mut joined = phoenix::open(&relay, "sb_publishable_anything", "2.0.0").await;
    let join = phoenix::join("realtime:b", "1", &token, bindings);
    joined.send(Message::text(join)).await.unwrap();
    assert_eq!(phoenix::next(&mut joined).await[4]["status"], "ok");

    for ws in [&mut idle, &mut refused, &mut bare, &mut left] {
        let close = tokio::time::timeout(join_timeout * 10, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("closed within the join timeout");
        assert_eq!(close, Some(1008));
    }
    tokio::time::sleep(join_timeout).await;
    let heartbeat = json!([null, "9", "phoenix", "heartbeat", {}]).to_string();
    joined.send(Message::text(heartbeat)).await.unwrap();
    let reply: Value = loop {
        let frame = phoenix::next(&mut joined).await;
        if frame[1] == "9" {
            break frame;
        }
    };
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let exposition = scrape(&relay).await;
    assert_at_least(
        &exposition,
        "relay_refused_total{reason=\"join_timeout\"}",
        4.0,
    );
    assert_at_least(
        &exposition,
        "relay_sessions_closed_total{code=\"1008\"}",
        4.0,
    );
    relay.shutdown().await.unwrap();
}

/// The fields of the relay's `session budget` log line.
fn budget_line(relay: &RelayProcess) -> Value {
    relay
        .log()
        .into_iter()
        .map(|line| line["fields"].clone())
        .find(|f| {
            f["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("session budget"))
        })
        .expect("a session budget log line")
}

/// Opens a native session on a relay process; `Err(status)` when the upgrade is refused.
async fn open_session(addr: SocketAddr, token: &str) -> Result<WsStream, u16> {
    let url = format!("ws://{addr}/v1/events?access_token={token}");
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_open_file_limit_readyz_and_metrics_keep_answering() {
    engagement_relay::limits::raise_nofile_limit();
    const FILES: u64 = 1024;
    let db = TestDb::new().await;
    let env = [("RELAY_SERVER__HEADER_TIMEOUT", "2s")];
    let relay = start_ready_with_open_files(&db, &env, FILES).await;
    // The relay derived its cap from the limit it was given, and said so.
    let line = budget_line(&relay);
    let expected = engagement_relay::limits::budget(FILES, None, None, 8);
    assert_eq!(line["open_files"], FILES, "{line}");
    assert_eq!(line["max_sessions"], expected.max_sessions as u64, "{line}");
    assert_eq!(line["max_sessions_from"], "derived", "{line}");
    assert_eq!(line["max_pending"], expected.max_pending as u64, "{line}");

    // Every session slot taken (one user per 25 sessions: under limits.max_sessions_per_user).
    let users: Vec<String> = (0..=expected.max_sessions / 25)
        .map(|_| user_token(Uuid::new_v4(), MINUTE))
        .collect();
    let mut sessions = Vec::with_capacity(expected.max_sessions);
    while sessions.len() < expected.max_sessions {
        let mut batch = JoinSet::new();
        for i in sessions.len()..(sessions.len() + 50).min(expected.max_sessions) {
            let (addr, token) = (relay.addr, users[i / 25].clone());
            batch.spawn(async move { open_session(addr, &token).await });
        }
        for opened in batch.join_all().await {
            sessions.push(opened.expect("a session below the cap"));
        }
    }
    assert_eq!(open_session(relay.addr, &users[0]).await.err(), Some(503));
    // And nearly every pending slot held by silent connections.
    let silent = open_many(relay.addr, expected.max_pending - 8).await;
    let in_use = std::fs::read_dir(format!("/proc/{}/fd", relay.pid()))
        .map(|fds| fds.count())
        .unwrap_or(0);
    eprintln!(
        "{} sessions and {} silent connections: the relay holds {in_use} of {FILES} descriptors",
        sessions.len(),
        silent.len()
    );
    let base = format!("http://{}", relay.addr);
    assert_eq!(status_of(&format!("{base}/readyz")).await, 200);
    assert_eq!(status_of(&format!("{base}/healthz")).await, 200);
    let metrics = format!("http://{}/metrics", relay.metrics_addr);
    assert_eq!(status_of(&metrics).await, 200);
    // Beyond max_pending, newcomers take the slots of the connections pending longest: 20 more
    // than the 8 free slots evict 12 silent ones at once.
    let _beyond = open_many(relay.addr, 20).await;
    let evicted = |e: &str| metric(e, "relay_refused_total{reason=\"max_pending\"}");
    let mut exposition = relay.scrape().await;
    for _ in 0..50 {
        if evicted(&exposition) >= 12.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        exposition = relay.scrape().await;
    }
    assert!(evicted(&exposition) >= 12.0, "{}", evicted(&exposition));
    assert_at_least(
        &exposition,
        "relay_refused_total{reason=\"max_sessions\"}",
        1.0,
    );
    assert_eq!(
        metric(&exposition, "relay_refused_total{reason=\"descriptors\"}"),
        0.0,
        "the reserve kept accept from running out of descriptors"
    );
    drop(silent);
    // The sessions are still served.
    let (addr, token) = (relay.addr, users[0].clone());
    drop(sessions.pop());
    wait_until_async(
        "a freed slot is taken again",
        Duration::from_secs(10),
        || {
            let token = token.clone();
            async move { open_session(addr, &token).await.is_ok() }
        },
    )
    .await;
    let (status, _) = relay.terminate(PROCESS_WAIT).await.unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_backs_off_and_recovers() {
    engagement_relay::limits::raise_nofile_limit();
    const FILES: u64 = 512;
    let db = TestDb::new().await;
    // A cap beyond what the descriptors allow: the reserve is gone (the relay warns).
    // One user holds them all: its own cap is lifted too.
    let env = [
        ("RELAY_SERVER__MAX_SESSIONS", "5000"),
        ("RELAY_LIMITS__MAX_SESSIONS_PER_USER", "5000"),
    ];
    let relay = start_ready_with_open_files(&db, &env, FILES).await;
    assert!(relay.message("server.max_sessions exceeds").is_some());
    let token = user_token(Uuid::new_v4(), MINUTE);
    let mut sessions = Vec::new();
    // Open sessions until the relay cannot take another (at most the limit).
    'fill: while sessions.len() < FILES as usize {
        let mut batch = JoinSet::new();
        for _ in 0..25 {
            let (addr, token) = (relay.addr, token.clone());
            batch.spawn(async move {
                tokio::time::timeout(Duration::from_secs(2), open_session(addr, &token)).await
            });
        }
        for opened in batch.join_all().await {
            match opened {
                Ok(Ok(ws)) => sessions.push(ws),
                Ok(Err(status)) => panic!("refused with {status} below max_sessions"),
                Err(_) => break 'fill,
            }
        }
    }
    assert!(
        sessions.len() < FILES as usize,
        "the descriptors never ran out"
    );
    // Freed descriptors: the relay accepts again, readiness and metrics included.
    drop(sessions);
    let readyz = format!("http://{}/readyz", relay.addr);
    wait_until_async("/readyz answers again", Duration::from_secs(20), || {
        let readyz = readyz.clone();
        async move {
            match reqwest::get(&readyz).await {
                Ok(r) => r.status() == 200,
                Err(_) => false,
            }
        }
    })
    .await;
    let exposition = relay.scrape().await;
    assert_at_least(
        &exposition,
        "relay_refused_total{reason=\"descriptors\"}",
        1.0,
    );
    let (status, _) = relay.terminate(PROCESS_WAIT).await.unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_connections_that_never_sent_a_head() {
    let db = TestDb::new().await;
    // A header timeout far beyond shutdown.grace (5 s in tests).
    let relay = db
        .relay_with(|c| c.server.header_timeout = Duration::from_secs(600))
        .await;
    let silent = open_many(relay.server_addr(), 10).await;
    let mut slow = TcpStream::connect(relay.server_addr()).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    relay
        .shutdown()
        .await
        .expect("shutdown within shutdown.grace");
    drop((silent, slow));
}
