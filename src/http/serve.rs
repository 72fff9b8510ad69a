//! The relay's accept loop for both ports: hyper's HTTP/1 connections (with upgrades) serving
//! an axum router, with connection hygiene that `axum::serve` lacks.
//!
//! Per connection a watchdog enforces ([`Rules`]):
//! - a new connection sends a complete request head within `server.header_timeout` of its
//!   accept, else it is closed (`relay_refused_total{reason="header_timeout"}`): silent
//!   connections and slowloris heads (a byte a second) alike;
//! - between requests a keep-alive connection may stay silent for `server.idle_timeout`
//!   (`idle_timeout`); once the next request's first byte arrives, its head must complete
//!   within `server.header_timeout` of that byte (`header_timeout`);
//! - while a request is in flight (its head read, its response not yet written) no timer runs;
//!   once a connection is upgraded to a WebSocket hyper hands the socket over, and the session's
//!   own rules apply (pings, `limits.idle_timeout`, `limits.join_timeout`).
//!
//! hyper's own `header_read_timeout` is not used: in hyper 1 it is re-armed whenever a
//! keep-alive connection goes idle, so it would also close idle keep-alive connections after
//! the header timeout, and it cannot tell the two refusals apart.
//!
//! Connections waiting for a request head (new ones and keep-alive ones between requests) are
//! "pending"; at most `max_pending` at once. A connection accepted beyond that takes the place
//! of the one that has been pending longest, which is closed (`max_pending`): a flood of silent
//! connections cycles through the pending slots, and a real client, whose head follows its
//! connect within a round trip, still gets served (a probe of `/readyz` during the flood). When `accept` fails for lack of descriptors (`EMFILE`/`ENFILE`) the
//! loop sleeps with an exponential backoff ([`BACKOFF_MIN`] to [`BACKOFF_MAX`]) and counts
//! `descriptors`. On `stop` the listener closes, connections waiting for a head close at once,
//! and requests in flight finish (hyper's graceful shutdown); [`serve`] returns once every
//! connection has ended.
//!
//! A listener with TLS ([`super::tls`]) runs each connection's handshake first, in its task,
//! as part of its first request head: under the same header timeout and pending slot.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::tls::{self, Tls};
use crate::refused::{self, Reason};

/// First sleep after `accept` ran out of descriptors; doubles per failure in a row.
pub const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest sleep after `accept` ran out of descriptors.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The connection rules of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Longest wait for a complete request head: from the accept for the first request, from
    /// the first byte for later ones.
    pub header_timeout: Duration,
    /// Longest silence of a keep-alive connection between requests.
    pub idle_timeout: Duration,
    /// Most connections waiting for a request head at once.
    pub max_pending: usize,
}

