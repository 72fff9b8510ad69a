//! The operator's read-only views (service role only; issue 16): `GET /v1/status` (this
//! node), `GET /v1/status/users/{user_id}` (a user's sessions on this node: "why did X not get
//! event Y?"), `GET /v1/presence/{user_id}` and `GET /v1/presence?online=true` (over every
//! node).
//!
//! Times are RFC 3339 UTC with microseconds; durations are named with their unit (`_ms`,
//! `_s`).

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::service_caller;
use crate::console::store;
use crate::http::{AppState, HttpError};
use crate::model::now_unix_us;
use crate::presence::{Endpoint, Presence};

/// This node: `node.role` is `single` (no cluster), `publisher` (holds the slot) or
/// `standby`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// Which node answered.
    pub node: NodeStatus,
    /// The event source.
    pub replication: ReplicationStatus,
    /// The in-memory replay window.
    pub replay: ReplayStatus,
    /// Open sockets on this node.
    pub sessions: SessionCounts,
    /// Users online on any node.
    pub presence: PresenceTotals,
}

/// Which node answered and what it runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeStatus {
    /// The node's id (random per process).
    pub id: String,
    /// `single`, `publisher` or `standby`.
    pub role: &'static str,
    /// The relay's version (Cargo package version).
    pub version: &'static str,
    /// When the process started.
    pub started_at: DateTime<Utc>,
    /// Seconds since then.
    pub uptime_s: i64,
}

/// The event source: the replication slot (single node) or the JetStream consumer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplicationStatus {
    /// The source is connected.
    pub connected: bool,
    /// Connected and the replay window rebuilt (`/readyz`).
    pub ready: bool,
    /// This node holds the replication slot.
    pub holds_slot: bool,
    /// Cursor of the newest event dispatched.
    pub latest_cursor: String,
    /// Commit → dispatch delay of that event, ms (`null` before any).
    pub lag_ms: Option<f64>,
    /// Its age now, ms (`null` before any): how long the stream has been quiet.
    pub newest_event_age_ms: Option<f64>,
    /// The last connection error, if the source is not connected.
    pub last_error: Option<String>,
}

/// The replay window.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayStatus {
    /// Events held.
    pub events: usize,
    /// Their frames' bytes.
    pub bytes: usize,
    /// Age of the oldest event, s (`null`: empty).
    pub oldest_age_s: Option<f64>,
    /// `replay.window`, s.
    pub window_s: f64,
}

/// Open sockets by endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionCounts {
    /// `/v1/events`.
    pub native: usize,
    /// `/realtime/v1/websocket`.
    pub realtime: usize,
    /// Both.
    pub total: usize,
}

/// Presence totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceTotals {
    /// `presence.enabled`.
    pub enabled: bool,
    /// Users online on any node.
    pub online_users: usize,
    /// Their sockets.
    pub sessions: u64,
}

/// One user's presence over every node.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPresence {
    /// The user.
    pub user_id: Uuid,
    /// At least one socket open on some node.
    pub online: bool,
    /// Sockets open (a Realtime socket counts once whatever its channels).
    pub sessions: u32,
    /// Sockets by endpoint.
    pub endpoints: EndpointCounts,
    /// When the earliest open socket opened (`null` offline).
    pub online_since: Option<DateTime<Utc>>,
    /// When the user's last session closed (kept `presence.retention`; `null`: unknown).
    pub last_seen: Option<DateTime<Utc>>,
}

/// Sockets by endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointCounts {
    /// `/v1/events`.
    pub native: u32,
    /// `/realtime/v1/websocket`.
    pub realtime: u32,
}

/// A page of online users, by `user_id`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresencePage {
    /// The users.
    pub users: Vec<UserPresence>,
    /// Pass as `after=` for the next page; `null` on the last.
    pub next_after: Option<Uuid>,
}

/// A user's sessions on the node that answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserStatus {
    /// The user.
    pub user_id: Uuid,
    /// Online on any node.
    pub online: bool,
    /// The node that answered (sessions on other nodes are listed by asking them).
    pub node: String,
    /// Its sockets acting for the user (as the user, or a service-role token with that `sub`).
    pub sessions: Vec<SessionStatus>,
}

