//! HTTP: the WebSocket upgrade routes, health and readiness on the server port, and
//! `GET /metrics` on the metrics port.
//!
//! A refused upgrade is answered before the handshake with a JSON body
//! `{"error":"<code>","message":"<text>"}`: 401 for a missing, malformed, wrongly signed or
//! expired token, 403 for a valid token whose role may not subscribe, 503 when the relay is at
//! `server.max_sessions` or still rebuilding its replay window after start (`not_ready`, with
//! `Retry-After`), 426 for a plain GET without an upgrade.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocket;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as HttpRouter};
use metrics::counter;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, Principal, Verifier};
use crate::config::{IngestConfig, LimitsConfig};
use crate::filter::Interest;
use crate::metrics as m;
use crate::model::Cursor;
use crate::replication::StreamStatus;
use crate::router::Router;
use crate::session::phoenix::Vsn;
use crate::session::{self, SessionContext};
use crate::tables::{Selection, Tables};

/// Why the relay is not ready right after start.
const REBUILDING: &str = "rebuilding the replay window from the replication slot";

/// Read buffer per session, bytes.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Frames are gathered up to this many bytes before a write (a batch is flushed anyway).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

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
    /// Most concurrent sessions.
    pub max_sessions: usize,
    /// Replication status for `/readyz`.
    pub status: Arc<StreamStatus>,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Tracks session tasks so shutdown can wait for their 1001 closes.
    pub sessions: TaskTracker,
    /// Open sessions.
    pub open: Arc<AtomicUsize>,
    /// The API's SQL connection pool.
    pub pool: deadpool_postgres::Pool,
    /// `[ingest]` settings.
    pub ingest: IngestConfig,
    /// The API's rate limits.
    pub rate_limits: Arc<crate::api::limit::Limits>,
}

/// The server port's routes.
pub fn server_routes(state: AppState) -> HttpRouter {
    let body_limit = DefaultBodyLimit::max(state.ingest.max_body_bytes);
    HttpRouter::new()
        .route(
            "/v1/events",
            get(native_upgrade).post(crate::api::post_events),
        )
        .route("/v1/events/batch", post(crate::api::post_batch))
        .route("/openapi.json", get(crate::api::openapi::document))
        .route("/realtime/v1/websocket", get(realtime_upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(body_limit)
        .with_state(state)
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
                    handle.render(),
                )
            }
        }),
    )
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.status.is_ready() {
        return Json(json!({"status": "ready"})).into_response();
    }
    let reason = if !state.status.is_connected() {
        state
            .status
            .last_error()
            .unwrap_or_else(|| "replication stream not connected yet".into())
    } else {
        REBUILDING.to_string()
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "unavailable", "reason": reason})),
    )
        .into_response()
}

/// A JSON error response `{"error": code, "message": message}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

fn refuse(e: &AuthError) -> Response {
    counter!(m::AUTH_FAILURES, "reason" => e.code()).increment(1);
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    error_response(status, e.code(), &e.to_string())
}

/// The token of an `Authorization: Bearer …` header, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The token from `Authorization: Bearer …`, else the `access_token` query parameter.
fn token<'a>(headers: &'a HeaderMap, query: &'a HashMap<String, String>) -> Option<&'a str> {
    bearer(headers)
        .or_else(|| query.get("access_token").map(String::as_str))
        .filter(|t| !t.is_empty())
}

/// Authenticates a request from its header or query token.
fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Principal, AuthError> {
    let token = token(headers, query).ok_or(AuthError::Missing)?;
    state.verifier.verify(token)
}

/// Parses the comma-separated list `name=a,b`: `None` (everything) when absent or empty.
fn list(query: &HashMap<String, String>, name: &str) -> Option<Box<[Box<str>]>> {
    let items: Box<[Box<str>]> = query
        .get(name)?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Box::from)
        .collect();
    (!items.is_empty()).then_some(items)
}

/// The native stream's `table=a,b` and `event_type=a,b` parameters.
///
/// Errors: the reason (naming the streamed tables) when a table name or `schema.table` is not
/// streamed by `[[tables]]` (or is a wildcard: leave `table` out for every table); the upgrade
/// answers it with HTTP 400 `unknown_table`.
fn interest(query: &HashMap<String, String>, tables: &Tables) -> Result<Interest, String> {
    let selection = match list(query, "table") {
        None => None,
        Some(names) => {
            let mut selection = Selection::default();
            for name in names.iter() {
                let (schema, table) = name.split_once('.').unwrap_or(("*", name));
                let selected = tables.select(schema, Some(table));
                if name.contains('*') || selected.is_empty() {
                    let streamed: Vec<String> =
                        tables.entries().iter().map(|t| t.qualified()).collect();
                    return Err(format!(
                        "table: `{name}` is not streamed (streamed: {})",
                        streamed.join(", ")
                    ));
                }
                selection.extend(selected);
            }
            Some(selection)
        }
    };
    Ok(Interest {
        tables: selection,
        event_types: list(query, "event_type"),
    })
}

