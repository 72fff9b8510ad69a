//! WebSocket sessions: each connects from its own loopback source address, waits for `ready`,
//! then records every event it receives (sequence number, latencies, leaks) until stopped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
pub use tokio_util::sync::CancellationToken as StopToken;

/// What one session is for.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// Index of the user it belongs to, or `None` for a service-role (firehose) session.
    pub user: Option<usize>,
    /// The user's UUID as text (compared with each record's `user_id`).
    pub user_id: Option<String>,
    /// `ws://…/v1/events?access_token=…` (or `wss://`).
    pub url: String,
    /// For `wss://`: the client configuration trusting the relay's CA (`--ca`, `--tls`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The relay's address.
    pub relay: SocketAddr,
    /// Loopback source address (127.0.0.x) to spread local ports over.
    pub source: IpAddr,
    /// Where to resume (`url` with `&since=<cursor>` appended, and its address) when the relay
    /// drops the session before `stop`, tried in turn from the first, round and round, until
    /// `stop`. Empty: the session ends when the relay drops it (single-node mode).
    pub resume_to: Vec<(String, SocketAddr)>,
}

/// What one session saw.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SessionOutcome {
    /// Reached `ready`.
    pub connected: bool,
    /// Connection error, if it never connected.
    pub error: Option<String>,
    /// Close code sent by the relay, if it closed the session.
    pub close_code: Option<u16>,
    /// Sequence numbers received, in arrival order.
    pub seqs: Vec<u64>,
    /// Events whose `user_id` was not this session's user.
    pub leaks: u64,
    /// Commit → receive latency per event, µs.
    pub commit_latency_us: Vec<u32>,
    /// Insert sent → receive latency per event, µs.
    pub send_latency_us: Vec<u32>,
    /// Times it resumed (`since`) on another node after the relay dropped it.
    #[serde(default)]
    pub resumes: u32,
    /// Resumes answered `recovered` with `complete:false`.
    #[serde(default)]
    pub incomplete_resumes: u32,
}

/// Counters shared by all sessions, for progress and straggler waits.
#[derive(Debug, Default)]
pub struct Live {
    /// Sessions that reached `ready`.
    pub ready: AtomicUsize,
    /// Sessions that failed to connect or ended.
    pub failed: AtomicUsize,
    /// Events received by all sessions.
    pub received: AtomicU64,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    commit_timestamp: Option<&'a str>,
    #[serde(default, borrow)]
    record: Option<Record<'a>>,
    #[serde(default, borrow)]
    cursor: Option<&'a str>,
    #[serde(default)]
    complete: Option<bool>,
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    user_id: &'a str,
    value: Probe,
}

#[derive(Deserialize)]
struct Probe {
    seq: u64,
    sent_us: i64,
}

/// The loopback source address for session `i`: 127.0.0.1 … 127.0.0.250.
pub fn source_address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 250) as u8))
}

/// Runs one session until `stop`; never panics on what the relay sends. With `resume_to`, a
/// session the relay drops resumes with `since` on the next address until `stop`.
pub async fn run(spec: SessionSpec, live: Arc<Live>, stop: StopToken) -> SessionOutcome {
    let mut out = SessionOutcome::default();
    let (mut ws, mut cursor) = match open(&spec.url, spec.relay, &spec).await {
        Ok(opened) => opened,
        Err(e) => {
            live.failed.fetch_add(1, Ordering::Relaxed);
            out.error = Some(e);
            return out;
        }
    };
    out.connected = true;
    live.ready.fetch_add(1, Ordering::Relaxed);
    let mut next_target = 0usize;
    loop {
        let dropped = serve(&mut ws, &mut out, &spec, &live, &stop, &mut cursor).await;
        if !dropped || spec.resume_to.is_empty() {
            return out;
        }
        // Resume elsewhere with the last cursor seen, until `stop`.
        let Some(since) = cursor.clone() else {
            return out;
        };
        loop {
            if stop.is_cancelled() {
                return out;
            }
            let (url, addr) = &spec.resume_to[next_target % spec.resume_to.len()];
            next_target += 1;
            let url = format!("{url}&since={since}");
            match connect(&url, *addr, &spec).await {
                Ok(resumed) => {
                    ws = resumed;
                    out.resumes += 1;
                    live.failed.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                Err(_) => {
                    tokio::select! {
                        _ = stop.cancelled() => return out,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
}

/// Connects to `url` at `relay` and reads the first frame, which must be `ready` (within 30 s);
/// returns the socket and the `ready` frame's cursor.
pub async fn open(
    url: &str,
    relay: SocketAddr,
    spec: &SessionSpec,
) -> Result<(Ws, Option<String>), String> {
    let mut ws = connect(url, relay, spec).await?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.contains("\"ready\"") => {
            let cursor = serde_json::from_str::<Frame>(&t)
                .ok()
                .and_then(|f| f.cursor.map(str::to_string));
            Ok((ws, cursor))
        }
        other => Err(format!("no ready frame: {other:?}")),
    }
}

/// Reads frames until `stop` (false) or until the relay closes or drops the session (true,
/// after counting it in `live.failed`).
pub async fn serve(
    ws: &mut Ws,
    out: &mut SessionOutcome,
    spec: &SessionSpec,
    live: &Live,
    stop: &StopToken,
    cursor: &mut Option<String>,
) -> bool {
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => return false,
            msg = ws.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(text))) => {
                if let Some(c) = record(out, spec, live, text.as_bytes()) {
                    *cursor = Some(c);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                out.close_code = frame.map(|f| u16::from(f.code));
                live.failed.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                live.failed.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
    }
}

/// A session's socket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, relay: SocketAddr, spec: &SessionSpec) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(spec.source, 0))
        .map_err(|e| format!("bind {}: {e}", spec.source))?;
    let stream = tokio::time::timeout(Duration::from_secs(30), socket.connect(relay))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    // tungstenite allocates its read buffer up front (128 KiB by default): keep 50,000
    // sessions affordable for the harness itself.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    // With `tls`, a `wss://` URL is served through rustls (TLS handshake, then the upgrade).
    let connector = spec
        .tls
        .clone()
        .map(tokio_tungstenite::Connector::Rustls)
        .unwrap_or(tokio_tungstenite::Connector::Plain);
    let (ws, _) =
        tokio_tungstenite::client_async_tls_with_config(url, stream, Some(config), Some(connector))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// Accounts one frame; returns its cursor when it is an event (where a resume starts).
fn record(
    out: &mut SessionOutcome,
    spec: &SessionSpec,
    live: &Live,
    text: &[u8],
) -> Option<String> {
    let now = chrono::Utc::now().timestamp_micros();
    let frame = serde_json::from_slice::<Frame>(text).ok()?;
    if frame.kind == "recovered" && frame.complete == Some(false) {
        out.incomplete_resumes += 1;
    }
    if frame.kind != "insert" {
        return None;
    }
    let cursor = frame.cursor.map(str::to_string);
    let Some(record) = frame.record else {
        return cursor;
    };
    if let Some(own) = &spec.user_id {
        if record.user_id != own {
            out.leaks += 1;
        }
    }
    let commit_us = frame
        .commit_timestamp
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_micros())
        .unwrap_or(now);
    out.seqs.push(record.value.seq);
    out.commit_latency_us.push(clamp_us(now - commit_us));
    out.send_latency_us
        .push(clamp_us(now - record.value.sent_us));
    live.received.fetch_add(1, Ordering::Relaxed);
    cursor
}

fn clamp_us(us: i64) -> u32 {
    us.clamp(0, u32::MAX as i64) as u32
}
