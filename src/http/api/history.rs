//! `GET /v1/events` without a WebSocket upgrade: the caller's own history, newest first,
//! keyset-paginated on `("timestamp", id)` so a page never skips or repeats a row while new
//! rows arrive. Executed under RLS like the inserts; the `user_id = $1` condition lets the
//! planner use `idx_engagement_events_user_timestamp` (user_id, "timestamp" DESC).
//!
//! Query: `since`, `until` (RFC 3339: `since <= timestamp < until`), `event_type` (comma
//! separated), `limit` (1–1000, default 100), `cursor` (the previous page's `next_cursor`),
//! `user_id` (service role only; a user always gets their own).
//! Body: `{"events": [records as in the stream], "next_cursor": "<opaque>" | null}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use tokio_postgres::types::ToSql;

use super::role::query_as;
use crate::auth::{Principal, Role};
use crate::http::query::CommaList;
use crate::http::AppState;
use crate::http::HttpError;
use crate::model::format_unix_us;

/// Largest page.
pub const MAX_LIMIT: i64 = crate::http::query::MAX_PAGE as i64;

/// The page query, for a user's rows (`$1` user, `$2`/`$3` since/until, `$4` event types or
/// NULL, `$5`/`$6` the cursor's timestamp and id or NULL, `$7` the row limit).
pub const USER_PAGE_SQL: &str = "SELECT id, user_id, \"timestamp\", event_type, value, is_deleted \
     FROM public.engagement_events \
     WHERE user_id = $1 \
       AND \"timestamp\" >= coalesce($2, '-infinity'::timestamptz) \
       AND \"timestamp\" < coalesce($3, 'infinity'::timestamptz) \
       AND ($4::text[] IS NULL OR event_type = ANY($4)) \
       AND ($5::timestamptz IS NULL OR (\"timestamp\" <= $5 AND (\"timestamp\", id) < ($5, $6))) \
     ORDER BY \"timestamp\" DESC, id DESC LIMIT $7";

/// The same for every user (a service-role caller without `user_id`): `$1` is ignored.
const ALL_PAGE_SQL: &str = "SELECT id, user_id, \"timestamp\", event_type, value, is_deleted \
     FROM public.engagement_events \
     WHERE $1::uuid IS NULL \
       AND \"timestamp\" >= coalesce($2, '-infinity'::timestamptz) \
       AND \"timestamp\" < coalesce($3, 'infinity'::timestamptz) \
       AND ($4::text[] IS NULL OR event_type = ANY($4)) \
       AND ($5::timestamptz IS NULL OR (\"timestamp\" <= $5 AND (\"timestamp\", id) < ($5, $6))) \
     ORDER BY \"timestamp\" DESC, id DESC LIMIT $7";

/// The query of `GET /v1/events` without an upgrade. Unknown parameters are ignored; a
/// repeated or malformed one is a 400 `invalid_query` whose message names it.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryQuery {
    /// Rows at or after this time (RFC 3339 with an offset).
    #[serde(default, deserialize_with = "rfc3339")]
    pub since: Option<DateTime<Utc>>,
    /// Rows before this time (RFC 3339 with an offset).
    #[serde(default, deserialize_with = "rfc3339")]
    pub until: Option<DateTime<Utc>>,
    /// `event_type=a,b`; present but empty matches no row.
    pub event_type: Option<CommaList>,
    /// Rows per page, 1 to [`MAX_LIMIT`]; default 100.
    #[serde(default, deserialize_with = "crate::http::query::page_limit")]
    pub limit: Option<i64>,
    /// The previous page's `next_cursor`: the page starts after that row.
    #[serde(default, deserialize_with = "page_cursor")]
    pub cursor: Option<(DateTime<Utc>, Uuid)>,
    /// Whose rows, for a service-role caller (a UUID; every user's when absent). A user always
    /// gets their own, so theirs is not read.
    pub user_id: Option<String>,
}

/// `since`/`until`: RFC 3339 with an offset.
fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let text = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| serde::de::Error::custom("must be RFC 3339 with an offset"))
}

/// `cursor`: a `next_cursor` this API returned.
fn page_cursor<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(DateTime<Utc>, Uuid)>, D::Error> {
    let text = String::deserialize(d)?;
    decode_cursor(&text)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("not a next_cursor this API returned"))
}

