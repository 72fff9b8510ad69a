//! The WebSocket upgrade routes: `GET /v1/events` (native stream; without an upgrade it is the
//! history API) and `GET /realtime/v1/websocket` (Supabase Realtime clients).
//!
//! A refused upgrade is answered before the handshake with an [`HttpError`]: 400 for a query
//! that does not parse (`invalid_query`), a table that is not streamed (`unknown_table`) or an
//! unknown `vsn` (`unsupported_vsn`); 401 for a missing, malformed, wrongly signed or expired
//! token, 403 for a valid token whose role may not subscribe; 426 for a plain GET without an
//! upgrade; 429 when the caller already holds its cap of sessions (`too_many_user_sessions`,
//! `limits.max_sessions_per_user`; `too_many_service_sessions`, `limits.max_service_sessions`;
//! `Retry-After: 5`); 503 while the replay window is rebuilt after start (`not_ready`,
//! `Retry-After: 1`) or when every `server.max_sessions` permit is held (`too_many_sessions`).
//!
//! A Realtime socket takes no session slot: it subscribes to nothing until a channel joins,
//! and each joined channel takes one (docs/PROTOCOL.md, "Session caps").

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocket;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use metrics::counter;
use serde::Deserialize;

use super::bearer::{self, AccessToken};
use super::query::CommaList;
use super::{api, AppState, HttpError, REBUILDING};
use crate::auth::AuthError;
use crate::filter::Interest;
use crate::metrics as m;
use crate::model::Cursor;
use crate::presence::Endpoint;
use crate::refused::{self, Reason};
use crate::session::realtime::phoenix::Vsn;
use crate::session::{self, SessionContext};
use crate::tables::{Selection, Tables};

/// Read buffer per session, bytes. tungstenite allocates it up front and zero-fills it before
/// each read, so it is resident in every idle session. Heartbeats are under 100 bytes; a larger
/// frame (a Realtime `phx_join` or a token refresh carries a JWT of about 1 KiB) is read in
/// 512-byte steps into a buffer grown to the frame's length, which that session then keeps
/// (tungstenite 0.29 `FrameCodec`): the saving is a native session's that sends none (issue 17).
const READ_BUFFER_BYTES: usize = 512;
/// Frames are gathered up to this many bytes before a write (a batch is flushed anyway).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// The query of the native stream, `GET /v1/events` with an upgrade. Unknown parameters are
/// ignored; a repeated one is a 400 `invalid_query`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    /// The JWT when there is no `Authorization: Bearer` header (read first, by
    /// [`AccessToken`]).
    pub access_token: Option<String>,
    /// `table=a,b`: names or `schema.table` among `[[tables]]`; absent or empty is every
    /// streamed table.
    pub table: Option<CommaList>,
    /// `event_type=a,b`: absent or empty is every type.
    pub event_type: Option<CommaList>,
    /// `since=<cursor>`: resume after this event's cursor (32 hex digits). Parsed by the upgrade
    /// so that a malformed one is answered on the socket (an `error` frame, then 1008), where a
    /// client library reports it, rather than as a failed handshake it would retry.
    pub since: Option<String>,
    /// `presence=true`: also receive `presence` frames (a service-role token only; a user's
    /// is refused 403 `forbidden`).
    pub presence: Option<bool>,
}

/// The query of `GET /realtime/v1/websocket`, as Supabase clients send it. Unknown parameters
/// (`log_level`, …) are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct RealtimeQuery {
    /// The project's API key: a JWT (checked here: any role may open the socket) or an opaque
    /// `sb_…` key (not checked). Each channel is authorized at `phx_join` by its `access_token`.
    pub apikey: Option<String>,
    /// The Phoenix serializer: `1.0.0` (objects, the default) or `2.0.0` (arrays); anything else
    /// is a 400 `unsupported_vsn`.
    pub vsn: Option<String>,
}

/// Counts a refused token (`relay_auth_failures_total` by reason) and answers it.
fn refuse(e: AuthError) -> HttpError {
    counter!(m::AUTH_FAILURES, "reason" => e.code()).increment(1);
    HttpError::from(e)
}

