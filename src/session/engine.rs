//! The session engine: one driver owns every WebSocket's loop, whatever its protocol.
//!
//! [`run`] selects, in priority order, on (1) shutdown, (2) a queue overflow, (3) a close
//! from outside (an operator's disconnect or a revocation), (4) a stream restart, (5) the token
//! expiry, (6) the join deadline, (7) the client's frames, (8) the ping timer, (9) presence
//! changes (a session that asked for them), (10) queued events; each arm delegates to a `handle_*` method, so the loop reads as a
//! table of contents.
//! Control comes first so that a busy stream never starves a refresh, a pong or a shutdown.
//!
//! A protocol plugs in as a [`Protocol`]: it encodes an event for its session (or skips it),
//! answers a client text frame with replies and/or a close, says when its token(s) expire and
//! what happens then. It subscribes to the router through the session's [`Subscriptions`],
//! which the engine drains: events are written in batches of at most [`BATCH`] frames, fed
//! one by one and flushed once per wake-up.
//!
//! Closing is the engine's alone, identical for both protocols:
//! - shutdown: what is queued is delivered (bounded by [`DRAIN_TIMEOUT`]), then 1001;
//! - overflow (a router queue filled): queued events are dropped, so the 4008 close frame is
//!   the next thing written after what the socket already holds, with its own bounded wait;
//! - a client's close frame is echoed (RFC 6455 §5.5.1), then the connection is dropped;
//! - a client frame over `limits.max_client_frame_bytes` closes with 1009 (RFC 6455 §7.4.1);
//! - a peer from which nothing (not even a pong) arrived for `limits.idle_timeout` is dropped;
//! - a session still [awaiting a join](Protocol::awaiting_join) `limits.join_timeout` after it
//!   opened closes with 1008 (`relay_refused_total{reason="join_timeout"}`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use metrics::{counter, histogram, Counter, Histogram};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub use super::protocol::{text_frame, Frame, Opening, Outcome, Protocol, Unreadable};
pub use super::subscriptions::{Key, Subscriptions};
use super::{Close, SessionContext, CLOSE_INVALID_DATA, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_SLOW};
use crate::auth::now_s;
use crate::metrics as m;
use crate::model::{now_unix_us, Event};
use crate::presence::{Change, Kick};
use crate::refused::{self, Reason};

/// Most events written per flush.
pub const BATCH: usize = 256;
/// How long the close frame (or the echo of the client's), a refusal, or one batch of opening
/// frames may take to leave before the peer is treated as gone. Writes inside the loop (events,
/// replies, pings) are bounded by `limits.idle_timeout` instead, and give way to an overflow.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a session may take on shutdown to write what is still queued for it.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the engine waits for the client's reply to its close frame before dropping the
/// connection (the close handshake of RFC 6455 §7.1.1: the server closes TCP last).
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);
/// The longest single wait for a token's expiry; a later expiry is re-armed after it. The same
/// for both protocols, and short enough that a clock step is noticed within a day.
pub const EXPIRY_CAP: Duration = Duration::from_secs(86_400);

/// Why writing to a socket failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The peer did not take the frames within the bound (it stopped reading).
    #[error("the peer did not read within {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("the connection failed")]
    Socket(#[source] axum::Error),
}

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The server closes: send this close frame.
    Close(Close),
    /// The client sent a close frame: echo it.
    ClientClosed,
    /// The peer is gone (or stopped reading): nothing more can be sent.
    Gone(&'static str),
}

/// Runs a session on `ws` until it closes: the opening frames, then the loop. The future holds
/// its owned arguments once, in the engine (see [`super::unbox`]).
pub fn run<'a, P: Protocol + 'a>(
    ws: WebSocket,
    ctx: &'a SessionContext,
    protocol: P,
    subs: Subscriptions,
    opening: Opening,
    session_id: &'a str,
) -> impl std::future::Future<Output = ()> + 'a {
    run_boxed(Box::new((ws, protocol, subs, opening)), ctx, session_id)
}

async fn run_boxed<P: Protocol>(
    start: Box<(WebSocket, P, Subscriptions, Opening)>,
    ctx: &SessionContext,
    session_id: &str,
) {
    let (ws, protocol, subs, mut opening) = super::unbox(start);
    let presence = opening.presence.take();
    let mut engine = Engine {
        ws,
        ctx,
        protocol,
        presence,
        overflow: subs.overflow(),
        subs,
        delivery: Delivery::new(),
        // Grown on demand: reserved up front, three batches would cost an idle session ~16 KB.
        batch: Vec::new(),
        frames: Vec::new(),
        written: Vec::new(),
        last_seen: Instant::now(),
        leeway_s: ctx.verifier.leeway_s(),
    };
    let end = match engine.handle_opening(opening).await {
        Ok(()) => engine.serve().await,
        Err(end) => end,
    };
    // Nothing more is queued for this session: what was pending is dropped, so a close frame
    // is the next thing written.
    engine.subs.clear();
    finish(&mut engine.ws, end, session_id).await;
}

