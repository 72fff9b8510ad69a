//! Running statements as the caller, as PostgREST does (its "Authorization" page): `SET LOCAL
//! ROLE service_role` for a service-role token; `SET LOCAL ROLE authenticated` plus
//! `request.jwt.claims` for a user's token, so the tables' RLS policies decide what a user may
//! read or write.

use deadpool_postgres::Pool;
use serde_json::json;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::auth::{Principal, Role};
use crate::http::HttpError;

/// `SET LOCAL ROLE` and, for a user, the JWT claims RLS reads through `auth.uid()`.
pub(crate) async fn act_as(
    tx: &tokio_postgres::Transaction<'_>,
    principal: &Principal,
) -> Result<(), HttpError> {
    match principal.role {
        Role::ServiceRole => tx
            .batch_execute("SET LOCAL ROLE service_role")
            .await
            .map_err(HttpError::database),
        Role::Authenticated => {
            let claims = json!({
                "sub": principal.user_id,
                "role": "authenticated",
                "exp": principal.expires_at,
            })
            .to_string();
            tx.batch_execute("SET LOCAL ROLE authenticated")
                .await
                .map_err(HttpError::database)?;
            tx.execute(
                "SELECT set_config('request.jwt.claims', $1, true)",
                &[&claims],
            )
            .await
            .map(|_| ())
            .map_err(HttpError::database)
        }
    }
}

/// Runs one statement as `principal` in a transaction of its own (`SET LOCAL` lasts until
/// its end) and returns its rows.
///
/// Errors: 503 when no connection is available; `refused(e)` when the statement fails; 500
/// for any other database error.
pub(crate) async fn query_as(
    pool: &Pool,
    principal: &Principal,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    refused: impl FnOnce(tokio_postgres::Error) -> HttpError,
) -> Result<Vec<Row>, HttpError> {
    let mut client = pool.get().await.map_err(HttpError::unavailable)?;
    let tx = client.transaction().await.map_err(HttpError::database)?;
    act_as(&tx, principal).await?;
    let rows = tx.query(sql, params).await.map_err(refused)?;
    tx.commit().await.map_err(HttpError::database)?;
    Ok(rows)
}