/// `GET /v1/events`: the native stream with an upgrade, the history API without one.
pub async fn native_upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    native(state, headers, uri, upgrade)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn native(
    state: AppState,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    // The token first: an unauthenticated request learns nothing about its other parameters.
    let Query(credentials) = Query::<AccessToken>::try_from_uri(&uri)
        .map_err(|e| HttpError::query("invalid_query", &e))?;
    let token = bearer::token(&headers, &credentials).ok_or_else(|| refuse(AuthError::Missing))?;
    let principal = state.verifier.verify(token).map_err(refuse)?;
    // A plain GET (no upgrade) is the history API.
    let upgrade = match upgrade {
        Err(_) if !headers.contains_key(header::UPGRADE) => {
            state.rate_limits.check(&principal, token)?;
            let Query(query) = Query::<api::history::HistoryQuery>::try_from_uri(&uri)
                .map_err(|e| HttpError::query("invalid_query", &e))?;
            return api::history::page(&state, &principal, &query).await;
        }
        upgrade => upgrade,
    };
    let Query(query) = Query::<StreamQuery>::try_from_uri(&uri)
        .map_err(|e| HttpError::query("invalid_query", &e))?;
    let since = query.since.as_deref().map(str::parse::<Cursor>);
    let interest = interest(query.table, query.event_type, &state.tables)
        .map_err(|why| HttpError::bad_request("unknown_table", why))?;
    let presence = query.presence.unwrap_or(false);
    if presence && principal.role != crate::auth::Role::ServiceRole {
        return Err(HttpError::forbidden(
            "presence=true needs a service_role token",
        ));
    }
    // Checked and taken in one step, held until the session ends (dropped with the task).
    let slot = state
        .router
        .take_slot(
            &principal,
            state.limits.max_sessions_per_user.get(),
            state.limits.max_service_sessions.get(),
        )
        .map_err(HttpError::session_cap)?;
    start_session(&state, upgrade, Endpoint::Native, move |ws, ctx| {
        // `map`, not an async block: see `start_session`.
        session::run_native(ws, ctx, principal, interest, since, presence).map(move |()| drop(slot))
    })
}

/// `GET /realtime/v1/websocket?apikey=…&vsn=…`: Supabase Realtime clients. The `apikey` is
/// checked here when it is a JWT (any role, `anon` included: it only opens the socket); each
/// channel is authorized at `phx_join` by its `access_token`.
pub async fn realtime_upgrade(
    State(state): State<AppState>,
    query: Result<Query<RealtimeQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    realtime(state, query, upgrade)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn realtime(
    state: AppState,
    query: Result<Query<RealtimeQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    let Query(query) = query.map_err(|e| HttpError::query("invalid_query", &e))?;
    let vsn = Vsn::from_param(query.vsn.as_deref())
        .map_err(|why| HttpError::bad_request("unsupported_vsn", why))?;
    let apikey = query.apikey.filter(|k| !k.is_empty());
    match apikey.as_deref() {
        None => return Err(refuse(AuthError::Missing)),
        Some(key) if !key.starts_with("sb_") => match state.verifier.verify(key) {
            Ok(_) | Err(AuthError::Forbidden(_)) => {}
            Err(e) => return Err(refuse(e)),
        },
        Some(_) => {}
    }
    start_session(&state, upgrade, Endpoint::Realtime, move |ws, ctx| {
        session::realtime::run_realtime(ws, ctx, vsn, apikey)
    })
}

/// The native stream's interest from its `table` and `event_type` parameters.
///
/// Errors: the reason (naming the streamed tables) when a table name or `schema.table` is not
/// streamed by `[[tables]]` (or is a wildcard: leave `table` out for every table); the upgrade
/// answers it with HTTP 400 `unknown_table`.
fn interest(
    table: Option<CommaList>,
    event_type: Option<CommaList>,
    tables: &Tables,
) -> Result<Interest, String> {
    let selection = match table.and_then(CommaList::non_empty) {
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
        event_types: event_type.and_then(CommaList::non_empty),
    })
}