/// Writes the opening `frames` then `close` on a session that never gets to its loop (a
/// malformed `since`).
pub async fn refuse(mut ws: WebSocket, frames: Vec<Frame>, close: Close, session_id: &str) {
    let end = match send_frames(&mut ws, &frames, CLOSE_TIMEOUT).await {
        Ok(()) => End::Close(close),
        Err(_) => End::Gone("the peer did not read the refusal"),
    };
    finish(&mut ws, end, session_id).await;
}

struct Engine<'a, P> {
    ws: WebSocket,
    ctx: &'a SessionContext,
    protocol: P,
    /// Presence changes this session announces (service role, `presence=true`).
    presence: Option<tokio::sync::broadcast::Receiver<Change>>,
    subs: Subscriptions,
    /// Cancelled by the router when one of `subs`' queues fills.
    overflow: CancellationToken,
    delivery: Delivery,
    /// Events taken from the queues, not yet encoded.
    batch: Vec<(Key, Arc<Event>)>,
    /// Encoded frames of the events in `written`.
    frames: Vec<Frame>,
    /// The events whose frames are being written (for delivery accounting).
    written: Vec<Arc<Event>>,
    /// When anything last arrived from the peer.
    last_seen: Instant,
    leeway_s: i64,
}

impl<P: Protocol> Engine<'_, P> {
    /// The loop; returns how the session ends.
    async fn serve(&mut self) -> End {
        let ctx = self.ctx;
        let overflow = self.overflow.clone();
        let kick = ctx.info.kick_signal();
        let mut ping = tokio::time::interval(ctx.limits.ping_interval);
        ping.reset();
        let mut armed_for = self.protocol.expires_at();
        let expiry = sleep_until(self.expiry_deadline());
        tokio::pin!(expiry);
        let mut awaiting_join = self.protocol.awaiting_join();
        let join_deadline = sleep_until(Instant::now() + ctx.limits.join_timeout);
        tokio::pin!(join_deadline);
        loop {
            let step = tokio::select! {
                biased;
                // PRIORITY 1: deliver what is queued, then 1001.
                _ = ctx.shutdown.cancelled() => Some(self.handle_shutdown().await),
                // PRIORITY 2: a queue filled; its events are lost to this session.
                _ = overflow.cancelled() => Some(End::Close(Close::slow())),
                // PRIORITY 3: closed from outside (disconnect, revocation).
                _ = kick.cancelled() => Some(self.handle_kick().await),
                // PRIORITY 4: the stream started over; the client resumes with `since`.
                _ = ctx.restart.cancelled() => Some(End::Close(Close::restarted())),
                // PRIORITY 5: a token ran out (or the capped wait for it elapsed).
                _ = &mut expiry => self.handle_expiry().await,
                // PRIORITY 6: no channel joined in time (Realtime).
                _ = &mut join_deadline, if awaiting_join => Some(self.handle_join_timeout()),
                // PRIORITY 7: the client's frames (refreshes, joins, heartbeats, close).
                msg = self.ws.next() => self.handle_client(msg).await,
                // PRIORITY 8: ping, and drop a peer that stopped answering.
                _ = ping.tick() => self.handle_ping().await,
                // PRIORITY 9: presence changes, for a session that asked for them.
                change = recv_change(&mut self.presence), if self.presence.is_some() => {
                    self.handle_presence(change).await
                }
                // PRIORITY 10: queued events, a batch per wake-up.
                n = self.subs.recv_many(&mut self.batch, BATCH), if !self.subs.is_empty() => {
                    self.handle_events(n).await
                }
            };
            if let Some(end) = step {
                return end;
            }
            // The last channel left (or was refused): the deadline starts again.
            let now_awaiting = self.protocol.awaiting_join();
            if now_awaiting && !awaiting_join {
                join_deadline
                    .as_mut()
                    .reset(Instant::now() + ctx.limits.join_timeout);
            }
            awaiting_join = now_awaiting;
            // A refresh, a join or a leave may have moved the earliest expiry; a capped wait
            // that elapsed is re-armed.
            let exp = self.protocol.expires_at();
            if exp != armed_for || expiry.is_elapsed() {
                armed_for = exp;
                expiry.as_mut().reset(self.expiry_deadline());
            }
        }
    }

    /// Writes the opening frames, a batch per flush, stopping for a shutdown in between.
    async fn handle_opening(&mut self, opening: Opening) -> Result<(), End> {
        for chunk in opening.frames.chunks(BATCH) {
            if self.ctx.shutdown.is_cancelled() {
                return Err(End::Close(Close::going_away()));
            }
            send_frames(&mut self.ws, chunk, CLOSE_TIMEOUT)
                .await
                .map_err(|_| End::Gone("the peer did not read the opening frames"))?;
        }
        self.delivery.record_replayed(opening.replayed);
        self.ctx.info.record_delivered(opening.replayed, None);
        Ok(())
    }

    /// Shutdown: replication has stopped dispatching, so what is queued now is all there is.
    async fn handle_shutdown(&mut self) -> End {
        self.subs.drain(&mut self.batch);
        self.encode_batch();
        match self.write_frames(DRAIN_TIMEOUT).await {
            Ok(()) => End::Close(Close::going_away()),
            Err(_) => End::Gone("the peer did not take the last events before shutdown"),
        }
    }

    /// Closed from outside: the protocol's last words, then the kick's close code.
    async fn handle_kick(&mut self) -> End {
        let kick = self.ctx.info.kicked().cloned().unwrap_or(Kick {
            code: super::CLOSE_DISCONNECTED,
            reason: "disconnected by an operator".into(),
            error: "disconnected",
        });
        let outcome = self.protocol.on_kick(&kick);
        let close = Close::new(kick.code, kick.reason);
        self.apply(outcome).await.unwrap_or(End::Close(close))
    }

    /// A presence change: its frame, if the protocol writes one. A session that fell
    /// [`broadcast`](tokio::sync::broadcast) capacity behind missed changes: closed as slow.
    async fn handle_presence(
        &mut self,
        change: Result<Change, tokio::sync::broadcast::error::RecvError>,
    ) -> Option<End> {
        use tokio::sync::broadcast::error::RecvError;
        let change = match change {
            Ok(change) => change,
            Err(RecvError::Lagged(_)) => return Some(End::Close(Close::slow())),
            Err(RecvError::Closed) => {
                self.presence = None;
                return None;
            }
        };
        let frame = self.protocol.on_presence(&change)?;
        self.apply(Outcome::reply(frame)).await
    }

    async fn handle_expiry(&mut self) -> Option<End> {
        let cutoff = now_s().saturating_sub(self.leeway_s);
        if self.protocol.expires_at().is_none_or(|exp| exp > cutoff) {
            // The capped wait elapsed, or a refresh moved the expiry: re-armed by the loop.
            return None;
        }
        let outcome = self.protocol.on_expired(cutoff, &mut self.subs);
        self.apply(outcome).await
    }

    /// The join deadline passed with no channel joined: 1008, counted as a refusal.
    fn handle_join_timeout(&self) -> End {
        refused::one(Reason::JoinTimeout);
        End::Close(Close::new(
            CLOSE_POLICY,
            "no channel joined within limits.join_timeout",
        ))
    }

    async fn handle_client(&mut self, msg: Option<Result<Message, axum::Error>>) -> Option<End> {
        self.last_seen = Instant::now();
        let outcome = match msg {
            None => return Some(End::Gone("the peer disconnected")),
            Some(Err(e)) => return Some(on_read_error(&e)),
            Some(Ok(Message::Text(text))) => self.protocol.on_text(&text, &mut self.subs),
            Some(Ok(Message::Binary(_))) => self.protocol.on_unreadable(Unreadable::Binary),
            Some(Ok(Message::Close(_))) => return Some(End::ClientClosed),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return None,
        };
        self.apply(outcome).await
    }

    async fn handle_ping(&mut self) -> Option<End> {
        let idle = self.ctx.limits.idle_timeout;
        if self.last_seen.elapsed() > idle {
            return Some(End::Gone("the peer stopped answering pings"));
        }
        // Behind a socket full of events the ping waits its turn; should a queue overflow
        // meanwhile, the 4008 must not be lost to the ping's timeout.
        let ping = async {
            match tokio::time::timeout(idle, self.ws.send(Message::Ping(Default::default()))).await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SendError::Socket(e)),
                Err(_) => Err(SendError::Timeout(idle)),
            }
        };
        match guarded(&self.overflow, &self.ctx.shutdown, ping).await {
            Ok(()) => None,
            Err(Interrupted::Overflow) => Some(End::Close(Close::slow())),
            Err(Interrupted::Failed(_)) => Some(End::Gone("the peer did not take a ping")),
        }
    }

    /// Encodes and writes a batch of `n` events. An overflow while writing ends the session at
    /// once; a shutdown lets the batch finish (bounded), then the loop drains the rest.
    async fn handle_events(&mut self, n: usize) -> Option<End> {
        if n == 0 {
            // Every queue was dropped: the router overflowed them (PRIORITY 2 says so next).
            return None;
        }
        self.encode_batch();
        if self.frames.is_empty() {
            return None;
        }
        // A peer that takes nothing for the idle timeout is as gone as a silent one.
        let idle = self.ctx.limits.idle_timeout;
        let write = send_frames(&mut self.ws, &self.frames, idle);
        let written = match guarded(&self.overflow, &self.ctx.shutdown, write).await {
            Err(Interrupted::Overflow) => return Some(End::Close(Close::slow())),
            written => written,
        };
        match written {
            Ok(()) => {
                self.record_written();
                self.frames.clear();
                self.written.clear();
                None
            }
            Err(_) => Some(End::Gone("the peer stopped reading events")),
        }
    }

    /// Moves `batch` into `frames`/`written` through the protocol's encoding.
    fn encode_batch(&mut self) {
        for (key, event) in self.batch.drain(..) {
            if let Some(frame) = self.protocol.encode(key, &event) {
                self.frames.push(frame);
                self.written.push(event);
            }
        }
    }

    /// Writes `frames` (bounded by `limit`) and records their delivery.
    async fn write_frames(&mut self, limit: Duration) -> Result<(), SendError> {
        send_frames(&mut self.ws, &self.frames, limit).await?;
        self.record_written();
        self.frames.clear();
        self.written.clear();
        Ok(())
    }

    /// Writes a protocol's replies (unless a queue overflows meanwhile: then 4008), then
    /// returns its close.
    async fn apply(&mut self, outcome: Outcome) -> Option<End> {
        let idle = self.ctx.limits.idle_timeout;
        let write = send_frames(&mut self.ws, &outcome.frames, idle);
        let written = match guarded(&self.overflow, &self.ctx.shutdown, write).await {
            Err(Interrupted::Overflow) => return Some(End::Close(Close::slow())),
            written => written,
        };
        if let Err(Interrupted::Failed(e)) = written {
            debug!(error = %e, "a reply could not be written");
            return Some(End::Gone("the peer did not take a reply"));
        }
        outcome.close.map(End::Close)
    }

    /// Accounts for the events of `written`, just written: metrics and the session's record.
    fn record_written(&self) {
        self.delivery.record(&self.written);
        let last = self.written.last().map(|e| e.cursor);
        self.ctx.info.record_delivered(self.written.len(), last);
    }

    /// When the earliest token runs out (with the leeway), at most [`EXPIRY_CAP`] away.
    fn expiry_deadline(&self) -> Instant {
        let wait = expiry_wait(self.protocol.expires_at(), self.leeway_s, now_s());
        Instant::now() + wait
    }
}