/// One page of history for `principal`.
///
/// Errors: 400 `invalid_query` for a `user_id` that is not a UUID (service role) or a value
/// PostgreSQL cannot take (an `event_type` with a NUL character); 503 when the database is
/// unavailable.
pub async fn page(
    state: &AppState,
    principal: &Principal,
    query: &HistoryQuery,
) -> Result<Response, HttpError> {
    let bad = |m: String| HttpError::bad_request("invalid_query", m);
    let types: Option<&[String]> = query.event_type.as_ref().map(|t| t.0.as_slice());
    // PostgreSQL text cannot hold NUL.
    if types.is_some_and(|t| t.iter().any(|t| t.contains('\0'))) {
        return Err(bad("event_type: contains a NUL character".into()));
    }
    let (since, until) = (query.since, query.until);
    let limit = query.limit.unwrap_or(100);
    let (after_ts, after_id) = query.cursor.unzip();
    let user = match (principal.role, &query.user_id) {
        (Role::Authenticated, _) => principal.user_id,
        (Role::ServiceRole, Some(u)) => {
            Some(Uuid::parse_str(u).map_err(|_| bad("user_id: must be a UUID".into()))?)
        }
        (Role::ServiceRole, None) => None,
    };
    let sql = if user.is_some() {
        USER_PAGE_SQL
    } else {
        ALL_PAGE_SQL
    };

    let params: [&(dyn ToSql + Sync); 7] = [
        &user,
        &since,
        &until,
        &types,
        &after_ts,
        &after_id,
        &(limit + 1),
    ];
    let rows = query_as(&state.pool, principal, sql, &params, |e| match e.code() {
        // Class 22: a value PostgreSQL cannot take (e.g. invalid encoding).
        Some(c) if c.code().starts_with("22") => bad(crate::db::describe(&e)),
        _ => HttpError::database(e),
    })
    .await?;

    let more = rows.len() as i64 > limit;
    let mut events = Vec::with_capacity(rows.len());
    let mut last = None;
    for row in rows.iter().take(limit as usize) {
        let id: Uuid = row.get(0);
        let timestamp: DateTime<Utc> = row.get(2);
        let mut record = Map::new();
        record.insert("id".into(), json!(id));
        record.insert("user_id".into(), json!(row.get::<_, Uuid>(1)));
        record.insert(
            "timestamp".into(),
            json!(format_unix_us(timestamp.timestamp_micros())),
        );
        record.insert("event_type".into(), json!(row.get::<_, String>(3)));
        record.insert("value".into(), row.get::<_, Value>(4));
        record.insert("is_deleted".into(), json!(row.get::<_, bool>(5)));
        events.push(Value::Object(record));
        last = Some((timestamp, id));
    }
    let next_cursor = last.filter(|_| more).map(|(t, id)| encode_cursor(t, id));
    let body = json!({"events": events, "next_cursor": next_cursor});
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// `<timestamp µs as 16 hex><id as 32 hex>`: opaque to clients.
fn encode_cursor(timestamp: DateTime<Utc>, id: Uuid) -> String {
    format!(
        "{:016x}{}",
        timestamp.timestamp_micros() as u64,
        id.simple()
    )
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    if cursor.len() != 48 || !cursor.is_ascii() {
        return None;
    }
    let micros = u64::from_str_radix(&cursor[..16], 16).ok()? as i64;
    let id = Uuid::parse_str(&cursor[16..]).ok()?;
    Some((DateTime::from_timestamp_micros(micros)?, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let t = DateTime::from_timestamp_micros(1_763_640_000_123_456).unwrap();
        let id = Uuid::new_v4();
        assert_eq!(decode_cursor(&encode_cursor(t, id)), Some((t, id)));
        for bad in ["", "zz", &"g".repeat(48), "ÿ"] {
            assert_eq!(decode_cursor(bad), None);
        }
    }

    fn query(q: &str) -> Result<HistoryQuery, String> {
        let uri: axum::http::Uri = format!("/v1/events?{q}").parse().unwrap_or_default();
        axum::extract::Query::<HistoryQuery>::try_from_uri(&uri)
            .map(|q| q.0)
            .map_err(|e| HttpError::query("invalid_query", &e).message().to_string())
    }

    #[test]
    fn the_query_is_typed_and_each_refusal_names_its_parameter() {
        let t = DateTime::from_timestamp_micros(1_763_640_000_123_456).unwrap();
        let id = Uuid::new_v4();
        let good = query(&format!(
            "since=2026-11-01T00:00:00Z&until=2026-11-02T01:00:00%2B01:00&event_type=a,,b&limit=7\
             &cursor={}&user_id=x&access_token=t&other=1",
            encode_cursor(t, id)
        ))
        .unwrap();
        assert_eq!(
            good.since.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-11-01T00:00:00+00:00")
        );
        assert_eq!(
            good.until,
            good.since.map(|t| t + chrono::Duration::days(1))
        );
        assert_eq!(
            good.event_type,
            Some(CommaList(vec!["a".into(), "b".into()]))
        );
        assert_eq!((good.limit, good.cursor), (Some(7), Some((t, id))));
        assert_eq!(good.user_id.as_deref(), Some("x"));
        let empty = query("").unwrap();
        assert_eq!(
            (empty.since, empty.limit, empty.event_type),
            (None, None, None)
        );
        for (q, message) in [
            ("limit=0", "limit: must be 1 to 1000"),
            ("limit=x", "limit: must be 1 to 1000"),
            ("limit=1001", "limit: must be 1 to 1000"),
            ("since=yesterday", "since: must be RFC 3339 with an offset"),
            ("until=2026-01-01", "until: must be RFC 3339 with an offset"),
            ("cursor=abc", "cursor: not a next_cursor this API returned"),
            ("limit=1&limit=2", "duplicate field `limit`"),
        ] {
            assert_eq!(query(q).err().as_deref(), Some(message), "{q}");
        }
    }
}