/// Serves `router` on `listener` until `stop` is cancelled, then waits for its connections
/// (requests in flight finish; upgraded sessions are not waited for: they are tracked apart).
/// With `tls`, every connection is a TLS one (`https://`, `wss://`).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    rules: Rules,
    tls: Option<Arc<Tls>>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let pending = Arc::new(Pending::new(rules.max_pending));
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) if out_of_descriptors(&e) => {
                refused::one(Reason::Descriptors);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            // A connection that failed before it was accepted (reset, aborted): the next one.
            Err(e) => {
                debug!(error = %e, "accept failed");
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        if !pending.admit() {
            refused::one(Reason::MaxPending);
            continue;
        }
        // Event frames are small and latency-bound: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let watch = Watch::new(pending.clone());
        let tls = tls.clone();
        connections.spawn(connection(
            tcp,
            router.clone(),
            rules,
            tls,
            watch,
            stop.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// `accept` failed for lack of descriptors or kernel memory: back off rather than spin.
fn out_of_descriptors(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

/// Serves one connection under its watchdog until it ends, is upgraded, or times out.
async fn connection(
    tcp: TcpStream,
    router: axum::Router,
    rules: Rules,
    tls: Option<Arc<Tls>>,
    watch: Arc<Watch>,
    stop: CancellationToken,
) {
    // However the handshake ends, the connection leaves the pending count.
    let _handshaking = EndOnDrop(watch.clone());
    let watched = WatchedIo {
        tcp,
        watch: watch.clone(),
    };
    // The TLS stream is boxed: it holds rustls' connection state (about 1.1 KB), which would
    // otherwise make every plain socket's I/O as large, once boxed again under the upgraded
    // WebSocket (BENCHMARKS.md §13).
    let io = TokioIo::new(match tls {
        None => Either::Left(watched),
        Some(tls) => {
            let deadline = watch.born + rules.header_timeout;
            match tls::handshake(&tls, watched, deadline, &watch.evicted, &stop).await {
                Some(stream) => Either::Right(Box::new(stream)),
                None => return,
            }
        }
    });
    let inner = TowerToHyperService::new(router);
    let tracker = watch.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let in_flight = InFlight::begin(&tracker);
        let response = inner.call(request);
        async move {
            let response: Response = response.await?;
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(TrackedBody {
                    body,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let mut builder = http1::Builder::new();
    // The watchdog below is the header timeout (see the module doc).
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    // Dropped before `conn` (locals drop in reverse order), so that however this task ends, a
    // panicking handler included, the connection leaves the pending count before its requests.
    let _end = EndOnDrop(watch.clone());
    let mut deadline = watch.born + rules.header_timeout;
    let mut stopping = false;
    let mut evicted_late = false;
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = stop.cancelled(), if !stopping => {
                // A connection waiting for a head is closed now (hyper would wait for the head,
                // up to the header timeout); one with a request in flight finishes it first.
                if watch.in_flight.load(Relaxed) == 0 {
                    break;
                }
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            // A newer connection took this one's pending slot. If a request began meanwhile the
            // eviction came too late: the connection is served and counts again once idle (the
            // token stays cancelled, so the arm is disabled rather than polled in a spin).
            _ = watch.evicted.cancelled(), if !stopping && !evicted_late => {
                if watch.in_flight.load(Relaxed) == 0 {
                    refused::one(Reason::MaxPending);
                    break;
                }
                evicted_late = true;
            }
            // A request ended or the next one began: the deadline moves.
            _ = watch.changed.notified() => deadline = Instant::now(),
            _ = sleep_until(deadline) => match watch.check(&rules, Instant::now()) {
                Ok(next) => deadline = next,
                Err(reason) => {
                    refused::one(reason);
                    break;
                }
            },
        }
    }
}

/// Ends its connection's [`Watch`] when dropped.
struct EndOnDrop(Arc<Watch>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The pending connections of one listener: their count, and the order in which they became
/// pending (oldest first) to find the one a newcomer replaces.
struct Pending {
    count: AtomicUsize,
    max: usize,
    /// Each entry: a connection and the generation of its pending spell when it was pushed (a
    /// keep-alive connection is pending again after each request; older entries are stale).
    order: Mutex<VecDeque<(Weak<Watch>, u64)>>,
}

impl Pending {
    fn new(max: usize) -> Pending {
        Pending {
            count: AtomicUsize::new(0),
            max,
            order: Mutex::new(VecDeque::new()),
        }
    }

    fn order(&self) -> std::sync::MutexGuard<'_, VecDeque<(Weak<Watch>, u64)>> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection in. At `max`, the connection pending longest is evicted to make
    /// room (told through its `evicted` token); false only when there is none to evict.
    fn admit(&self) -> bool {
        if self
            .count
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
            .is_ok()
        {
            return true;
        }
        let mut order = self.order();
        while let Some((watch, generation)) = order.pop_front() {
            let Some(watch) = watch.upgrade() else {
                continue;
            };
            if watch.generation.load(Relaxed) != generation || !watch.leave_pending() {
                continue;
            }
            watch.evicted.cancel();
            // The evicted connection's slot is the newcomer's.
            self.count.fetch_add(1, Relaxed);
            return true;
        }
        false
    }

    /// Notes that `watch` became pending (in generation `generation`); drops stale entries
    /// when they outnumber the live ones.
    fn push(&self, watch: &Arc<Watch>, generation: u64) {
        let mut order = self.order();
        order.push_back((Arc::downgrade(watch), generation));
        if order.len() > 2 * self.max + 64 {
            order.retain(|(w, g)| {
                w.upgrade()
                    .is_some_and(|w| w.generation.load(Relaxed) == *g && w.counted.load(Relaxed))
            });
        }
    }
}

/// What the watchdog of one connection knows of it. Written by the connection's socket reads
/// and its requests, all in the connection's own task; atomics only because the task may move
/// between threads.
struct Watch {
    /// When the connection was accepted; the other instants are milliseconds after it.
    born: Instant,
    /// Requests whose response has not been written yet.
    in_flight: AtomicU32,
    /// Requests begun on this connection.
    requests: AtomicU64,
    /// When the last request ended (the connection became idle).
    idle_since_ms: AtomicU64,
    /// True from the end of a request until the next byte arrives.
    awaiting_byte: AtomicBool,
    /// When the first byte after the last request arrived.
    first_byte_ms: AtomicU64,
    /// Whether this connection counts in `pending`.
    counted: AtomicBool,
    /// Incremented each time the connection becomes pending (see [`Pending::push`]).
    generation: AtomicU64,
    /// Cancelled when a newer connection takes this one's pending slot.
    evicted: CancellationToken,
    /// Set once the connection has ended: it no longer counts anywhere.
    ended: AtomicBool,
    pending: Arc<Pending>,
    /// Wakes the watchdog when a request begins or ends, or the next one's first byte arrives.
    changed: Notify,
}

impl Watch {
    /// A connection just admitted (counted as pending).
    fn new(pending: Arc<Pending>) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            born: Instant::now(),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            awaiting_byte: AtomicBool::new(false),
            first_byte_ms: AtomicU64::new(0),
            counted: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            evicted: CancellationToken::new(),
            ended: AtomicBool::new(false),
            pending,
            changed: Notify::new(),
        });
        watch.pending.push(&watch, 0);
        watch
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.born + Duration::from_millis(ms)
    }

    /// Counts the connection out of `pending`; false if it was not counted.
    fn leave_pending(&self) -> bool {
        let was = self.counted.swap(false, Relaxed);
        if was {
            self.pending.count.fetch_sub(1, Relaxed);
        }
        was
    }

    /// Counts the connection into `pending` again (a keep-alive connection between requests).
    fn enter_pending(self: &Arc<Self>) {
        if !self.counted.swap(true, Relaxed) {
            self.pending.count.fetch_add(1, Relaxed);
            let generation = self.generation.fetch_add(1, Relaxed) + 1;
            self.pending.push(self, generation);
        }
    }

    /// Bytes arrived on the socket.
    fn on_read(&self) {
        if self.awaiting_byte.load(Relaxed) {
            self.first_byte_ms.store(self.now_ms(), Relaxed);
            self.awaiting_byte.store(false, Relaxed);
            self.changed.notify_one();
        }
    }

    /// The connection ended (closed, timed out or upgraded).
    fn end(&self) {
        self.ended.store(true, Relaxed);
        self.leave_pending();
    }

    /// The next deadline after `now`, or why the connection must close at `now`.
    fn check(&self, rules: &Rules, now: Instant) -> Result<Instant, Reason> {
        if self.in_flight.load(Relaxed) > 0 {
            // Checked again when the request ends (or after a while, should that be missed).
            return Ok(now + rules.idle_timeout);
        }
        let (deadline, reason) = if self.requests.load(Relaxed) == 0 {
            (self.born + rules.header_timeout, Reason::HeaderTimeout)
        } else if !self.awaiting_byte.load(Relaxed) {
            let first_byte = self.at(self.first_byte_ms.load(Relaxed));
            (first_byte + rules.header_timeout, Reason::HeaderTimeout)
        } else {
            let idle_since = self.at(self.idle_since_ms.load(Relaxed));
            (idle_since + rules.idle_timeout, Reason::IdleTimeout)
        };
        if now >= deadline {
            Err(reason)
        } else {
            Ok(deadline)
        }
    }
}

/// One request in flight on a connection, from its complete head until its response has been
/// written (the response body is dropped) or abandoned.
struct InFlight(Arc<Watch>);

impl InFlight {
    fn begin(watch: &Arc<Watch>) -> InFlight {
        watch.requests.fetch_add(1, Relaxed);
        if watch.in_flight.fetch_add(1, Relaxed) == 0 {
            watch.leave_pending();
            watch.changed.notify_one();
        }
        InFlight(watch.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let watch = &self.0;
        if watch.in_flight.fetch_sub(1, Relaxed) == 1 {
            watch.idle_since_ms.store(watch.now_ms(), Relaxed);
            watch.awaiting_byte.store(true, Relaxed);
            if !watch.ended.load(Relaxed) {
                watch.enter_pending();
            }
            watch.changed.notify_one();
        }
    }
}

/// A response body that ends its request's [`InFlight`] when hyper drops it.
struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The accepted socket, telling the watchdog when bytes arrive. It stays under an upgraded
/// WebSocket, where the check is one relaxed load per read.
struct WatchedIo {
    tcp: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.watch.on_read();
        }
        read
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