/// One socket.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionStatus {
    /// The session id (the native `ready` frame's).
    pub session_id: String,
    /// The node it is on.
    pub node: String,
    /// `native` or `realtime`.
    #[schema(value_type = String)]
    pub endpoint: Endpoint,
    /// When it opened.
    pub connected_at: DateTime<Utc>,
    /// Its router subscriptions (a Realtime socket: one per subscribed channel).
    pub subscriptions: Vec<SubscriptionStatus>,
    /// Events written to it so far (replayed ones included).
    pub events_delivered: u64,
    /// Cursor of the last event written (`null` before any).
    pub last_cursor: Option<String>,
}

/// One subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionStatus {
    /// `schema.table` it is narrowed to (`null`: every streamed table).
    pub tables: Option<Vec<String>>,
    /// Event types it is narrowed to (`null`: every type).
    pub event_types: Option<Vec<String>>,
    /// The Realtime channel's topic (`null` native).
    pub topic: Option<String>,
    /// Events queued for it, not yet written (its bound is `limits.session_queue`).
    pub queue_depth: usize,
}

/// The query of `GET /v1/presence`.
#[derive(Debug, Default, Deserialize)]
pub struct PresenceQuery {
    /// Only `true` (the default): the users online now.
    pub online: Option<bool>,
    /// Users per page, 1 to 1000; default 100.
    #[serde(default, deserialize_with = "crate::http::query::page_limit")]
    pub limit: Option<i32>,
    /// The previous page's `next_after`.
    pub after: Option<Uuid>,
}

fn presence_of(
    user: Uuid,
    presence: Option<Presence>,
    last_seen: Option<DateTime<Utc>>,
) -> UserPresence {
    let counts = presence.map(|p| p.counts);
    UserPresence {
        user_id: user,
        online: counts.is_some(),
        sessions: counts.map_or(0, |c| c.sessions()),
        endpoints: EndpointCounts {
            native: counts.map_or(0, |c| c.native),
            realtime: counts.map_or(0, |c| c.realtime),
        },
        online_since: counts.map(|c| c.online_since),
        last_seen,
    }
}

fn store_error(e: store::StoreError) -> HttpError {
    HttpError::unavailable(e)
}

/// `GET /v1/status`: service role only.
#[utoipa::path(
    get,
    path = "/v1/status",
    responses(
        (status = 200, description = "this node's status", body = Status),
        super::openapi::ConsoleErrors,
    ),
    security(("bearer" = []))
)]
pub async fn get_status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Status>, HttpError> {
    service_caller(&state, &headers, "GET /v1/status")?;
    let now_us = now_unix_us();
    let registry = state.console.registry();
    let node = &state.node;
    let role = match (node.clustered, node.slot.is_connected()) {
        (false, _) => "single",
        (true, true) => "publisher",
        (true, false) => "standby",
    };
    let window = state.router.window_stats();
    let latest = state.router.latest_cursor();
    let lag_us = state.router.latest_lag_us();
    let newest = window.newest_commit_us;
    let (native, realtime) = registry.open_counts();
    let (online_users, online_sessions) = registry.online_totals();
    Ok(Json(Status {
        node: NodeStatus {
            id: registry.node().to_string(),
            role,
            version: env!("CARGO_PKG_VERSION"),
            started_at: node.started_at,
            uptime_s: (Utc::now() - node.started_at).num_seconds(),
        },
        replication: ReplicationStatus {
            connected: state.status.is_connected(),
            ready: state.status.is_ready(),
            holds_slot: node.slot.is_connected(),
            latest_cursor: latest.to_string(),
            lag_ms: newest.map(|_| lag_us as f64 / 1e3),
            newest_event_age_ms: newest.map(|t| (now_us - t).max(0) as f64 / 1e3),
            last_error: state.status.last_error(),
        },
        replay: ReplayStatus {
            events: window.events,
            bytes: window.bytes,
            oldest_age_s: window
                .oldest_commit_us
                .map(|t| (now_us - t).max(0) as f64 / 1e6),
            window_s: node.replay_window.as_secs_f64(),
        },
        sessions: SessionCounts {
            native,
            realtime,
            total: native + realtime,
        },
        presence: PresenceTotals {
            enabled: registry.enabled(),
            online_users,
            sessions: online_sessions,
        },
    }))
}

