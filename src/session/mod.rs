//! One task per WebSocket session: writes queued event frames (batched, one flush per wake-up),
//! reads client frames, pings, and enforces token expiry.
//!
//! Close codes (PROTOCOL.md): 1000 normal, 1001 server shutting down, 1008 malformed or
//! oversized client frame, 4001 token expired or invalid, 4003 refresh changed identity,
//! 4008 slow consumer.

pub mod native;
pub mod phoenix;
pub mod realtime;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use metrics::{counter, histogram, Counter, Histogram};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::auth::{now_s, AuthError, Principal, Verifier};
use crate::config::LimitsConfig;
use crate::filter::Interest;
use crate::metrics as m;
use crate::model::{now_unix_us, Cursor, Event, InvalidCursor};
use crate::router::{Router, Subscription};
use crate::tables::Tables;

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a malformed or oversized client frame.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: the token expired or a refresh was invalid.
pub const CLOSE_TOKEN: u16 = 4001;
/// Close code: a refreshed token changed `sub` or role.
pub const CLOSE_IDENTITY: u16 = 4003;
/// Close code: the session's queue filled up.
pub const CLOSE_SLOW: u16 = 4008;
/// Close code (RFC 6455 registry: Service Restart): the replay window started over (the
/// database was restored, or the slot moved on without this relay); reconnect with `since`.
pub const CLOSE_RESTART: u16 = 1012;

/// Most events written per flush.
const BATCH: usize = 256;
/// How long one control frame (ready, ping, error, close) may take to leave before the peer is
/// treated as gone.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a session may take on shutdown to write what is still queued for it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What a session needs besides its socket.
pub struct SessionContext {
    /// The router the session is subscribed to.
    pub router: Arc<Router>,
    /// The streamed tables and their columns (Supabase bindings name them).
    pub tables: Arc<Tables>,
    /// Validates refreshed tokens.
    pub verifier: Arc<Verifier>,
    /// Ping interval and idle timeout.
    pub limits: LimitsConfig,
    /// Cancelled when the relay shuts down.
    pub shutdown: CancellationToken,
    /// Cancelled when the replay window starts over ([`Router::restart_signal`]).
    pub restart: CancellationToken,
}

/// Why a session ended, as the close frame sent.
pub(crate) struct Close {
    code: u16,
    reason: String,
}

impl Close {
    pub(crate) fn new(code: u16, reason: impl Into<String>) -> Close {
        Close {
            code,
            reason: reason.into(),
        }
    }
}

/// Runs a native-protocol session until it closes. `interest` narrows the events; `since`
/// (the `since` query parameter, parsed) resumes after that cursor: the missed events, then a
/// `recovered` frame, then live events. A malformed cursor gets an `error` frame and 1008.
pub async fn run_native(
    mut ws: WebSocket,
    ctx: SessionContext,
    mut principal: Principal,
    interest: Interest,
    since: Option<Result<Cursor, InvalidCursor>>,
) {
    let session_id = uuid::Uuid::new_v4().to_string();
    let since = match since.transpose() {
        Ok(since) => since,
        Err(e) => {
            let text = native::error("invalid_cursor", &format!("since: {e}"));
            let _ = send(&mut ws, Message::Text(text)).await;
            let close = Close::new(CLOSE_POLICY, "invalid cursor");
            return finish(&mut ws, Some(close), &session_id).await;
        }
    };
    let overflow = CancellationToken::new();
    let mut sub = ctx
        .router
        .subscribe(&principal, interest, overflow.clone(), since);
    // With `since`, the client holds everything up to its cursor; otherwise the stream starts
    // after the subscription's position.
    let ready = native::ready(&session_id, &principal, since.unwrap_or(sub.position));
    debug!(session_id, user_id = ?principal.user_id, role = principal.role.as_str(), "session opened");

    let delivery = Delivery::new();
    let close = match send(&mut ws, Message::Text(ready)).await {
        Ok(()) => match replay(&mut ws, &ctx, &mut sub, since, &delivery).await {
            Ok(skip) => {
                serve(
                    &mut ws,
                    &ctx,
                    &mut sub,
                    &overflow,
                    &mut principal,
                    skip,
                    &delivery,
                )
                .await
            }
            Err(close) => close,
        },
        Err(()) => None,
    };
    ctx.router.unsubscribe(sub.ticket);
    finish(&mut ws, close, &session_id).await;
}

