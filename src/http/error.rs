//! The one error response of the server port: JSON `{"error": code, "message": text}` with its
//! HTTP status, plus `errors: [{index, field, error}]` on a 422 `validation_failed` and a
//! `Retry-After` header (whole seconds) on 429 `rate_limited`, `too_many_user_sessions` and
//! `too_many_service_sessions`, and 503 `not_ready`.
//!
//! Every refusal of the server port, a WebSocket upgrade's or the API's, is one of these, so a
//! client parses one shape (the OpenAPI document's `ErrorBody`).

use axum::extract::rejection::QueryRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::warn;

use super::api::validate::FieldError;
use crate::auth::AuthError;
use crate::db::describe;
use crate::router::SlotRefused;

/// `Retry-After` of a 429 for a session cap, seconds: long enough for a client's other session
/// to end, short enough not to strand a reconnecting tab.
const SESSION_CAP_RETRY_S: u64 = 5;

/// A JSON error response: status, machine-readable code, human message, and the optional
/// `errors` list and `Retry-After` header.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
    errors: Vec<FieldError>,
    retry_after_s: Option<u64>,
}

impl HttpError {
    /// `status` with `{"error": code, "message": message}`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            code,
            message: message.into(),
            errors: Vec::new(),
            retry_after_s: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 400 `code` for a query string that did not deserialize into its typed struct; the message
    /// names the parameter (`limit: must be 1 to 1000`, `duplicate field `table``).
    pub fn query(code: &'static str, rejection: &QueryRejection) -> HttpError {
        let message = match rejection {
            // The source is `serde_path_to_error`'s "<parameter>: <why>", without axum's prefix.
            QueryRejection::FailedToDeserializeQueryString(e) => std::error::Error::source(e)
                .map(ToString::to_string)
                .unwrap_or_else(|| e.body_text()),
            other => other.body_text(),
        };
        HttpError::bad_request(code, message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: &str) -> HttpError {
        HttpError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: &str) -> HttpError {
        HttpError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422 `validation_failed` with the list of problems (`errors`).
    pub fn validation(errors: Vec<FieldError>) -> HttpError {
        let n = errors.len();
        HttpError {
            errors,
            ..HttpError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("{n} problem(s) found; nothing was written"),
            )
        }
    }

    /// 422 `rejected_by_database` for a row the table refused.
    pub fn unprocessable(message: &str) -> HttpError {
        HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected_by_database",
            message,
        )
    }

    /// 426 `websocket_required`: a plain GET on a WebSocket-only route (`why` from axum).
    pub fn websocket_required(why: &str) -> HttpError {
        HttpError::new(StatusCode::UPGRADE_REQUIRED, "websocket_required", why)
    }

    /// 429 `rate_limited`, retry after `seconds` (at least 1).
    pub fn rate_limited(seconds: u64) -> HttpError {
        let seconds = seconds.max(1);
        HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry in {seconds} s"),
        )
        .retry_after(seconds)
    }

    /// 429 `rate_limited` for rows: `why` says which limit, retry after `seconds` (at least 1).
    pub fn rows_limited(seconds: u64, why: String) -> HttpError {
        let seconds = seconds.max(1);
        HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("{why}; retry in {seconds} s"),
        )
        .retry_after(seconds)
    }

    /// 429 `too_many_user_sessions` or `too_many_service_sessions` with `Retry-After: 5`: the
    /// caller already holds its cap of sessions ([`SlotRefused`]); one must end first.
    pub fn session_cap(refused: SlotRefused) -> HttpError {
        HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            refused.code(),
            refused.to_string(),
        )
        .retry_after(SESSION_CAP_RETRY_S)
    }

    /// 503 `not_ready` with `Retry-After: 1`: the relay is rebuilding its replay window.
    pub fn not_ready(why: &str) -> HttpError {
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why).retry_after(1)
    }

    /// 503 `too_many_sessions`: every `server.max_sessions` slot is taken.
    pub fn too_many_sessions() -> HttpError {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            "the relay is at server.max_sessions; retry later",
        )
    }

    /// 408 `request_timeout`: the request's body had not fully arrived `timeout` after its head.
    pub fn request_timeout(timeout: std::time::Duration) -> HttpError {
        HttpError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body was not complete within server.request_timeout ({})",
                humantime::format_duration(timeout)
            ),
        )
    }

    /// 503 `database_unavailable`: no pooled connection could be had.
    pub fn unavailable(e: impl std::fmt::Display) -> HttpError {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            format!("the database is not reachable: {e}"),
        )
    }

    /// 503 `database_unavailable` for a failed statement outside the client's control (logged).
    pub fn database(e: tokio_postgres::Error) -> HttpError {
        warn!("API statement failed: {}", describe(&e));
        HttpError::unavailable(describe(&e))
    }

    /// Adds `Retry-After: seconds`.
    fn retry_after(self, seconds: u64) -> HttpError {
        HttpError {
            retry_after_s: Some(seconds),
            ..self
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code (`"error"`).
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The human message (`"message"`).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// 401 for a missing, malformed, wrongly signed or expired token, 403 for a role that may not
/// do this; the code and message are the [`AuthError`]'s.
impl From<AuthError> for HttpError {
    fn from(e: AuthError) -> HttpError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        HttpError::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for HttpError {
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

#[cfg(test)]
mod tests {
    use axum::extract::Query;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Params {
        n: Option<u32>,
    }

    async fn body(e: HttpError) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap_or_default().to_string());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let json = serde_json::from_slice(&bytes).unwrap_or_default();
        (status, retry, json)
    }

    #[tokio::test]
    async fn errors_are_one_json_shape_with_their_headers() {
        let (status, retry, json) = body(HttpError::rate_limited(0)).await;
        assert_eq!((status.as_u16(), retry.as_deref()), (429, Some("1")));
        assert_eq!(json["error"], "rate_limited");
        assert_eq!(json["message"], "too many requests; retry in 1 s");
        let (status, retry, json) = body(HttpError::not_ready("rebuilding")).await;
        assert_eq!((status.as_u16(), retry.as_deref()), (503, Some("1")));
        assert_eq!(json, json!({"error": "not_ready", "message": "rebuilding"}));
        let problem = FieldError {
            index: 2,
            field: "event_type".into(),
            error: "required".into(),
        };
        let (status, retry, json) = body(HttpError::validation(vec![problem])).await;
        assert_eq!((status.as_u16(), retry), (422, None));
        assert_eq!(json["errors"][0]["index"], 2);
        let (_, _, json) = body(HttpError::too_many_sessions()).await;
        assert!(json.get("errors").is_none(), "{json}");
    }

    #[test]
    fn a_query_error_names_the_parameter_without_axums_prefix() {
        let uri = "/x?n=many".parse().unwrap_or_default();
        let Err(rejection) = Query::<Params>::try_from_uri(&uri) else {
            panic!("n=many deserialized");
        };
        let e = HttpError::query("invalid_query", &rejection);
        assert_eq!((e.status().as_u16(), e.code()), (400, "invalid_query"));
        assert!(e.message.starts_with("n: "), "{}", e.message);
        let uri = "/x?n=1&n=2".parse().unwrap_or_default();
        let Err(rejection) = Query::<Params>::try_from_uri(&uri) else {
            panic!("a repeated parameter deserialized");
        };
        let e = HttpError::query("invalid_query", &rejection);
        assert!(e.message.contains("`n`"), "{}", e.message);
    }
}
