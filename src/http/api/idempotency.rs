//! `Idempotency-Key` (the IETF httpapi draft's header): a POST repeated with the same key by
//! the same caller within 24 hours returns the first result and inserts nothing again.
//!
//! The key is claimed in the same transaction that inserts the events (a concurrent request
//! with the same key waits on the primary key, then sees the stored result), and the result is
//! stored before the commit, so a failed request leaves no key behind and can be retried.

use serde_json::Value;
use tokio_postgres::Transaction;

use crate::auth::{Principal, Role};
use crate::http::HttpError;

/// Longest key accepted, characters.
pub const MAX_KEY: usize = 255;

/// Who a key belongs to: the service role, or a user's `sub`.
pub fn caller(principal: &Principal) -> String {
    match (principal.role, principal.user_id) {
        (Role::Authenticated, Some(user)) => user.to_string(),
        _ => "service_role".into(),
    }
}

/// Claims `key` for `caller` inside `tx`; returns the stored `(status, body)` when the key was
/// used within the last 24 hours (keys older than that are forgotten first).
///
/// Errors: 400 for an empty or over-long key; 503 when the statement fails.
pub async fn claim(
    tx: &Transaction<'_>,
    caller: &str,
    key: &str,
) -> Result<Option<(u16, Value)>, HttpError> {
    if key.is_empty() || key.chars().count() > MAX_KEY {
        return Err(HttpError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_KEY} characters"),
        ));
    }
    tx.execute(
        "DELETE FROM relay.idempotency_keys WHERE created_at < now() - interval '24 hours'",
        &[],
    )
    .await
    .map_err(HttpError::database)?;
    let first = tx
        .query_opt(
            "SELECT status, response FROM relay.idempotency_keys WHERE caller = $1 AND key = $2",
            &[&caller, &key],
        )
        .await
        .map_err(HttpError::database)?;
    Ok(first.map(|row| (row.get::<_, i16>(0) as u16, row.get(1))))
}

/// Stores the result of the request that claimed `key`, in its transaction. A concurrent
/// request with the same key waits on the primary key and, once this one commits, fails the
/// insert; the client's retry then sees the stored result.
pub async fn store(
    tx: &Transaction<'_>,
    caller: &str,
    key: &str,
    status: u16,
    body: &Value,
) -> Result<(), HttpError> {
    tx.execute(
        "INSERT INTO relay.idempotency_keys (caller, key, status, response) VALUES ($1, $2, $3, $4)",
        &[&caller, &key, &(status as i16), body],
    )
    .await
    .map(|_| ())
    .map_err(|e| match e.code() {
        Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => HttpError::conflict(
            "a request with this Idempotency-Key completed meanwhile; retry to get its result",
        ),
        _ => HttpError::database(e),
    })
}