/// Writes the missed events and the `recovered` frame of a resuming session. Returns the cursor
/// live events must be newer than (a `since` ahead of this relay's position), or the close.
async fn replay(
    ws: &mut WebSocket,
    ctx: &SessionContext,
    sub: &mut Subscription,
    since: Option<Cursor>,
    delivery: &Delivery,
) -> Result<Option<Cursor>, Option<Close>> {
    let (Some(since), Some(replay)) = (since, sub.replay.take()) else {
        return Ok(None);
    };
    for chunk in replay.events.chunks(BATCH) {
        if ctx.shutdown.is_cancelled() {
            return Err(Some(Close::new(CLOSE_GOING_AWAY, "server shutting down")));
        }
        let write = async {
            for event in chunk {
                ws.feed(native_text(event)).await?;
            }
            ws.flush().await
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, write).await {
            Ok(Ok(())) => delivery.record_replayed(chunk.len()),
            _ => return Err(None),
        }
    }
    let (cursor, skip) = match replay.complete && since > sub.position {
        true => (since, Some(since)),
        false => (sub.position, None),
    };
    let recovered = native::recovered(replay.complete, replay.events.len(), cursor);
    send(ws, Message::Text(recovered))
        .await
        .map_err(|()| None)?;
    Ok(skip)
}

/// The close for a session whose stream started over: its client must resume with `since`.
pub(crate) fn restarted() -> Close {
    Close::new(CLOSE_RESTART, "the stream restarted; reconnect with since")
}

/// Counts the close and sends its frame (bounded), unless the peer is already gone.
pub(crate) async fn finish(ws: &mut WebSocket, close: Option<Close>, session: &str) {
    if let Some(close) = close {
        counter!(m::SESSIONS_CLOSED, "code" => close.code.to_string()).increment(1);
        if close.code == CLOSE_SLOW {
            info!(session, "closed a slow consumer (4008)");
        }
        let frame = CloseFrame {
            code: close.code,
            reason: Utf8Bytes::from(truncate(close.reason)),
        };
        let _ = send(ws, Message::Close(Some(frame))).await;
    }
    debug!(session, "session closed");
}

/// The session loop; returns the close to send, or `None` when the peer is gone.
///
/// Priorities: shutdown and overflow first, then the token's expiry, then the client's frames
/// and pings (so a busy stream never starves refreshes and pongs), then queued events.
async fn serve(
    ws: &mut WebSocket,
    ctx: &SessionContext,
    sub: &mut Subscription,
    overflow: &CancellationToken,
    principal: &mut Principal,
    skip: Option<Cursor>,
    delivery: &Delivery,
) -> Option<Close> {
    let mut batch: Vec<Arc<Event>> = Vec::with_capacity(BATCH);
    let mut ping = tokio::time::interval(ctx.limits.ping_interval);
    ping.reset();
    let mut last_seen = Instant::now();
    let expiry = sleep_until(expiry_instant(
        principal.expires_at,
        ctx.verifier.leeway_s(),
    ));
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => {
                // Replication has stopped dispatching: deliver what is queued, then 1001.
                while let Ok(event) = sub.rx.try_recv() {
                    batch.push(event);
                }
                drop_seen(&mut batch, skip);
                if tokio::time::timeout(DRAIN_TIMEOUT, write_batch(ws, &mut batch, delivery)).await.is_err() {
                    return None;
                }
                return Some(Close::new(CLOSE_GOING_AWAY, "server shutting down"));
            }
            _ = overflow.cancelled() => return Some(Close::new(CLOSE_SLOW, "slow consumer: queue full")),
            _ = ctx.restart.cancelled() => return Some(restarted()),
            _ = &mut expiry => {
                let text = native::error("token_expired", "the access token expired; reconnect with a fresh token");
                let _ = send(ws, Message::Text(text)).await;
                return Some(Close::new(CLOSE_TOKEN, "token expired"));
            }
            msg = ws.next() => {
                last_seen = Instant::now();
                match msg {
                    None => return None,
                    Some(Err(e)) => return on_read_error(e),
                    Some(Ok(Message::Text(text))) => {
                        if let Some(close) = on_client_text(ws, ctx, principal, &text).await {
                            return Some(close);
                        }
                        // A refresh may have moved the expiry.
                        expiry.as_mut().reset(expiry_instant(principal.expires_at, ctx.verifier.leeway_s()));
                    }
                    Some(Ok(Message::Binary(_))) => {
                        return Some(Close::new(CLOSE_POLICY, "binary frames are not accepted"));
                    }
                    Some(Ok(Message::Close(_))) => return Some(Close::new(CLOSE_NORMAL, "")),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > ctx.limits.idle_timeout {
                    debug!("dropping a session whose peer stopped answering pings");
                    return None;
                }
                if send(ws, Message::Ping(Default::default())).await.is_err() {
                    return None;
                }
            }
            n = sub.rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    // The router dropped the queue: it overflowed.
                    return Some(Close::new(CLOSE_SLOW, "slow consumer: queue full"));
                }
                drop_seen(&mut batch, skip);
                // A shutdown lets the batch finish (it is delivered, then 1001); an overflow
                // does not wait for a peer that stopped reading.
                let written = tokio::select! {
                    biased;
                    _ = overflow.cancelled() => return Some(Close::new(CLOSE_SLOW, "slow consumer: queue full")),
                    r = write_batch(ws, &mut batch, delivery) => r,
                };
                if written.is_err() {
                    return None;
                }
            }
        }
    }
}