/// Upgrades the connection (or explains why not: 426, 503) and runs `run` as a tracked
/// session task holding one of the `server.max_sessions` permits, and its registration in the
/// session registry (on `endpoint`), until it ends.
fn start_session<F, Fut>(
    state: &AppState,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    endpoint: Endpoint,
    run: F,
) -> Result<Response, HttpError>
where
    F: FnOnce(WebSocket, SessionContext) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let upgrade = upgrade.map_err(|e| HttpError::websocket_required(&e.body_text()))?;
    if !state.status.is_rebuilt() {
        return Err(HttpError::not_ready(REBUILDING));
    }
    let permit = state
        .session_permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            refused::one(Reason::MaxSessions);
            HttpError::too_many_sessions()
        })?;
    let max_frame = state.limits.max_client_frame_bytes;
    // Registered now (dropped with the callback should the handshake never complete).
    let opened = state
        .console
        .registry()
        .open(endpoint, uuid::Uuid::new_v4().to_string());
    let ctx = SessionContext {
        router: state.router.clone(),
        tables: state.tables.clone(),
        verifier: state.verifier.clone(),
        limits: state.limits.clone(),
        shutdown: state.shutdown.clone(),
        restart: state.router.restart_signal(),
        archive: state.archive.clone(),
        registry: state.console.registry().clone(),
        info: opened.info.clone(),
    };
    let tracker = state.sessions.clone();
    // The session's task holds axum's upgrade future, whose state keeps the callback's captures
    // for the task's whole life beside the session's future: boxed, they cost 8 bytes there.
    // The guards are dropped by `map` rather than in an async block: a block would hold the
    // session's inputs as captures beside the future they were moved into (a generator never
    // reuses its captures' space), and a block awaiting a captured future holds it twice.
    // Together about 2 KB less per socket (BENCHMARKS.md §13).
    let pending = Box::new((run, ctx, opened, permit));
    Ok(upgrade
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        // Clients send only small control frames; tungstenite's 128 KiB default read buffer
        // is allocated up front and would dominate each idle session's memory.
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .on_upgrade(move |ws| {
            let (run, ctx, opened, permit) = *pending;
            tracker.track_future(run(ws, ctx).map(move |()| {
                drop(opened);
                drop(permit);
            }))
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn stream(q: &str) -> Result<StreamQuery, String> {
        let uri: Uri = format!("/v1/events?{q}").parse().unwrap_or_default();
        Query::<StreamQuery>::try_from_uri(&uri)
            .map(|q| q.0)
            .map_err(|e| HttpError::query("invalid_query", &e).message().to_string())
    }

    #[test]
    fn the_stream_query_narrows_to_streamed_tables_and_types() {
        let tables = Tables::new(&Config::default().tables);
        let q = stream("access_token=t&table=engagement_events,&event_type=a,b&since=00&x=1")
            .unwrap_or_default();
        assert_eq!(q.since.as_deref(), Some("00"));
        let narrowed = interest(q.table, q.event_type, &tables).unwrap_or_else(|e| panic!("{e}"));
        assert!(narrowed.tables.is_some());
        assert_eq!(narrowed.event_types, Some(["a".into(), "b".into()].into()));
        // Absent or empty lists narrow nothing.
        let q = stream("table=&event_type=,").unwrap_or_default();
        let everything = interest(q.table, q.event_type, &tables).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((everything.tables, everything.event_types), (None, None));
        for table in ["engagement_message_queue", "other.engagement_events", "*"] {
            let q = stream(&format!("table={table}")).unwrap_or_default();
            let why = interest(q.table, None, &tables).err().unwrap_or_default();
            assert!(why.contains("public.engagement_events"), "{table}: {why}");
        }
    }

    #[test]
    fn a_repeated_parameter_is_refused_by_name() {
        assert_eq!(
            stream("table=a&table=b").err().as_deref(),
            Some("duplicate field `table`")
        );
        let uri: Uri = "/realtime/v1/websocket?vsn=1.0.0&vsn=2.0.0"
            .parse()
            .unwrap_or_default();
        let refused = Query::<RealtimeQuery>::try_from_uri(&uri)
            .err()
            .map(|e| HttpError::query("invalid_query", &e).message().to_string());
        assert_eq!(refused.as_deref(), Some("duplicate field `vsn`"));
    }
}
