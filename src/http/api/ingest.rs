//! Inserting validated events: one transaction, one statement (`INSERT … SELECT FROM unnest`
//! of column arrays), ids generated here so that they come back in input order.
//!
//! Executed as the caller (`role::act_as`), so the table's RLS policies are the
//! authority on what a user may insert.

use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::idempotency;
use super::role::act_as;
use super::validate::{FieldError, NewEvent};
use crate::auth::Principal;
use crate::http::HttpError;

/// Inserts `events` in one transaction as `principal`; returns 201 and `{"ids": […]}` in
/// input order. With an `Idempotency-Key` already used by this caller within 24 hours, returns
/// the first result instead and inserts nothing.
///
/// Errors: 503 when no connection is available; 403 when RLS refuses a row (a user inserting
/// for someone else); 422 naming the first event of an unknown user (foreign key); 422 for
/// anything else the table refuses; 409 when a request with the same key is in flight.
pub async fn insert(
    pool: &Pool,
    principal: &Principal,
    events: &[NewEvent],
    idempotency_key: Option<&str>,
) -> Result<(u16, Value), HttpError> {
    let mut client = pool.get().await.map_err(HttpError::unavailable)?;
    let tx = client.transaction().await.map_err(HttpError::database)?;
    let caller = idempotency::caller(principal);
    if let Some(key) = idempotency_key {
        if let Some(first) = idempotency::claim(&tx, &caller, key).await? {
            return Ok(first);
        }
    }
    act_as(&tx, principal).await?;
    let ids: Vec<Uuid> = events.iter().map(|_| Uuid::new_v4()).collect();
    let users: Vec<Uuid> = events.iter().map(|e| e.user_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let times: Vec<Option<chrono::DateTime<chrono::Utc>>> =
        events.iter().map(|e| e.timestamp).collect();
    let values: Vec<&serde_json::Value> = events.iter().map(|e| &e.value).collect();
    let inserted = tx
        .execute(
            "INSERT INTO public.engagement_events (id, user_id, event_type, \"timestamp\", value) \
             SELECT id, user_id, event_type, coalesce(ts, now()), value \
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::jsonb[]) \
               AS t(id, user_id, event_type, ts, value)",
            &[&ids, &users, &types, &times, &values],
        )
        .await;
    if let Err(e) = inserted {
        return Err(refused(e, events));
    }
    let body = json!({ "ids": ids });
    if let Some(key) = idempotency_key {
        tx.batch_execute("RESET ROLE")
            .await
            .map_err(HttpError::database)?;
        idempotency::store(&tx, &caller, key, 201, &body).await?;
    }
    tx.commit().await.map_err(HttpError::database)?;
    Ok((201, body))
}

/// Maps what the database refused to the client's error; an RLS refusal counts in
/// `relay_rls_denials_total{source="api"}`.
fn refused(e: tokio_postgres::Error, events: &[NewEvent]) -> HttpError {
    let Some(db) = e.as_db_error() else {
        return HttpError::database(e);
    };
    match db.code() {
        c if *c == SqlState::FOREIGN_KEY_VIOLATION => {
            // DETAIL: Key (user_id)=(<uuid>) is not present in table "users".
            let user = db
                .detail()
                .and_then(|d| d.split(")=(").nth(1))
                .and_then(|rest| rest.split(')').next())
                .and_then(|u| Uuid::parse_str(u).ok());
            let index = user
                .and_then(|u| events.iter().position(|e| e.user_id == u))
                .unwrap_or(0);
            HttpError::validation(vec![FieldError {
                index,
                field: "user_id".into(),
                error: "unknown user (no such id in auth.users)".into(),
            }])
        }
        c if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
            // A user writing rows of another: a cross-user attempt, alerted on at once.
            metrics::counter!(crate::metrics::RLS_DENIALS, "source" => "api").increment(1);
            HttpError::forbidden(
                "row-level security refused the insert: a user may only insert events with their own user_id",
            )
        }
        // Class 23 (integrity) and 22 (data: e.g. a NUL character jsonb refuses).
        c if c.code().starts_with("23") || c.code().starts_with("22") => {
            HttpError::unprocessable(db.message())
        }
        _ => HttpError::database(e),
    }
}