/// Drops the events a client resuming from a cursor ahead of this relay already has.
fn drop_seen(batch: &mut Vec<Arc<Event>>, skip: Option<Cursor>) {
    if let Some(skip) = skip {
        batch.retain(|e| e.cursor > skip);
    }
}

/// The event's native frame as a text message. The model keeps frames as `Bytes`; this checks
/// them as UTF-8 (they are JSON the relay wrote, so it always is) without copying.
fn native_text(event: &Event) -> Message {
    Message::Text(Utf8Bytes::try_from(event.native_frame()).unwrap_or_default())
}

/// Writes every queued frame, flushes once, then records delivery latency and empties `batch`.
async fn write_batch(
    ws: &mut WebSocket,
    batch: &mut Vec<Arc<Event>>,
    delivery: &Delivery,
) -> Result<(), axum::Error> {
    if batch.is_empty() {
        return Ok(());
    }
    for event in batch.iter() {
        ws.feed(native_text(event)).await?;
    }
    ws.flush().await?;
    delivery.record(batch);
    batch.clear();
    Ok(())
}

/// Delivery accounting of one session, with its metric handles looked up once.
pub(crate) struct Delivery {
    latency: Histogram,
    delivered: Counter,
}

impl Delivery {
    pub(crate) fn new() -> Delivery {
        Delivery {
            latency: histogram!(m::DELIVERY_LATENCY),
            delivered: counter!(m::EVENTS_DELIVERED),
        }
    }

    /// Records frames just written: delivery latency (commit → now) and the delivered count.
    pub(crate) fn record(&self, events: &[Arc<Event>]) {
        let now = now_unix_us();
        for event in events {
            self.latency
                .record((now - event.commit_time_us).max(0) as f64 / 1e6);
        }
        self.delivered.increment(events.len() as u64);
    }

    /// Records `n` replayed frames just written: delivered, but no latency sample (they were
    /// held back for a reconnecting client, not late).
    pub(crate) fn record_replayed(&self, n: usize) {
        self.delivered.increment(n as u64);
    }
}

/// Sends one frame, giving up after [`CLOSE_TIMEOUT`] (a peer that stopped reading).
pub(crate) async fn send(ws: &mut WebSocket, msg: Message) -> Result<(), ()> {
    match tokio::time::timeout(CLOSE_TIMEOUT, ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// A read error: an oversized or malformed frame closes with 1008; a broken connection just
/// ends the session.
fn on_read_error(e: axum::Error) -> Option<Close> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<WsError>()) {
        Some(WsError::Capacity(c)) => {
            Some(Close::new(CLOSE_POLICY, format!("frame too large: {c}")))
        }
        Some(WsError::Protocol(p)) => Some(Close::new(CLOSE_POLICY, format!("bad frame: {p}"))),
        Some(WsError::Utf8(_)) => Some(Close::new(CLOSE_POLICY, "bad frame: invalid UTF-8")),
        _ => None,
    }
}

/// Handles a client text frame; returns a close when the session must end.
async fn on_client_text(
    ws: &mut WebSocket,
    ctx: &SessionContext,
    principal: &mut Principal,
    text: &str,
) -> Option<Close> {
    let native::ClientFrame::AccessToken { access_token } = match native::parse_client_frame(text) {
        Ok(frame) => frame,
        Err(reason) => return Some(Close::new(CLOSE_POLICY, truncate(reason))),
    };
    match ctx.verifier.verify(&access_token) {
        Ok(new) if new.user_id == principal.user_id && new.role == principal.role => {
            principal.expires_at = new.expires_at;
            None
        }
        // A valid token of another user or role (including `anon`): identity changed.
        Ok(_) | Err(AuthError::Forbidden(_)) => {
            let text = native::error(
                "identity_changed",
                "a refreshed token must keep the same sub and role",
            );
            let _ = send(ws, Message::Text(text)).await;
            Some(Close::new(CLOSE_IDENTITY, "token identity changed"))
        }
        Err(e) => {
            counter!(m::AUTH_FAILURES, "reason" => e.code()).increment(1);
            let _ = send(ws, Message::Text(native::error(e.code(), &e.to_string()))).await;
            Some(Close::new(CLOSE_TOKEN, "invalid token"))
        }
    }
}

/// The instant a token expiring at `exp` (Unix seconds) runs out, with the configured leeway
/// (the same the upgrade allowed).
fn expiry_instant(exp: i64, leeway_s: i64) -> Instant {
    let left = exp
        .saturating_add(leeway_s)
        .saturating_sub(now_s())
        .clamp(0, 366 * 86_400);
    Instant::now() + Duration::from_secs(left as u64)
}

/// Close reasons are limited to 123 bytes by RFC 6455.
fn truncate(mut reason: String) -> String {
    if reason.len() > 120 {
        let mut end = 120;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}