/// Why a write inside the loop did not complete.
enum Interrupted {
    /// A router queue overflowed meanwhile: the session closes with 4008 at once.
    Overflow,
    /// The peer did not take the frames in time, or the socket failed.
    Failed(SendError),
}

/// Awaits a write of the loop (events, a ping, replies; each bounded by the idle timeout),
/// giving way to an overflow at once and, once the relay shuts down, waiting at most
/// [`DRAIN_TIMEOUT`] more: a peer that stopped reading must not hold up the shutdown.
///
/// Most writes complete at their first poll (the socket has room): those are tried first, so
/// that no waiter is registered with either token for them (issue 17: registering and
/// removing them on every write showed in the profile).
async fn guarded(
    overflow: &CancellationToken,
    shutdown: &CancellationToken,
    write: impl Future<Output = Result<(), SendError>>,
) -> Result<(), Interrupted> {
    if overflow.is_cancelled() {
        return Err(Interrupted::Overflow);
    }
    tokio::pin!(write);
    if let Some(written) = futures_util::FutureExt::now_or_never(&mut write) {
        return written.map_err(Interrupted::Failed);
    }
    let written = tokio::select! {
        biased;
        _ = overflow.cancelled() => return Err(Interrupted::Overflow),
        written = &mut write => written,
        _ = shutdown.cancelled() => match tokio::time::timeout(DRAIN_TIMEOUT, &mut write).await {
            Ok(written) => written,
            Err(_) => Err(SendError::Timeout(DRAIN_TIMEOUT)),
        },
    };
    written.map_err(Interrupted::Failed)
}

