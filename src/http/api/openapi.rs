//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' annotations
//! (`utoipa`) and served at `GET /openapi.json`.

use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::{Modify, OpenApi, ToSchema};

/// An event to insert (the table's columns; `id` is generated).
#[derive(Serialize, ToSchema)]
pub struct EventIn {
    /// Owner; must exist in `auth.users`. A user token may only send its own `sub`.
    pub user_id: uuid::Uuid,
    /// Lower snake case, `^[a-z][a-z0-9]*(_[a-z0-9]+)*$`, at most 64 characters.
    #[schema(pattern = "^[a-z][a-z0-9]*(_[a-z0-9]+)*$", max_length = 64)]
    pub event_type: String,
    /// RFC 3339 with an explicit offset; stored in UTC. Default: the server's `now()`. Not more
    /// than 60 s in the future, not before `ingest.oldest_timestamp`.
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    /// Any JSON object (default `{}`).
    #[schema(value_type = Option<Object>)]
    pub value: Option<serde_json::Value>,
}

/// `{"events": […]}`: at most `ingest.max_batch` (5,000) events.
#[derive(Serialize, ToSchema)]
pub struct EventsIn {
    /// The events, inserted all or nothing.
    pub events: Vec<EventIn>,
}

/// The header both POST endpoints accept.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKey {
    /// repeat within 24 h returns the first result
    #[param(rename = "Idempotency-Key")]
    pub idempotency_key: Option<String>,
}

/// 201: the new rows' ids, in input order.
#[derive(Serialize, ToSchema)]
pub struct Ids {
    /// One per event, in input order.
    pub ids: Vec<uuid::Uuid>,
}

/// One validation problem.
#[derive(Serialize, ToSchema)]
pub struct FieldProblem {
    /// Position of the event in the request, from 0.
    pub index: usize,
    /// The field, or `""` for the event itself.
    pub field: String,
    /// What is wrong.
    pub error: String,
}

/// Every error: `{"error": code, "message": text}` (plus `errors` on a 422).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `validation_failed`, `rate_limited`, `forbidden`.
    pub error: String,
    /// For humans.
    pub message: String,
    /// On `validation_failed`: every problem.
    pub errors: Option<Vec<FieldProblem>>,
}

/// A row as the stream sends it.
#[derive(Serialize, ToSchema)]
pub struct Record {
    /// Row id.
    pub id: uuid::Uuid,
    /// Owner.
    pub user_id: uuid::Uuid,
    /// UTC with microseconds and `Z`.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// Lower snake case type.
    pub event_type: String,
    /// The JSONB payload.
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    /// Soft-deleted.
    pub is_deleted: bool,
}

/// One history page, newest first.
#[derive(Serialize, ToSchema)]
pub struct Page {
    /// The rows.
    pub events: Vec<Record>,
    /// Pass as `cursor=` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// One inactive user.
#[derive(Serialize, ToSchema)]
pub struct InactiveUser {
    /// The user (`auth.users.id`).
    pub user_id: uuid::Uuid,
    /// Time of the user's newest event (up to 1 minute behind it), UTC with microseconds and `Z`.
    #[schema(format = DateTime)]
    pub last_activity_at: String,
}

/// One page of `GET /v1/users/inactive`, by `user_id`.
#[derive(Serialize, ToSchema)]
pub struct InactivePage {
    /// The users.
    pub users: Vec<InactiveUser>,
    /// Pass as `after=` for the next page; `null` on the last.
    pub next_after: Option<uuid::Uuid>,
}

/// The responses of both POST endpoints.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum IngestResponses {
    /// Inserted (or the first result of a repeated `Idempotency-Key`).
    #[response(
        status = 201,
        description = "inserted, or the first result of a repeated Idempotency-Key"
    )]
    Created(Ids),
    /// Malformed JSON or body.
    #[response(status = 400, description = "malformed JSON or body")]
    BadRequest(ErrorBody),
    /// Missing or invalid token.
    #[response(status = 401, description = "missing or invalid token")]
    Unauthorized(ErrorBody),
    /// Not a service-role token (batch), or RLS refused another user's `user_id`.
    #[response(status = 403, description = "role or row-level security refused")]
    Forbidden(ErrorBody),
    /// The same `Idempotency-Key` is in flight.
    #[response(status = 409, description = "the same Idempotency-Key is in flight")]
    Conflict(ErrorBody),
    /// Body or batch too large.
    #[response(status = 413, description = "body or batch too large")]
    TooLarge(ErrorBody),
    /// Validation failed; nothing written.
    #[response(status = 422, description = "validation failed; nothing written")]
    Invalid(ErrorBody),
    /// Rate limited (`Retry-After`).
    #[response(status = 429, description = "rate limited")]
    RateLimited(ErrorBody),
    /// Database unavailable.
    #[response(status = 503, description = "database unavailable")]
    Unavailable(ErrorBody),
}

/// The refusals every operator's console endpoint may answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ConsoleErrors {
    /// A `user_id` that is not a UUID, a malformed query or body.
    #[response(status = 400, description = "invalid user_id, query or body")]
    BadRequest(ErrorBody),
    /// Missing or invalid token.
    #[response(status = 401, description = "missing or invalid token")]
    Unauthorized(ErrorBody),
    /// Not a service-role token.
    #[response(status = 403, description = "not a service_role token")]
    Forbidden(ErrorBody),
    /// Rate limited (`Retry-After`).
    #[response(status = 429, description = "rate limited")]
    RateLimited(ErrorBody),
    /// The database could not be read or written.
    #[response(status = 503, description = "database unavailable")]
    Unavailable(ErrorBody),
}

/// `GET /v1/events` without a WebSocket upgrade (the same path with an upgrade is the stream).
#[utoipa::path(
    get,
    path = "/v1/events",
    params(
        ("since" = Option<String>, Query, description = "RFC 3339; rows at or after"),
        ("until" = Option<String>, Query, description = "RFC 3339; rows before"),
        ("event_type" = Option<String>, Query, description = "comma-separated types"),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 100"),
        ("cursor" = Option<String>, Query, description = "a previous page's next_cursor"),
        ("user_id" = Option<uuid::Uuid>, Query, description = "service role only"),
    ),
    responses(
        (status = 200, description = "a page", body = Page),
        (status = 400, description = "invalid query", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[allow(dead_code)]
fn history() {}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "engagement-relay HTTP API",
        description = "Ingest and history of public.engagement_events, next to the WebSocket stream, \
                       the inactive users of public.user_engagement_states, and the operator's \
                       console: status, presence, disconnects and token revocations."
    ),
    paths(
        history,
        super::post_batch,
        super::post_events,
        super::get_inactive,
        super::status::get_status,
        super::status::get_user_status,
        super::status::get_presence,
        super::status::list_presence,
        super::admin::post_disconnect,
        super::admin::post_revocation
    ),
    components(schemas(
        EventIn, EventsIn, Ids, FieldProblem, ErrorBody, Record, Page, InactiveUser, InactivePage
    )),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

/// Declares the `bearer` (JWT) security scheme.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// `GET /openapi.json`.
pub async fn document() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
