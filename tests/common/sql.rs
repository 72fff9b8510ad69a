//! SQL-level helpers for the schema, retention and rollback tests: acting as an API role the way
//! PostgREST does, expecting an SQLSTATE, counting rows, and writing engagement rows.

use serde_json::json;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use uuid::Uuid;

/// Opens a transaction acting as `role` with `sub`'s JWT claims, as PostgREST does. End it with
/// `ROLLBACK` (or `COMMIT`).
pub async fn act_as(pg: &Client, role: &str, sub: Option<Uuid>) {
    let claims = json!({"sub": sub, "role": role}).to_string();
    pg.batch_execute("BEGIN").await.unwrap();
    pg.execute(
        "SELECT set_config('request.jwt.claims', $1, true)",
        &[&claims],
    )
    .await
    .unwrap();
    pg.batch_execute(&format!("SET LOCAL ROLE {role}"))
        .await
        .unwrap();
}

/// Runs `sql` inside a savepoint of the open transaction, so that a failure leaves the
/// transaction (and the role it acts as) usable; returns the rows affected.
pub async fn in_savepoint(
    pg: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    pg.batch_execute("SAVEPOINT attempt").await.unwrap();
    let result = pg.execute(sql, params).await;
    let end = if result.is_ok() {
        "RELEASE SAVEPOINT attempt"
    } else {
        "ROLLBACK TO SAVEPOINT attempt"
    };
    pg.batch_execute(end).await.unwrap();
    result
}

/// Asserts that `result` failed with `expected` (and, when given, on constraint `constraint`).
pub fn assert_rejected<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, tokio_postgres::Error>,
    expected: SqlState,
    constraint: Option<&str>,
) {
    match result {
        Ok(v) => panic!("{what}: expected SQLSTATE {}, got {v:?}", expected.code()),
        Err(e) => {
            assert_eq!(e.code(), Some(&expected), "{what}: {e:?}");
            if let Some(name) = constraint {
                let db = e.as_db_error().expect("a server error");
                assert_eq!(db.constraint(), Some(name), "{what}: {e:?}");
            }
        }
    }
}

/// `count(*)`-style query returning one bigint.
pub async fn count(pg: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
    pg.query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// The first column of every row of `sql`, as text.
pub async fn strings(pg: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<String> {
    pg.query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Inserts `user`'s engagement state row (all defaults), or finds the one the activity
/// trigger made at the user's first event; returns its id.
pub async fn insert_state(pg: &Client, user: Uuid) -> Uuid {
    pg.query_one(
        "INSERT INTO public.user_engagement_states (user_id) VALUES ($1) \
         ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id RETURNING id",
        &[&user],
    )
    .await
    .expect("insert engagement state")
    .get(0)
}

/// Inserts a transition of `user` from `from` to `to`; returns its id.
pub async fn insert_transition(pg: &Client, user: Uuid, from: Option<&str>, to: &str) -> Uuid {
    pg.query_one(
        "INSERT INTO public.engagement_state_transitions (user_id, from_state, to_state, trigger) \
         VALUES ($1, $2, $3, 'test') RETURNING id",
        &[&user, &from, &to],
    )
    .await
    .expect("insert transition")
    .get(0)
}

/// Queues a pending welcome message for `user` under a fresh idempotency key; returns its id.
pub async fn queue_message(pg: &Client, user: Uuid) -> Uuid {
    pg.query_one(
        "INSERT INTO public.engagement_message_queue \
             (user_id, message_type, message_key, destination, destination_jid, idempotency_key) \
         VALUES ($1, 'welcome', 'engagement.welcome', 'individual', '123@s.whatsapp.net', $2) \
         RETURNING id",
        &[&user, &Uuid::new_v4().to_string()],
    )
    .await
    .expect("queue message")
    .get(0)
}

/// Inserts an `app_open` event of `user` that happened `days_ago` days ago, soft-deleted or
/// not; returns its id.
pub async fn insert_event_at(pg: &Client, user: Uuid, days_ago: i32, deleted: bool) -> Uuid {
    pg.query_one(
        "INSERT INTO public.engagement_events (user_id, event_type, \"timestamp\", value, is_deleted) \
         VALUES ($1, 'app_open', now() - make_interval(days => $2), \
                 jsonb_build_object('days_ago', $2, 'nonce', gen_random_uuid()), $3) \
         RETURNING id",
        &[&user, &days_ago, &deleted],
    )
    .await
    .expect("insert event")
    .get(0)
}

/// The events `ids` of `table` (`engagement_events` or `engagement_events_archive`), every
/// column of the live table as one JSON text per row, ordered by id: equal lists mean equal rows.
pub async fn event_rows(pg: &Client, table: &str, ids: &[Uuid]) -> Vec<String> {
    let sql = format!(
        "SELECT row_to_json(e)::text FROM ( \
             SELECT id, user_id, \"timestamp\", event_type, value, is_deleted \
             FROM public.{table} WHERE id = ANY($1) ORDER BY id) e"
    );
    strings(pg, &sql, &[&ids]).await
}