/// The next presence change of `rx` (pending forever without one; the arm is disabled then).
async fn recv_change(
    rx: &mut Option<tokio::sync::broadcast::Receiver<Change>>,
) -> Result<Change, tokio::sync::broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How long until a token expiring at `exp` (Unix seconds; `None`: no token) runs out at
/// `now`, with `leeway_s` seconds of grace; never longer than [`EXPIRY_CAP`], zero when past.
fn expiry_wait(exp: Option<i64>, leeway_s: i64, now: i64) -> Duration {
    let cap = EXPIRY_CAP.as_secs() as i64;
    let left = exp.map_or(cap, |exp| {
        exp.saturating_add(leeway_s)
            .saturating_sub(now)
            .clamp(0, cap)
    });
    Duration::from_secs(left as u64)
}

/// A read error: an oversized frame closes with 1009, a text frame that is not UTF-8 with 1007
/// (RFC 6455 §7.4.1), another framing violation with 1008; a broken connection just ends the
/// session.
fn on_read_error(e: &axum::Error) -> End {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match std::error::Error::source(e).and_then(|s| s.downcast_ref::<WsError>()) {
        Some(WsError::Capacity(_)) => End::Close(Close::too_big()),
        Some(WsError::Utf8(_)) => End::Close(Close::new(
            CLOSE_INVALID_DATA,
            "a text frame was not valid UTF-8",
        )),
        Some(WsError::Protocol(p)) => {
            End::Close(Close::new(CLOSE_POLICY, format!("bad frame: {p}")))
        }
        _ => End::Gone("the connection failed"),
    }
}

