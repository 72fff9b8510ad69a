//! Data retention (20241211000000, docs/RETENTION.md): `archive_old_deleted_events` moves exactly
//! the soft-deleted events older than the interval, unchanged, in batches, skipping rows another
//! transaction holds; `delete_user_data` erases one user's rows in every engagement table and
//! counts them; only the service role may call either function or read the archive.

use std::time::Duration;

use crate::common::sql::{
    act_as, assert_rejected, count, event_rows, in_savepoint, insert_event_at, insert_state,
    insert_transition, queue_message, strings,
};
use crate::common::{create_user, TestDb};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use uuid::Uuid;

async fn archive(pg: &Client, older_than: &str, batch_size: i32) -> i64 {
    count(
        pg,
        "SELECT public.archive_old_deleted_events($1::text::interval, $2)",
        &[&older_than, &batch_size],
    )
    .await
}

async fn live_ids(pg: &Client) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = pg
        .query("SELECT id FROM public.engagement_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

#[tokio::test]
async fn archiving_moves_only_old_soft_deleted_events_unchanged_in_several_batches() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    let mut old_deleted = Vec::new();
    for _ in 0..5 {
        old_deleted.push(insert_event_at(&pg, a, 100, true).await);
    }
    for _ in 0..2 {
        old_deleted.push(insert_event_at(&pg, b, 200, true).await);
    }
    let kept = sorted(vec![
        insert_event_at(&pg, a, 100, false).await, // old, not deleted
        insert_event_at(&pg, a, 120, false).await,
        insert_event_at(&pg, a, 10, true).await, // deleted, too young
        insert_event_at(&pg, a, 89, true).await,
        insert_event_at(&pg, b, 0, false).await,
    ]);
    let originals = event_rows(&pg, "engagement_events", &old_deleted).await;
    assert_eq!(originals.len(), 7);

    // Seven rows with a batch size of two: one statement moves at most two, so the function
    // looped over at least four batches, the last one not full.
    assert_eq!(archive(&pg, "90 days", 2).await, 7);

    assert_eq!(
        event_rows(&pg, "engagement_events_archive", &old_deleted).await,
        originals,
        "archived rows equal the originals"
    );
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM public.engagement_events_archive",
            &[]
        )
        .await,
        7
    );
    let stamped = count(
        &pg,
        "SELECT count(*) FROM public.engagement_events_archive \
         WHERE archived_at IS NOT NULL AND archived_at <= now()",
        &[],
    )
    .await;
    assert_eq!(stamped, 7);
    assert_eq!(live_ids(&pg).await, kept, "everything else stays live");

    assert_eq!(archive(&pg, "90 days", 2).await, 0, "nothing left to move");
    // An exact multiple of the batch size ends too (the last, empty batch stops the loop).
    let more = [
        insert_event_at(&pg, b, 95, true).await,
        insert_event_at(&pg, b, 96, true).await,
    ];
    assert_eq!(archive(&pg, "90 days", 2).await, 2);
    assert_eq!(event_rows(&pg, "engagement_events", &more).await.len(), 0);
}

#[tokio::test]
async fn rows_held_by_another_transaction_are_skipped_until_the_next_run() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    let held = insert_event_at(&pg, a, 100, true).await;
    for _ in 0..3 {
        insert_event_at(&pg, a, 100, true).await;
    }
    let other = db.client().await;
    other.batch_execute("BEGIN").await.unwrap();
    other
        .execute(
            "SELECT 1 FROM public.engagement_events WHERE id = $1 FOR UPDATE",
            &[&held],
        )
        .await
        .unwrap();

    // Waiting on the lock would never end while `other` holds it: bound the wait.
    let moved = tokio::time::timeout(Duration::from_secs(30), archive(&pg, "90 days", 2))
        .await
        .expect("the archive job skips locked rows instead of waiting for them");
    assert_eq!(moved, 3);
    assert_eq!(live_ids(&pg).await, [held]);

    other.batch_execute("COMMIT").await.unwrap();
    assert_eq!(archive(&pg, "90 days", 2).await, 1);
    assert!(live_ids(&pg).await.is_empty());
}

