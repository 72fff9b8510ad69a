//! A real WebSocket client (tokio-tungstenite) for the native protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use engagement_relay::Relay;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A connected client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How an upgrade ended: connected, or refused with an HTTP status and JSON body.
pub enum Upgrade {
    /// The session is open.
    Open(Box<Client>),
    /// Refused before the handshake.
    Refused(u16, Value),
}

/// Opens `/v1/events` with `query` (e.g. `access_token=…&event_type=a`).
pub async fn upgrade(relay: &Relay, query: &str, bearer: Option<&str>) -> Upgrade {
    upgrade_addr(relay.server_addr(), query, bearer).await
}

/// [`upgrade`] on the relay listening at `addr` (a relay process, say).
pub async fn upgrade_addr(addr: SocketAddr, query: &str, bearer: Option<&str>) -> Upgrade {
    let url = format!("ws://{addr}/v1/events?{query}");
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Upgrade::Open(Box::new(Client { ws })),
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Upgrade::Refused(status, body)
        }
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

/// Connects with `access_token=<token>` plus `extra` query and consumes the `ready` frame.
pub async fn connect(relay: &Relay, token: &str, extra: &str) -> (Client, Value) {
    connect_addr(relay.server_addr(), token, extra).await
}

/// [`connect`] to the relay listening at `addr` (a relay process, say).
pub async fn connect_addr(addr: SocketAddr, token: &str, extra: &str) -> (Client, Value) {
    match upgrade_addr(addr, &format!("access_token={token}{extra}"), None).await {
        Upgrade::Open(mut client) => {
            let ready = client
                .next_json(Duration::from_secs(10))
                .await
                .expect("ready frame");
            assert_eq!(ready["type"], "ready", "{ready}");
            (*client, ready)
        }
        Upgrade::Refused(status, body) => panic!("refused with {status}: {body}"),
    }
}

/// Opens `url` (`wss://…/v1/events?access_token=…`) through rustls with `tls` (trusting a test
/// CA) and consumes the `ready` frame.
pub async fn connect_tls(url: &str, tls: Arc<rustls::ClientConfig>) -> (Client, Value) {
    let connector = tokio_tungstenite::Connector::Rustls(tls);
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
            .await
            .unwrap_or_else(|e| panic!("wss upgrade failed: {e}"));
    let mut client = Client { ws };
    let ready = client
        .next_json(Duration::from_secs(10))
        .await
        .expect("ready frame");
    assert_eq!(ready["type"], "ready", "{ready}");
    (client, ready)
}

/// What the next frame was.
#[derive(Debug)]
pub enum Next {
    /// A JSON text frame.
    Json(Value),
    /// A close frame with its code and reason.
    Closed(u16, String),
    /// The connection ended without a close frame.
    Gone,
    /// Nothing within the timeout.
    Timeout,
}

impl Client {
    /// The next frame (pings and pongs skipped).
    pub async fn next(&mut self, timeout: Duration) -> Next {
        loop {
            let msg = match tokio::time::timeout(timeout, self.ws.next()).await {
                Err(_) => return Next::Timeout,
                Ok(None) | Ok(Some(Err(_))) => return Next::Gone,
                Ok(Some(Ok(msg))) => msg,
            };
            match msg {
                Message::Text(t) => {
                    return Next::Json(serde_json::from_str(&t).expect("JSON frame"))
                }
                Message::Close(frame) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((u16::from(CloseCode::Status), String::new()));
                    return Next::Closed(code, reason);
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Binary(_) => panic!("unexpected binary frame"),
            }
        }
    }

    /// The next JSON frame, or `None` if something else came first.
    pub async fn next_json(&mut self, timeout: Duration) -> Option<Value> {
        match self.next(timeout).await {
            Next::Json(v) => Some(v),
            _ => None,
        }
    }

    /// Collects `n` event frames (failing loudly on anything else or a timeout).
    pub async fn events(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next(timeout).await {
                Next::Json(v)
                    if matches!(v["type"].as_str(), Some("insert" | "update" | "delete")) =>
                {
                    out.push(v)
                }
                other => panic!("expected {n} events, got {} then {other:?}", out.len()),
            }
        }
        out
    }

    /// Asserts nothing arrives within `quiet`.
    pub async fn assert_silent(&mut self, quiet: Duration) {
        match self.next(quiet).await {
            Next::Timeout => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Reads until a close frame; returns its code (skipping any events still queued).
    pub async fn close_code(&mut self, timeout: Duration) -> u16 {
        self.close_frame(timeout).await.0
    }

    /// Reads until a close frame; returns its code and reason (skipping any events still queued).
    pub async fn close_frame(&mut self, timeout: Duration) -> (u16, String) {
        loop {
            match self.next(timeout).await {
                Next::Json(_) => continue,
                Next::Closed(code, reason) => return (code, reason),
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }
}
