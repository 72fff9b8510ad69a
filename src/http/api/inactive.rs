//! `GET /v1/users/inactive` (service role only): the users whose last engagement event is older
//! than `for`, for the nudge engine (PRD §3: "is this user inactive for 48 h?"). Reads
//! `public.inactive_users()` (migration `20241215000000_engagement_activity.sql`), which pages
//! by `user_id` over `user_engagement_states.last_activity_at`, kept current by a trigger on
//! `engagement_events`.
//!
//! Query: `for` (a humantime duration such as `48h` or `7d`, 1 minute to 365 days, default
//! 48 h), `limit` (1–1000, default 100), `after` (the previous page's `next_after`, a UUID),
//! `include_opted_out` (`true`/`false`, default `false`: users with
//! `user_profiles.reengagement_opt_out` are left out).
//! Body: `{"users": [{"user_id", "last_activity_at"}], "next_after": "<uuid>" | null}`, ordered
//! by `user_id`; `last_activity_at` is RFC 3339 UTC with microseconds (as in the stream).

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::json;
use uuid::Uuid;

use tokio_postgres::types::ToSql;

use super::role::query_as;
use crate::auth::Principal;
use crate::http::{AppState, HttpError};
use crate::model::format_unix_us;

/// Largest page.
pub const MAX_LIMIT: i32 = crate::http::query::MAX_PAGE as i32;
/// Page size without `limit`.
pub const DEFAULT_LIMIT: i32 = 100;
/// Inactivity threshold without `for`: 48 hours.
pub const DEFAULT_FOR: Duration = Duration::from_secs(48 * 3600);
/// Shortest `for`: 1 minute (`last_activity_at` is written at most once a minute).
pub const MIN_FOR: Duration = Duration::from_secs(60);
/// Longest `for`: 365 days.
pub const MAX_FOR: Duration = Duration::from_secs(365 * 86_400);

/// `$1` the threshold in seconds, `$2` the row limit, `$3` the cursor or NULL, `$4` whether
/// opted-out users are included.
const PAGE_SQL: &str = "SELECT user_id, last_activity_at \
     FROM public.inactive_users(make_interval(secs => $1), $2, $3, $4)";

/// The query of `GET /v1/users/inactive`. Unknown parameters are ignored; a repeated or
/// malformed one is a 400 `invalid_query` whose message names it.
#[derive(Debug, Default, Deserialize)]
pub struct InactiveQuery {
    /// Inactive for at least this long ([`MIN_FOR`] to [`MAX_FOR`]); default [`DEFAULT_FOR`].
    #[serde(default, rename = "for", deserialize_with = "threshold")]
    pub inactive_for: Option<Duration>,
    /// Users per page, 1 to [`MAX_LIMIT`]; default [`DEFAULT_LIMIT`].
    #[serde(default, deserialize_with = "crate::http::query::page_limit")]
    pub limit: Option<i32>,
    /// The previous page's `next_after`: the page starts after this `user_id`.
    #[serde(default, deserialize_with = "after")]
    pub after: Option<Uuid>,
    /// Include users who opted out of re-engagement; default `false`.
    #[serde(default, deserialize_with = "flag")]
    pub include_opted_out: Option<bool>,
}

/// `for`: a humantime duration within [`MIN_FOR`]..=[`MAX_FOR`].
fn threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .ok()
        .filter(|t| (MIN_FOR..=MAX_FOR).contains(t))
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom("must be a duration from 1m to 365d, e.g. 48h or 7d")
        })
}

/// `after`: a UUID.
fn after<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
    let text = String::deserialize(d)?;
    Uuid::parse_str(&text)
        .map(Some)
        .map_err(|_| serde::de::Error::custom("must be a UUID (a previous page's next_after)"))
}

/// `include_opted_out`: `true` or `false`.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let text = String::deserialize(d)?;
    match text.as_str() {
        "true" => Ok(Some(true)),
        "false" => Ok(Some(false)),
        _ => Err(serde::de::Error::custom("must be true or false")),
    }
}

/// One page of inactive users, read as `principal`, which must be the service role (the
/// handler, `super::get_inactive`, answers any other caller with a 403 before the query is
/// read; only `service_role` may execute `public.inactive_users()`).
///
/// Errors: 503 when the database is unavailable; other database errors are 500s.
pub async fn page(
    state: &AppState,
    principal: &Principal,
    query: &InactiveQuery,
) -> Result<Response, HttpError> {
    let threshold = query.inactive_for.unwrap_or(DEFAULT_FOR).as_secs_f64();
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    let include = query.include_opted_out.unwrap_or(false);

    let params: [&(dyn ToSql + Sync); 4] = [&threshold, &(limit + 1), &query.after, &include];
    let rows = query_as(
        &state.pool,
        principal,
        PAGE_SQL,
        &params,
        HttpError::database,
    )
    .await?;

    let more = rows.len() > limit as usize;
    let users: Vec<(Uuid, DateTime<Utc>)> = rows
        .iter()
        .take(limit as usize)
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let next_after = users.last().filter(|_| more).map(|(id, _)| *id);
    let users: Vec<_> = users
        .iter()
        .map(|(id, at)| {
            json!({"user_id": id, "last_activity_at": format_unix_us(at.timestamp_micros())})
        })
        .collect();
    let body = json!({"users": users, "next_after": next_after});
    Ok((StatusCode::OK, Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> Result<InactiveQuery, String> {
        let uri: axum::http::Uri = format!("/v1/users/inactive?{q}")
            .parse()
            .unwrap_or_default();
        axum::extract::Query::<InactiveQuery>::try_from_uri(&uri)
            .map(|q| q.0)
            .map_err(|e| HttpError::query("invalid_query", &e).message().to_string())
    }

    #[test]
    fn the_query_is_typed_and_each_refusal_names_its_parameter() {
        let id = Uuid::new_v4();
        let good = query(&format!(
            "for=7d&limit=1000&after={id}&include_opted_out=true&other=1"
        ))
        .unwrap();
        assert_eq!(good.inactive_for, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(
            (good.limit, good.after, good.include_opted_out),
            (Some(1000), Some(id), Some(true))
        );
        let empty = query("").unwrap();
        assert_eq!(
            (empty.inactive_for, empty.limit, empty.after),
            (None, None, None)
        );
        assert_eq!(query("for=1m").unwrap().inactive_for, Some(MIN_FOR));
        assert_eq!(query("for=365d").unwrap().inactive_for, Some(MAX_FOR));
        let duration = "for: must be a duration from 1m to 365d, e.g. 48h or 7d";
        for (q, message) in [
            ("for=59s", duration),
            ("for=366d", duration),
            ("for=soon", duration),
            ("for=", duration),
            ("limit=0", "limit: must be 1 to 1000"),
            ("limit=1001", "limit: must be 1 to 1000"),
            ("limit=x", "limit: must be 1 to 1000"),
            (
                "after=nope",
                "after: must be a UUID (a previous page's next_after)",
            ),
            (
                "include_opted_out=yes",
                "include_opted_out: must be true or false",
            ),
            ("limit=1&limit=2", "duplicate field `limit`"),
        ] {
            assert_eq!(query(q).err().as_deref(), Some(message), "{q}");
        }
    }
}
