//! The server port's HTTP layer and the metrics port: WebSocket upgrades ([`upgrade`]), the
//! ingest and history API ([`api`]), health and readiness ([`health`]), and `GET /metrics`.
//!
//! One layer: it calls into [`crate::session`], [`crate::auth`], [`crate::router`] and the
//! database, and nothing but the relay's wiring calls into it. Every refusal is one JSON shape,
//! [`HttpError`] (`{"error": code, "message": text}`); query strings are read into typed
//! structs ([`upgrade::StreamQuery`], [`upgrade::RealtimeQuery`], [`api::history::HistoryQuery`]).

pub mod api;
pub mod bearer;
mod error;
pub mod health;
pub mod inspector;
pub mod query;
pub mod request_metrics;
pub mod serve;
pub mod tls;
pub mod upgrade;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router as HttpRouter;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::HttpError;

use crate::auth::Verifier;
use crate::config::{IngestConfig, LimitsConfig};
use crate::refused::{self, Reason};
use crate::replication::StreamStatus;
use crate::router::Router;
use crate::tables::Tables;

/// Why the relay is not ready right after start.
const REBUILDING: &str = "rebuilding the replay window from the replication slot";

/// Shared state of the server routes.
#[derive(Clone)]
pub struct AppState {
    /// Event routing.
    pub router: Arc<Router>,
    /// The streamed tables (`[[tables]]`), for the `table` parameter and Supabase bindings.
    pub tables: Arc<Tables>,
    /// Token validation.
    pub verifier: Arc<Verifier>,
    /// Session limits.
    pub limits: LimitsConfig,
    /// One permit per open session, `server.max_sessions` in all ([`session_permits`]); each
    /// session task holds its permit until it ends, and an upgrade finding none left is a 503.
    pub session_permits: Arc<Semaphore>,
    /// Replication status for `/readyz`.
    pub status: Arc<StreamStatus>,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Tracks session tasks so shutdown can wait for their 1001 closes.
    pub sessions: TaskTracker,
    /// The API's SQL connection pool ([`api::pool`]).
    pub pool: deadpool_postgres::Pool,
    /// `[ingest]` settings.
    pub ingest: IngestConfig,
    /// The API's rate limits.
    pub rate_limits: Arc<api::limit::Limits>,
    /// Cluster node: the JetStream stream read back for resumes older than the window.
    pub archive: Option<Arc<crate::cluster::Archive>>,
    /// The operator's console: the session registry, disconnects, revocations.
    pub console: Arc<crate::console::Console>,
    /// What `GET /v1/status` says about this node.
    pub node: Arc<NodeFacts>,
}

/// Facts about this node for `GET /v1/status`.
#[derive(Debug)]
pub struct NodeFacts {
    /// Cluster mode (`cluster.nats_url` set).
    pub clustered: bool,
    /// Connected while this node holds the replication slot.
    pub slot: Arc<StreamStatus>,
    /// When the relay started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// `replay.window`.
    pub replay_window: Duration,
}

/// The session cap: `max_sessions` permits (`server.max_sessions`), at most
/// [`Semaphore::MAX_PERMITS`].
pub fn session_permits(max_sessions: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(max_sessions.min(Semaphore::MAX_PERMITS)))
}

/// The server port's routes, with the [`inspector`]'s when it is on (`server.inspector`); each
/// request's body must arrive within `request_timeout` (`server.request_timeout`), else it is a
/// 408 (`deadline` below). Every request is timed and counted by route template
/// ([`request_metrics`]).
pub fn server_routes(
    state: AppState,
    request_timeout: Duration,
    inspector: Option<inspector::Inspector>,
) -> HttpRouter {
    let body_limit = DefaultBodyLimit::max(state.ingest.max_body_bytes);
    let pool = state.pool.clone();
    HttpRouter::new()
        .route(
            "/v1/events",
            get(upgrade::native_upgrade).post(api::post_events),
        )
        .route("/v1/events/batch", post(api::post_batch))
        .route("/v1/users/inactive", get(api::get_inactive))
        .route("/v1/status", get(api::status::get_status))
        .route(
            "/v1/status/users/{user_id}",
            get(api::status::get_user_status),
        )
        .route("/v1/presence", get(api::status::list_presence))
        .route("/v1/presence/{user_id}", get(api::status::get_presence))
        .route(
            "/v1/admin/users/{user_id}/disconnect",
            post(api::admin::post_disconnect),
        )
        .route("/v1/admin/revocations", post(api::admin::post_revocation))
        .route("/openapi.json", get(api::openapi::document))
        .route("/realtime/v1/websocket", get(upgrade::realtime_upgrade))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(inspector.map(inspector::routes).unwrap_or_default())
        .layer(body_limit)
        .layer(middleware::from_fn_with_state(request_timeout, deadline))
        .layer(middleware::from_fn_with_state(pool, request_metrics::track))
        .with_state(state)
}

/// Gives `request`'s body `timeout` to arrive in full (`server.request_timeout`, from the
/// complete head); a body still incomplete then ends the request with a 408 `request_timeout`,
/// counted as `relay_refused_total{reason="request_timeout"}`: a client that trickles its body
/// cannot hold a connection. Only the body read is timed: once the body is in, the handler's
/// work (an insert being committed) is not cut short. hyper closes the connection, whose body
/// was not read to its end.
async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let timed_out = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timed_out: timed_out.clone(),
        })
    });
    let response = next.run(request).await;
    if timed_out.load(Ordering::Relaxed) {
        refused::one(Reason::RequestTimeout);
        return HttpError::request_timeout(timeout).into_response();
    }
    response
}

/// A request body that fails once its deadline passes before its last frame.
struct DeadlineBody {
    body: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "server.request_timeout");
            return Poll::Ready(Some(Err(axum::Error::new(late))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The metrics port's routes: `GET /metrics` in Prometheus text format.
pub fn metrics_routes(handle: PrometheusHandle) -> HttpRouter {
    HttpRouter::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::metrics::render(&handle),
                )
            }
        }),
    )
}