/// `GET /v1/status/users/{user_id}`: service role only.
#[utoipa::path(
    get,
    path = "/v1/status/users/{user_id}",
    params(("user_id" = Uuid, Path, description = "the user")),
    responses(
        (status = 200, description = "the user's sessions on this node", body = UserStatus),
        super::openapi::ConsoleErrors,
    ),
    security(("bearer" = []))
)]
pub async fn get_user_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Json<UserStatus>, HttpError> {
    service_caller(&state, &headers, "GET /v1/status/users")?;
    let Path(user) = user.map_err(|_| bad_user())?;
    let registry = state.console.registry();
    let mut depths = std::collections::HashMap::new();
    let sessions = registry
        .sessions_of(user)
        .into_iter()
        .map(|info| {
            let subscriptions = info
                .subscriptions()
                .into_iter()
                .map(|s| {
                    let of_owner = depths
                        .entry(s.owner)
                        .or_insert_with(|| state.router.queue_depths(s.owner));
                    SubscriptionStatus {
                        queue_depth: of_owner.get(&s.ticket).copied().unwrap_or(0),
                        tables: s.tables,
                        event_types: s.event_types,
                        topic: s.topic,
                    }
                })
                .collect();
            SessionStatus {
                session_id: info.id.clone(),
                node: registry.node().to_string(),
                endpoint: info.endpoint,
                connected_at: info.connected_at,
                subscriptions,
                events_delivered: info.delivered(),
                last_cursor: info.last_cursor().map(|c| c.to_string()),
            }
        })
        .collect();
    Ok(Json(UserStatus {
        user_id: user,
        online: registry.get(user).is_some(),
        node: registry.node().to_string(),
        sessions,
    }))
}

fn bad_user() -> HttpError {
    HttpError::bad_request("invalid_user_id", "user_id: must be a UUID")
}

/// `GET /v1/presence/{user_id}`: service role only.
#[utoipa::path(
    get,
    path = "/v1/presence/{user_id}",
    params(("user_id" = Uuid, Path, description = "the user")),
    responses(
        (status = 200, description = "the user's presence over every node", body = UserPresence),
        super::openapi::ConsoleErrors,
    ),
    security(("bearer" = []))
)]
pub async fn get_presence(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Json<UserPresence>, HttpError> {
    service_caller(&state, &headers, "GET /v1/presence")?;
    let Path(user) = user.map_err(|_| bad_user())?;
    let presence = state.console.registry().get(user);
    let last_seen = store::last_seen_of(state.console.pool(), user)
        .await
        .map_err(store_error)?;
    Ok(Json(presence_of(user, presence, last_seen)))
}

/// `GET /v1/presence?online=true&limit=&after=`: service role only.
#[utoipa::path(
    get,
    path = "/v1/presence",
    params(
        ("online" = Option<bool>, Query, description = "only true (the default): users online now"),
        ("limit" = Option<i32>, Query, description = "1 to 1000, default 100"),
        ("after" = Option<Uuid>, Query, description = "a previous page's next_after"),
    ),
    responses(
        (status = 200, description = "a page of online users, by user_id", body = PresencePage),
        super::openapi::ConsoleErrors,
    ),
    security(("bearer" = []))
)]
pub async fn list_presence(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PresencePage>, HttpError> {
    service_caller(&state, &headers, "GET /v1/presence")?;
    let Query(query) = query.map_err(|e| HttpError::query("invalid_query", &e))?;
    if query.online == Some(false) {
        return Err(HttpError::bad_request(
            "invalid_query",
            "online: only true is supported (offline users' last_seen is in relay.presence)",
        ));
    }
    let limit = query.limit.unwrap_or(100).max(1) as usize;
    let mut page = state.console.registry().online(query.after, limit + 1);
    let more = page.len() > limit;
    page.truncate(limit);
    let next_after = more.then(|| page.last().map(|(u, _)| *u)).flatten();
    let users: Vec<Uuid> = page.iter().map(|(u, _)| *u).collect();
    let seen: std::collections::HashMap<Uuid, DateTime<Utc>> =
        store::last_seen_of_many(state.console.pool(), &users)
            .await
            .map(|rows| rows.into_iter().collect())
            .unwrap_or_default();
    Ok(Json(PresencePage {
        users: page
            .into_iter()
            .map(|(u, p)| presence_of(u, Some(p), seen.get(&u).copied()))
            .collect(),
        next_after,
    }))
}
