//! The HTTP ingest and history API on the server port (PROTOCOL.md "Ports and paths"):
//! `POST /v1/events/batch` (service role: bulk import), `POST /v1/events` (a user's own events,
//! under RLS), and `GET /v1/events` without a WebSocket upgrade (history, [`history`]).
//!
//! Every error is JSON `{"error": code, "message": text}` with its status: 400 malformed JSON,
//! 401 token, 403 role or RLS, 413 body or batch too large, 422 validation (with `errors`:
//! `[{index, field, error}]`), 503 database unavailable. Nothing is written unless every event
//! is valid and the whole transaction commits.

pub mod history;
pub mod idempotency;
pub mod ingest;
pub mod limit;
pub mod openapi;
pub mod validate;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Timeouts};
use serde_json::{json, Value};
use tracing::warn;

use crate::auth::{AuthError, Principal, Role};
use crate::config::{Config, ConfigError};
use crate::db::describe;
use crate::http::AppState;
use validate::FieldError;

/// An API error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    errors: Vec<FieldError>,
    retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            errors: Vec::new(),
            retry_after_s: None,
        }
    }

    /// 429 `rate_limited`, retry after `seconds` (at least 1).
    pub fn rate_limited(seconds: u64) -> ApiError {
        let seconds = seconds.max(1);
        ApiError {
            retry_after_s: Some(seconds),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests; retry in {seconds} s"),
            )
        }
    }

    /// 422 `validation_failed` with the list of problems.
    pub fn validation(errors: Vec<FieldError>) -> ApiError {
        let n = errors.len();
        ApiError {
            errors,
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("{n} problem(s) found; nothing was written"),
            )
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 422 for a row the table refused.
    pub fn unprocessable(message: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected_by_database",
            message,
        )
    }

    /// 409 `conflict`.
    pub fn conflict(message: &str) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: &str) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 503: no pooled connection could be had.
    pub fn unavailable(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            format!("the database is not reachable: {e}"),
        )
    }

    /// 503 for a failed statement outside the client's control (logged).
    pub fn database(e: tokio_postgres::Error) -> ApiError {
        warn!("API statement failed: {}", describe(&e));
        ApiError::unavailable(describe(&e))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// The API's connection pool (`ingest.pool_size` connections to `database.url`), separate from
/// the replication connection. Connections open on first use.
///
/// Errors: `database.url` does not parse.
pub fn pool(config: &Config) -> Result<Pool, ConfigError> {
    let pg: tokio_postgres::Config = config
        .database
        .url
        .expose()
        .parse()
        .map_err(|e| ConfigError(format!("database.url: {e}")))?;
    let manager = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
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

/// The caller, from `Authorization: Bearer <jwt>`, within its rate limit.
fn caller(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = crate::http::bearer(headers)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)?;
    let principal = state.verifier.verify(token)?;
    state.rate_limits.check(&principal, token)?;
    Ok(principal)
}

/// The request's JSON body (400 malformed, 413 too large).
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is larger than ingest.max_body_bytes",
        ),
        status => ApiError::new(status, "bad_request", e.body_text()),
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))
}

/// The events of `{"events": […]}`, or of a single event object when `single` is allowed.
fn events_of(body: Value, single: bool, max: usize) -> Result<Vec<Value>, ApiError> {
    let events = match body {
        Value::Object(mut o) if o.contains_key("events") => match o.remove("events") {
            Some(Value::Array(events)) => events,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_body",
                    "`events` must be an array of event objects",
                ))
            }
        },
        event @ Value::Object(_) if single => vec![event],
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_body",
                "expected {\"events\": [ … ]}",
            ))
        }
    };
    if events.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("{} events; ingest.max_batch is {max}", events.len()),
        ));
    }
    Ok(events)
}

/// Validates and inserts; 201 `{"ids": […]}` in input order (or, for a repeated
/// `Idempotency-Key`, the first result).
async fn ingest(
    state: &AppState,
    headers: &HeaderMap,
    principal: &Principal,
    events: Vec<Value>,
) -> Result<Response, ApiError> {
    let config = &state.ingest;
    let valid = validate::validate(&events, chrono::Utc::now(), config.oldest_timestamp)
        .map_err(ApiError::validation)?;
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(key)) => Some(key),
        Some(Err(_)) => {
            return Err(ApiError::bad_request(
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
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat within 24 h returns the first result")),
    security(("bearer" = []))
)]
pub async fn post_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let principal = caller(&state, &headers)?;
    if principal.role != Role::ServiceRole {
        return Err(ApiError::forbidden(
            "the batch endpoint needs a service_role token",
        ));
    }
    let events = events_of(json_body(body)?, false, state.ingest.max_batch.get())?;
    ingest(&state, &headers, &principal, events).await
}

/// `POST /v1/events`: a user's own events (one object, or `{"events": […]}`), under RLS.
#[utoipa::path(
    post,
    path = "/v1/events",
    request_body = openapi::EventsIn,
    responses(openapi::IngestResponses),
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat within 24 h returns the first result")),
    security(("bearer" = []))
)]
pub async fn post_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let principal = caller(&state, &headers)?;
    let events = events_of(json_body(body)?, true, state.ingest.max_batch.get())?;
    ingest(&state, &headers, &principal, events).await
}
