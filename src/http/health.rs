//! `GET /healthz` (the process answers) and `GET /readyz` (the replication stream is connected
//! and, after a start, the replay window is rebuilt), for load balancers and orchestrators.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{AppState, REBUILDING};

/// `GET /healthz`: 200 `{"status":"ok"}` while the server runs.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 `{"status":"ready"}`, else 503 `{"status":"unavailable","reason":…}`
/// with the replication stream's last error, or why it is not ready yet.
pub async fn readyz(State(state): State<AppState>) -> Response {
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
