//! The HTTP ingest and history API on the server port (docs/PROTOCOL.md "Ports and paths"):
//! `POST /v1/events/batch` (service role: bulk import), `POST /v1/events` (a user's own events,
//! under RLS), `GET /v1/events` without a WebSocket upgrade (history, [`history`]), and
//! `GET /v1/users/inactive` (service role: the nudge engine's inactive users, [`inactive`]).
//!
//! Every error is an [`HttpError`], JSON `{"error": code, "message": text}` with its status: 400
//! malformed JSON or query,
//! 401 token, 403 role or RLS, 413 body or batch too large, 422 validation (with `errors`:
//! `[{index, field, error}]`), 429 over a request or rows rate limit ([`limit`]), 503 database
//! unavailable. Nothing is written unless every event
//! is valid and the whole transaction commits.

pub mod admin;
pub mod history;
pub mod idempotency;
pub mod inactive;
pub mod ingest;
pub mod limit;
pub mod openapi;
mod role;
pub mod status;
pub mod validate;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Timeouts};
use serde_json::Value;

use super::{bearer, AppState, HttpError};
use crate::auth::{AuthError, Principal, Role};
use crate::config::{Config, ConfigError};

/// The API's connection pool (`ingest.pool_size` connections to `database.url`), separate from
/// the replication connection, over TLS as `database.url` says (`crate::db::tls`). Connections
/// open on first use.
///
/// Errors: `database.url` does not parse, or a TLS file it names is bad.
pub fn pool(config: &Config) -> Result<Pool, ConfigError> {
    let target = crate::db::PgTarget::parse(config.database.url.expose())
        .map_err(|e| ConfigError(e.to_string()))?;
    let manager = Manager::from_config(
        target.config().clone(),
        target.connector(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let wait = Some(config.ingest.pool_timeout);
    Pool::builder(manager)
        .max_size(config.ingest.pool_size.get())
        .timeouts(Timeouts {
            wait,
            create: wait,
            recycle: wait,
        })
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| ConfigError(format!("ingest.pool_size: {e}")))
}

/// The caller, from `Authorization: Bearer <jwt>`, within its request rate limit; and its
/// token, whose rows the ingest counts ([`limit::Limits::check_rows`]).
fn caller<'h>(state: &AppState, headers: &'h HeaderMap) -> Result<(Principal, &'h str), HttpError> {
    let token = bearer::bearer(headers).ok_or(AuthError::Missing)?;
    let principal = state.verifier.verify(token)?;
    state.rate_limits.check(&principal, token)?;
    Ok((principal, token))
}

/// [`caller`], refused with 403 ("`endpoint` needs a service_role token") unless the token is
/// the service role's.
fn service_caller<'h>(
    state: &AppState,
    headers: &'h HeaderMap,
    endpoint: &str,
) -> Result<(Principal, &'h str), HttpError> {
    let (principal, token) = caller(state, headers)?;
    if principal.role != Role::ServiceRole {
        return Err(HttpError::forbidden(&format!(
            "{endpoint} needs a service_role token"
        )));
    }
    Ok((principal, token))
}

/// The request's JSON body (400 malformed, 413 too large).
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, HttpError> {
    let bytes = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is larger than ingest.max_body_bytes",
        ),
        status => HttpError::new(status, "bad_request", e.body_text()),
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))
}

/// The events of `{"events": […]}`, or of a single event object when `single` is allowed.
fn events_of(body: Value, single: bool, max: usize) -> Result<Vec<Value>, HttpError> {
    let events = match body {
        Value::Object(mut o) if o.contains_key("events") => match o.remove("events") {
            Some(Value::Array(events)) => events,
            _ => {
                return Err(HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_body",
                    "`events` must be an array of event objects",
                ))
            }
        },
        event @ Value::Object(_) if single => vec![event],
        _ => {
            return Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                "malformed_body",
                "expected {\"events\": [ … ]}",
            ))
        }
    };
    if events.len() > max {
        return Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("{} events; ingest.max_batch is {max}", events.len()),
        ));
    }
    Ok(events)
}

/// Reads the events of `body` (a single object too when `single`), validates and inserts them;
/// 201 `{"ids": […]}` in input order (or, for a repeated `Idempotency-Key`, the first result).
async fn ingest(
    state: &AppState,
    headers: &HeaderMap,
    (principal, token): (&Principal, &str),
    body: Result<Bytes, BytesRejection>,
    single: bool,
) -> Result<Response, HttpError> {
    let config = &state.ingest;
    state.rate_limits.check_rows_open(principal, token)?;
    let events = events_of(json_body(body)?, single, config.max_batch.get())?;
    // Rows are counted before any work on them: a refused flood costs a parse, nothing more.
    state
        .rate_limits
        .check_rows(principal, token, events.len())?;
    let valid = validate::validate(&events, chrono::Utc::now(), config.oldest_timestamp)
        .map_err(HttpError::validation)?;
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(key)) => Some(key),
        Some(Err(_)) => {
            return Err(HttpError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be visible ASCII",
            ))
        }
    };
    let (status, body) = ingest::insert(&state.pool, principal, &valid, key).await?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
    Ok((status, Json(body)).into_response())
}

/// `POST /v1/events/batch`: service role only; `{"events": […]}`.
#[utoipa::path(
    post,
    path = "/v1/events/batch",
    request_body = openapi::EventsIn,
    responses(openapi::IngestResponses),
    params(openapi::IdempotencyKey),
    security(("bearer" = []))
)]
pub async fn post_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let (principal, token) = service_caller(&state, &headers, "the batch endpoint")?;
    ingest(&state, &headers, (&principal, token), body, false).await
}

/// `POST /v1/events`: a user's own events (one object, or `{"events": […]}`), under RLS.
#[utoipa::path(
    post,
    path = "/v1/events",
    request_body = openapi::EventsIn,
    responses(openapi::IngestResponses),
    params(openapi::IdempotencyKey),
    security(("bearer" = []))
)]
pub async fn post_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let (principal, token) = caller(&state, &headers)?;
    ingest(&state, &headers, (&principal, token), body, true).await
}

/// `GET /v1/users/inactive`: service role only; see [`inactive`].
#[utoipa::path(
    get,
    path = "/v1/users/inactive",
    params(
        ("for" = Option<String>, Query, description = "humantime duration, 1m to 365d, default 48h"),
        ("limit" = Option<i32>, Query, description = "1 to 1000, default 100"),
        ("after" = Option<uuid::Uuid>, Query, description = "a previous page's next_after"),
        ("include_opted_out" = Option<bool>, Query, description = "default false"),
    ),
    responses(
        (status = 200, description = "a page, by user_id", body = openapi::InactivePage),
        (status = 400, description = "invalid query", body = openapi::ErrorBody),
        (status = 401, description = "missing or invalid token", body = openapi::ErrorBody),
        (status = 403, description = "not a service_role token", body = openapi::ErrorBody),
        (status = 429, description = "rate limited", body = openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_inactive(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<inactive::InactiveQuery>, QueryRejection>,
) -> Result<Response, HttpError> {
    let (principal, _) = service_caller(&state, &headers, "GET /v1/users/inactive")?;
    let Query(query) = query.map_err(|e| HttpError::query("invalid_query", &e))?;
    inactive::page(&state, &principal, &query).await
}