#[tokio::test]
async fn bad_arguments_are_rejected() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    for (what, sql) in [
        (
            "a negative interval",
            "SELECT public.archive_old_deleted_events('-1 day')",
        ),
        (
            "a zero batch",
            "SELECT public.archive_old_deleted_events('90 days', 0)",
        ),
        (
            "a NULL interval",
            "SELECT public.archive_old_deleted_events(NULL)",
        ),
        ("a NULL user", "SELECT * FROM public.delete_user_data(NULL)"),
    ] {
        let result = pg.execute(sql, &[]).await;
        assert_rejected(what, result, SqlState::INVALID_PARAMETER_VALUE, None);
    }
}

/// The rows of `user` in every table `delete_user_data` covers, in its result order.
async fn rows_per_table(pg: &Client, user: Uuid) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for table in [
        "engagement_message_queue",
        "engagement_state_transitions",
        "user_engagement_states",
        "engagement_events_archive",
        "engagement_events",
    ] {
        let sql = format!("SELECT count(*) FROM public.{table} WHERE user_id = $1");
        out.push((table.to_string(), count(pg, &sql, &[&user]).await));
    }
    out
}

#[tokio::test]
async fn delete_user_data_erases_one_user_everywhere_and_counts_it() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    for u in [a, b] {
        insert_event_at(&pg, u, 200, true).await;
        insert_event_at(&pg, u, 200, true).await;
        for _ in 0..3 {
            insert_event_at(&pg, u, 1, false).await;
        }
        insert_state(&pg, u).await;
        insert_transition(&pg, u, None, "active").await;
        insert_transition(&pg, u, Some("active"), "goodbye_sent").await;
        queue_message(&pg, u).await;
        queue_message(&pg, u).await;
    }
    assert_eq!(archive(&pg, "90 days", 5000).await, 4);
    let expected: Vec<(String, i64)> = [
        ("engagement_message_queue", 2),
        ("engagement_state_transitions", 2),
        ("user_engagement_states", 1),
        ("engagement_events_archive", 2),
        ("engagement_events", 3),
    ]
    .iter()
    .map(|(t, n)| (t.to_string(), *n))
    .collect();
    assert_eq!(rows_per_table(&pg, a).await, expected);

    let erase = "SELECT table_name, deleted_rows FROM public.delete_user_data($1)";
    let mut result: Vec<(String, i64)> = pg
        .query(erase, &[&a])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    result.sort();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(result, sorted, "one count per table");

    let zero: Vec<(String, i64)> = expected.iter().map(|(t, _)| (t.clone(), 0)).collect();
    assert_eq!(rows_per_table(&pg, a).await, zero, "nothing of a is left");
    assert_eq!(rows_per_table(&pg, b).await, expected, "b is untouched");
    let account = count(&pg, "SELECT count(*) FROM auth.users WHERE id = $1", &[&a]).await;
    assert_eq!(account, 1, "the account itself is not deleted");

    let again: Vec<i64> = pg
        .query(erase, &[&a])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(1))
        .collect();
    assert_eq!(again, [0, 0, 0, 0, 0]);
}

#[tokio::test]
async fn only_the_service_role_may_call_the_functions_or_read_the_archive() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    let calls = [
        "SELECT public.archive_old_deleted_events('90 days')",
        "SELECT * FROM public.delete_user_data($1)",
        "SELECT 1 FROM public.engagement_events_archive",
    ];
    for (role, sub) in [("anon", None), ("authenticated", Some(a))] {
        act_as(&pg, role, sub).await;
        for sql in calls {
            let result = if sql.contains("$1") {
                in_savepoint(&pg, sql, &[&a]).await
            } else {
                in_savepoint(&pg, sql, &[]).await
            };
            assert_rejected(
                &format!("{role}: {sql}"),
                result,
                SqlState::INSUFFICIENT_PRIVILEGE,
                None,
            );
        }
        pg.batch_execute("ROLLBACK").await.unwrap();
    }

    act_as(&pg, "service_role", None).await;
    for sql in calls {
        let result = if sql.contains("$1") {
            pg.execute(sql, &[&a]).await
        } else {
            pg.execute(sql, &[]).await
        };
        result.unwrap_or_else(|e| panic!("service_role: {sql}: {e:?}"));
    }
    pg.batch_execute("ROLLBACK").await.unwrap();

    let published = strings(
        &pg,
        "SELECT tablename::text FROM pg_publication_tables \
         WHERE tablename IN ('engagement_events_archive', 'engagement_message_queue')",
        &[],
    )
    .await;
    assert!(published.is_empty(), "never published: {published:?}");
}
