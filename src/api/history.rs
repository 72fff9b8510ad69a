//! `GET /v1/events` without a WebSocket upgrade: the caller's own history, newest first,
//! keyset-paginated on `("timestamp", id)` so a page never skips or repeats a row while new
//! rows arrive. Executed under RLS like the inserts; the `user_id = $1` condition lets the
//! planner use `idx_engagement_events_user_timestamp` (user_id, "timestamp" DESC).
//!
//! Query: `since`, `until` (RFC 3339: `since <= timestamp < until`), `event_type` (comma
//! separated), `limit` (1–1000, default 100), `cursor` (the previous page's `next_cursor`),
//! `user_id` (service role only; a user always gets their own).
//! Body: `{"events": [records as in the stream], "next_cursor": "<opaque>" | null}`.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::ingest::act_as;
use super::ApiError;
use crate::auth::{Principal, Role};
use crate::http::AppState;
use crate::model::format_unix_us;

/// Largest page.
pub const MAX_LIMIT: i64 = 1000;

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

/// One page of history for `principal`.
pub async fn page(
    state: &AppState,
    principal: &Principal,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_query", m);
    // PostgreSQL text cannot hold NUL.
    if let Some(key) = query.iter().find(|(_, v)| v.contains('\0')).map(|(k, _)| k) {
        return Err(bad(format!("{key}: contains a NUL character")));
    }
    let time = |key: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
        query
            .get(key)
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| bad(format!("{key}: must be RFC 3339 with an offset")))
            })
            .transpose()
    };
    let (since, until) = (time("since")?, time("until")?);
    let types: Option<Vec<String>> = query.get("event_type").map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    });
    let limit = match query.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| bad(format!("limit: must be 1 to {MAX_LIMIT}")))?,
    };
    let (after_ts, after_id) = match query.get("cursor") {
        None => (None, None),
        Some(c) => decode_cursor(c)
            .map(|(t, id)| (Some(t), Some(id)))
            .ok_or_else(|| bad("cursor: not a next_cursor this API returned".into()))?,
    };
    let user = match (principal.role, query.get("user_id")) {
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

    let mut client = state.pool.get().await.map_err(ApiError::unavailable)?;
    let tx = client.transaction().await.map_err(ApiError::database)?;
    act_as(&tx, principal).await?;
    let rows = tx
        .query(
            sql,
            &[
                &user,
                &since,
                &until,
                &types,
                &after_ts,
                &after_id,
                &(limit + 1),
            ],
        )
        .await
        .map_err(|e| match e.code() {
            // Class 22: a value PostgreSQL cannot take (e.g. invalid encoding).
            Some(c) if c.code().starts_with("22") => bad(super::describe(&e)),
            _ => ApiError::database(e),
        })?;
    tx.commit().await.map_err(ApiError::database)?;

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
}
