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
pub mod query;
pub mod serve;
pub mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router as HttpRouter;
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
}

/// The session cap: `max_sessions` permits (`server.max_sessions`), at most
/// [`Semaphore::MAX_PERMITS`].
pub fn session_permits(max_sessions: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(max_sessions.min(Semaphore::MAX_PERMITS)))
}

/// The server port's routes; each request, its body read included, must be answered within
/// `request_timeout` (`server.request_timeout`), else it is a 408 ([`deadline`]).
pub fn server_routes(state: AppState, request_timeout: Duration) -> HttpRouter {
    let body_limit = DefaultBodyLimit::max(state.ingest.max_body_bytes);
    HttpRouter::new()
        .route(
            "/v1/events",
            get(upgrade::native_upgrade).post(api::post_events),
        )
        .route("/v1/events/batch", post(api::post_batch))
        .route("/openapi.json", get(api::openapi::document))
        .route("/realtime/v1/websocket", get(upgrade::realtime_upgrade))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .layer(body_limit)
        .layer(middleware::from_fn_with_state(request_timeout, deadline))
        .with_state(state)
}

/// Answers 408 `request_timeout` when `request` (its body read included) is not handled within
/// `timeout`, and counts it (`relay_refused_total{reason="request_timeout"}`): a client that
/// trickles its body cannot hold a connection. The handler is dropped; hyper closes the
/// connection, whose body was not read to its end.
async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            refused::one(Reason::RequestTimeout);
            HttpError::request_timeout(timeout).into_response()
        }
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
