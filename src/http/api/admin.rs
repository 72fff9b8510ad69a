//! The operator's actions (service role only, audited; issue 16):
//! `POST /v1/admin/users/{user_id}/disconnect` and `POST /v1/admin/revocations`
//! (`{"user_id", "issued_before"}`). Both act on every node ([`crate::console`]) and write a
//! row to `relay.audit_log` whose id they return.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{json_body, service_caller};
use crate::console::Actor;
use crate::http::{AppState, HttpError};

/// The body of `POST /v1/admin/revocations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevocationIn {
    /// The user whose tokens are revoked.
    pub user_id: Uuid,
    /// Tokens with an `iat` before this instant (RFC 3339), or without `iat`, are refused.
    /// Default: now. At most 5 minutes in the future.
    pub issued_before: Option<DateTime<Utc>>,
}

/// 200 of `POST /v1/admin/users/{user_id}/disconnect`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Disconnected {
    /// The user.
    pub user_id: Uuid,
    /// Sessions closed on the node that answered (4004); the other nodes close theirs too.
    pub closed_on_node: usize,
    /// The `relay.audit_log` row.
    pub audit_id: i64,
}

/// 201 of `POST /v1/admin/revocations`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    /// The user.
    pub user_id: Uuid,
    /// The instant in force (the later of this and an earlier revocation's).
    pub issued_before: DateTime<Utc>,
    /// When the revocation lapses (`issued_before` + `auth.max_token_lifetime`).
    pub expires_at: DateTime<Utc>,
    /// Sessions closed on the node that answered (4001); the other nodes close theirs too.
    pub closed_on_node: usize,
    /// The `relay.audit_log` row.
    pub audit_id: i64,
}

/// The longest `issued_before` may be ahead of the clock.
const MAX_AHEAD_S: i64 = 300;

fn actor(token: &str) -> Actor {
    let (sub, kid) = crate::auth::token_identity(token);
    Actor { sub, kid }
}

/// `POST /v1/admin/users/{user_id}/disconnect`.
#[utoipa::path(
    post,
    path = "/v1/admin/users/{user_id}/disconnect",
    params(("user_id" = Uuid, Path, description = "the user")),
    responses(
        (status = 200, description = "closed (4004) on every node; audited", body = Disconnected),
        super::openapi::ConsoleErrors,
    ),
    security(("bearer" = []))
)]
pub async fn post_disconnect(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: Result<Path<Uuid>, PathRejection>,
) -> Result<Response, HttpError> {
    let (_, token) = service_caller(&state, &headers, "POST /v1/admin/users/{id}/disconnect")?;
    let Path(user) =
        user.map_err(|_| HttpError::bad_request("invalid_user_id", "user_id: must be a UUID"))?;
    let (applied, audit_id) = state
        .console
        .disconnect(&actor(token), user)
        .await
        .map_err(HttpError::unavailable)?;
    Ok(Json(Disconnected {
        user_id: user,
        closed_on_node: applied.closed,
        audit_id,
    })
    .into_response())
}

/// `POST /v1/admin/revocations`.
#[utoipa::path(
    post,
    path = "/v1/admin/revocations",
    request_body = RevocationIn,
    responses(
        (status = 201, description = "stored, applied on every node, audited", body = Revoked),
        (status = 422, description = "issued_before too far ahead", body = super::openapi::ErrorBody),
        super::openapi::ConsoleErrors,
    ),
    security(("bearer" = []))
)]
pub async fn post_revocation(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let (_, token) = service_caller(&state, &headers, "POST /v1/admin/revocations")?;
    let body: RevocationIn = serde_json::from_value(json_body(body)?)
        .map_err(|e| HttpError::bad_request("malformed_body", e.to_string()))?;
    let now = Utc::now();
    let issued_before = body.issued_before.unwrap_or(now);
    if (issued_before - now).num_seconds() > MAX_AHEAD_S {
        return Err(HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_issued_before",
            "issued_before: at most 5 minutes in the future",
        ));
    }
    let (stored, applied, audit_id) = state
        .console
        .revoke(&actor(token), body.user_id, issued_before)
        .await
        .map_err(HttpError::unavailable)?;
    let at = |us| DateTime::from_timestamp_micros(us).unwrap_or(now);
    let revoked = Revoked {
        user_id: body.user_id,
        issued_before: at(stored.issued_before_us),
        expires_at: at(stored.expires_at_us),
        closed_on_node: applied.closed,
        audit_id,
    };
    Ok((StatusCode::CREATED, Json(revoked)).into_response())
}
