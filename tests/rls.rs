//! The RLS audit (seed tasks §2.4, §5.2) and the table's constraints, on the real migrations:
//! as `authenticated` with user A's claims, B's rows are invisible and inserting for B fails;
//! `anon` reads and inserts nothing; `service_role` inserts for anyone; concurrent sessions do
//! not leak; a bad `event_type` and a future timestamp are rejected; deleting a user cascades.

use crate::common::sql::act_as;
use crate::common::{create_user, insert_event, TestDb};
use engagement_relay::db::describe;
use serde_json::json;
use tokio_postgres::Client;
use uuid::Uuid;

async fn visible_owners(pg: &Client) -> Vec<Uuid> {
    pg.query("SELECT DISTINCT user_id FROM public.engagement_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn try_insert(pg: &Client, user: Uuid) -> Result<u64, tokio_postgres::Error> {
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, event_type) VALUES ($1, 'app_open')",
        &[&user],
    )
    .await
}

#[tokio::test]
async fn a_user_sees_and_inserts_only_their_own_events() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    insert_event(&pg, a, "app_open", json!({})).await;
    insert_event(&pg, b, "app_open", json!({})).await;

    act_as(&pg, "authenticated", Some(a)).await;
    assert_eq!(visible_owners(&pg).await, [a]);
    try_insert(&pg, a).await.expect("own insert");
    let err = describe(&try_insert(&pg, b).await.unwrap_err());
    assert!(err.contains("row-level security"), "{err}");
    pg.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn anon_reads_nothing_and_inserts_nothing() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    insert_event(&pg, a, "app_open", json!({})).await;
    act_as(&pg, "anon", None).await;
    let err = pg
        .query("SELECT 1 FROM public.engagement_events", &[])
        .await
        .unwrap_err();
    assert!(describe(&err).contains("permission denied"), "{err:?}");
    pg.batch_execute("ROLLBACK").await.unwrap();
    act_as(&pg, "anon", None).await;
    assert!(try_insert(&pg, a).await.is_err());
    pg.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn the_service_role_inserts_for_anyone_and_sees_all() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    act_as(&pg, "service_role", None).await;
    try_insert(&pg, a).await.unwrap();
    try_insert(&pg, b).await.unwrap();
    let mut owners = visible_owners(&pg).await;
    owners.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(owners, expected);
    pg.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn concurrent_user_sessions_do_not_leak() {
    let db = TestDb::new().await;
    let setup = db.client().await;
    let mut users = Vec::new();
    for _ in 0..8 {
        let u = create_user(&setup).await;
        for _ in 0..5 {
            insert_event(&setup, u, "app_open", json!({})).await;
        }
        users.push(u);
    }
    let mut tasks = Vec::new();
    for u in users {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let pg = crate::common::connect(&url).await;
            for _ in 0..10 {
                act_as(&pg, "authenticated", Some(u)).await;
                assert_eq!(visible_owners(&pg).await, [u]);
                pg.batch_execute("ROLLBACK").await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn constraints_reject_bad_event_types_and_future_timestamps() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    for bad in [
        "AppOpen",
        "",
        "app-open",
        "_app",
        "app__open",
        &"a".repeat(65),
    ] {
        let err = pg
            .execute(
                "INSERT INTO public.engagement_events (user_id, event_type) VALUES ($1, $2)",
                &[&a, &bad],
            )
            .await
            .unwrap_err();
        let constraint = err.as_db_error().and_then(|e| e.constraint());
        assert_eq!(
            constraint,
            Some("engagement_events_event_type_format"),
            "{bad}: {err:?}"
        );
    }
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, event_type) VALUES ($1, $2)",
        &[&a, &"a".repeat(64)],
    )
    .await
    .expect("64 characters is allowed");
    let err = pg
        .execute(
            "INSERT INTO public.engagement_events (user_id, event_type, \"timestamp\") \
             VALUES ($1, 'app_open', now() + interval '5 minutes')",
            &[&a],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
        "{err}"
    );
    pg.execute(
        "INSERT INTO public.engagement_events (user_id, event_type, \"timestamp\") \
         VALUES ($1, 'app_open', now() + interval '30 seconds')",
        &[&a],
    )
    .await
    .expect("within the 60 s tolerance");
}

#[tokio::test]
async fn deleting_a_user_cascades_to_their_events() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    insert_event(&pg, a, "app_open", json!({})).await;
    pg.execute("DELETE FROM auth.users WHERE id = $1", &[&a])
        .await
        .unwrap();
    let left: i64 = pg
        .query_one(
            "SELECT count(*) FROM public.engagement_events WHERE user_id = $1",
            &[&a],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn the_seed_policies_and_indexes_exist_by_name() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let policies: Vec<String> = pg
        .query("SELECT policyname::text FROM pg_policies WHERE tablename = 'engagement_events' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        policies,
        [
            "Analysts can view all events",
            "Service role can insert any events",
            "Users can insert own events",
            "Users can view own events"
        ]
    );
    for index in [
        "idx_engagement_events_user_timestamp",
        "idx_engagement_events_value",
        "idx_engagement_events_type",
    ] {
        let found = pg
            .query_opt("SELECT 1 FROM pg_indexes WHERE indexname = $1", &[&index])
            .await
            .unwrap();
        assert!(found.is_some(), "{index}");
    }
}