/// Reserves a session slot; `None` when the relay is full.
fn reserve(state: &AppState) -> Option<SessionSlot> {
    let open = state.open.fetch_add(1, Ordering::AcqRel);
    if open >= state.max_sessions {
        state.open.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(SessionSlot(state.open.clone()))
}

/// Releases its session slot when dropped.
struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn native_upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let principal = match authenticate(&state, &headers, &query) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    // A plain GET (no upgrade) is the history API.
    let upgrade = match upgrade {
        Ok(upgrade) => Ok(upgrade),
        Err(_) if !headers.contains_key(header::UPGRADE) => {
            let limited = token(&headers, &query)
                .map(|t| state.rate_limits.check(&principal, t))
                .unwrap_or(Ok(()));
            let page = match limited {
                Ok(()) => crate::api::history::page(&state, &principal, &query).await,
                Err(e) => Err(e),
            };
            return page.unwrap_or_else(IntoResponse::into_response);
        }
        Err(rejection) => Err(rejection),
    };
    let interest = match interest(&query, &state.tables) {
        Ok(interest) => interest,
        Err(why) => return error_response(StatusCode::BAD_REQUEST, "unknown_table", &why),
    };
    // A malformed cursor is answered on the socket (an `error` frame, then 1008), where a
    // client library reports it, rather than as a failed handshake it would retry.
    let since = query.get("since").map(|c| c.parse::<Cursor>());
    start_session(&state, upgrade, move |ws, ctx| {
        session::run_native(ws, ctx, principal, interest, since)
    })
}

/// `GET /realtime/v1/websocket?apikey=…&vsn=…`: Supabase Realtime clients. The `apikey` is
/// checked here when it is a JWT (any role, `anon` included: it only opens the socket); each
/// channel is authorized at `phx_join` by its `access_token`.
async fn realtime_upgrade(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let vsn = match Vsn::from_param(query.get("vsn").map(String::as_str)) {
        Ok(v) => v,
        Err(why) => return error_response(StatusCode::BAD_REQUEST, "unsupported_vsn", &why),
    };
    let apikey = query.get("apikey").filter(|k| !k.is_empty()).cloned();
    match apikey.as_deref() {
        None => return refuse(&AuthError::Missing),
        Some(key) if !key.starts_with("sb_") => match state.verifier.verify(key) {
            Ok(_) | Err(AuthError::Forbidden(_)) => {}
            Err(e) => return refuse(&e),
        },
        Some(_) => {}
    }
    start_session(&state, upgrade, move |ws, ctx| {
        session::realtime::run_realtime(ws, ctx, vsn, apikey)
    })
}

/// Upgrades the connection (or explains why not: 426, 503) and runs `run` as a tracked
/// session task holding one of `server.max_sessions` slots.
fn start_session<F, Fut>(
    state: &AppState,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    run: F,
) -> Response
where
    F: FnOnce(WebSocket, SessionContext) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return error_response(
                StatusCode::UPGRADE_REQUIRED,
                "websocket_required",
                &e.body_text(),
            )
        }
    };
    if !state.status.is_rebuilt() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"error": "not_ready", "message": REBUILDING})),
        )
            .into_response();
    }
    let Some(slot) = reserve(state) else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            "the relay is at server.max_sessions; retry later",
        );
    };
    let max_frame = state.limits.max_client_frame_bytes;
    let ctx = SessionContext {
        router: state.router.clone(),
        tables: state.tables.clone(),
        verifier: state.verifier.clone(),
        limits: state.limits.clone(),
        shutdown: state.shutdown.clone(),
        restart: state.router.restart_signal(),
    };
    let tracker = state.sessions.clone();
    upgrade
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        // Clients send only small control frames; tungstenite's 128 KiB default read buffer
        // is allocated up front and would dominate each idle session's memory.
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .on_upgrade(move |ws| {
            tracker.track_future(async move {
                run(ws, ctx).await;
                drop(slot);
            })
        })
}