/// Feeds every frame, then flushes once, within `limit`.
async fn send_frames(
    ws: &mut WebSocket,
    frames: &[Frame],
    limit: Duration,
) -> Result<(), SendError> {
    if frames.is_empty() {
        return Ok(());
    }
    let write = async {
        for frame in frames {
            ws.feed(Message::Text(frame.clone())).await?;
        }
        ws.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SendError::Socket(e)),
        Err(_) => Err(SendError::Timeout(limit)),
    }
}

/// Ends the session as `end` says: a close frame (counted, bounded) and the wait for its
/// reply, the echo of a client's close, or nothing for a peer that is gone.
async fn finish(ws: &mut WebSocket, end: End, session: &str) {
    match end {
        End::Close(close) => {
            counter!(m::SESSIONS_CLOSED, "code" => close.code.to_string()).increment(1);
            if close.code == CLOSE_SLOW {
                info!(session, "closed a slow consumer (4008)");
            }
            let frame = CloseFrame {
                code: close.code,
                reason: Utf8Bytes::from(truncate(close.reason)),
            };
            let sent = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(Message::Close(Some(frame))));
            if matches!(sent.await, Ok(Ok(()))) {
                // The client answers with its own close frame; then the connection is done.
                let reply = async { while let Some(Ok(_)) = ws.next().await {} };
                let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, reply).await;
            }
        }
        End::ClientClosed => {
            counter!(m::SESSIONS_CLOSED, "code" => CLOSE_NORMAL.to_string()).increment(1);
            // Reading the close queued its echo; flushing writes it.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
        }
        End::Gone(why) => debug!(session, why, "session ended without a close frame"),
    }
    debug!(session, "session closed");
}

/// Delivery accounting of one session, with its metric handles looked up once.
struct Delivery {
    latency: Histogram,
    delivered: Counter,
}

impl Delivery {
    fn new() -> Delivery {
        Delivery {
            latency: histogram!(m::DELIVERY_LATENCY),
            delivered: counter!(m::EVENTS_DELIVERED),
        }
    }

    /// Records frames just written: delivery latency (commit → now) and the delivered count.
    fn record(&self, events: &[Arc<Event>]) {
        let now = now_unix_us();
        for event in events {
            self.latency
                .record((now - event.commit_time_us).max(0) as f64 / 1e6);
        }
        self.delivered.increment(events.len() as u64);
    }

    /// Records `n` replayed frames just written: delivered, but no latency sample (they were
    /// held back for a reconnecting client, not late).
    fn record_replayed(&self, n: usize) {
        self.delivered.increment(n as u64);
    }
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

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
