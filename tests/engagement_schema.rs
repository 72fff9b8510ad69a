//! Story 1.1's Task 7 ("Test migration"), never done in the story, on the real migrations: every
//! table and column with its type and default, every index with its predicate, RLS (a user reads
//! their own state and transitions only, nothing of the queue, and writes nothing; the service
//! role manages everything), every CHECK and UNIQUE, the shared updated_at trigger, and the
//! publication. Also the monitoring views of 20241212000000 (service role only).

use crate::common::sql::{
    act_as, assert_rejected, count, in_savepoint, insert_state, insert_transition, queue_message,
    strings,
};
use crate::common::{create_user, TestDb};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use uuid::Uuid;

const TZ: &str = "timestamp with time zone";

/// Each column as `name type[ NOT NULL][ DEFAULT expr]`, in table order.
async fn columns(pg: &Client, table: &str) -> Vec<String> {
    strings(
        pg,
        "SELECT column_name || ' ' || data_type \
                || CASE WHEN is_nullable = 'NO' THEN ' NOT NULL' ELSE '' END \
                || coalesce(' DEFAULT ' || column_default, '') \
         FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
        &[&table],
    )
    .await
}

#[tokio::test]
async fn the_three_tables_have_the_story_columns_with_types_and_defaults() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    assert_eq!(
        columns(&pg, "user_engagement_states").await,
        [
            "id uuid NOT NULL DEFAULT gen_random_uuid()".to_string(),
            "user_id uuid NOT NULL".into(),
            "state text NOT NULL DEFAULT 'active'::text".into(),
            format!("last_activity_at {TZ} NOT NULL DEFAULT now()"),
            format!("goodbye_sent_at {TZ}"),
            format!("goodbye_expires_at {TZ}"),
            format!("remind_at {TZ}"),
            format!("created_at {TZ} NOT NULL DEFAULT now()"),
            format!("updated_at {TZ} NOT NULL DEFAULT now()"),
        ]
    );
    assert_eq!(
        columns(&pg, "engagement_state_transitions").await,
        [
            "id uuid NOT NULL DEFAULT gen_random_uuid()".to_string(),
            "user_id uuid NOT NULL".into(),
            "from_state text".into(),
            "to_state text NOT NULL".into(),
            "trigger text NOT NULL".into(),
            "metadata jsonb NOT NULL DEFAULT '{}'::jsonb".into(),
            format!("created_at {TZ} NOT NULL DEFAULT now()"),
        ]
    );
    assert_eq!(
        columns(&pg, "engagement_message_queue").await,
        [
            "id uuid NOT NULL DEFAULT gen_random_uuid()".to_string(),
            "user_id uuid NOT NULL".into(),
            "message_type text NOT NULL".into(),
            "message_key text NOT NULL".into(),
            "message_params jsonb NOT NULL DEFAULT '{}'::jsonb".into(),
            "destination text NOT NULL".into(),
            "destination_jid text NOT NULL".into(),
            format!("scheduled_for {TZ} NOT NULL DEFAULT now()"),
            format!("sent_at {TZ}"),
            "status text NOT NULL DEFAULT 'pending'::text".into(),
            "retry_count integer NOT NULL DEFAULT 0".into(),
            "error_message text".into(),
            "idempotency_key text NOT NULL".into(),
            format!("created_at {TZ} NOT NULL DEFAULT now()"),
        ]
    );
}

#[tokio::test]
async fn user_profiles_gains_the_five_columns() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let all = columns(&pg, "user_profiles").await;
    assert_eq!(
        all[1..],
        [
            "preferred_destination text NOT NULL DEFAULT 'individual'::text".to_string(),
            "reengagement_opt_out boolean NOT NULL DEFAULT false".into(),
            "onboarding_tier integer NOT NULL DEFAULT 0".into(),
            "onboarding_tier_progress jsonb NOT NULL DEFAULT '{}'::jsonb".into(),
            format!("magic_moment_at {TZ}"),
        ],
        "{all:?}"
    );
    // An existing profile row gets the defaults.
    let a = create_user(&pg).await;
    pg.execute("INSERT INTO public.user_profiles (id) VALUES ($1)", &[&a])
        .await
        .unwrap();
    let row = pg
        .query_one(
            "SELECT preferred_destination, reengagement_opt_out, onboarding_tier, \
                    onboarding_tier_progress::text, magic_moment_at IS NULL \
             FROM public.user_profiles WHERE id = $1",
            &[&a],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "individual");
    assert!(!row.get::<_, bool>(1));
    assert_eq!(row.get::<_, i32>(2), 0);
    assert_eq!(row.get::<_, String>(3), "{}");
    assert!(row.get::<_, bool>(4));
}

#[tokio::test]
async fn every_scheduler_index_exists_with_its_predicate() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let expected = [
        ("idx_user_engagement_states_state", "user_engagement_states USING btree (state)"),
        ("idx_user_engagement_states_last_activity_at", "user_engagement_states USING btree (last_activity_at)"),
        ("idx_user_engagement_states_goodbye_expires_at", "user_engagement_states USING btree (goodbye_expires_at) WHERE (goodbye_expires_at IS NOT NULL)"),
        ("idx_user_engagement_states_remind_at", "user_engagement_states USING btree (remind_at) WHERE (remind_at IS NOT NULL)"),
        ("idx_engagement_state_transitions_user_id", "engagement_state_transitions USING btree (user_id)"),
        ("idx_engagement_state_transitions_created_at", "engagement_state_transitions USING btree (created_at)"),
        ("idx_engagement_message_queue_status", "engagement_message_queue USING btree (status) WHERE (status = 'pending'::text)"),
        ("idx_engagement_message_queue_scheduled_for", "engagement_message_queue USING btree (scheduled_for) WHERE (status = 'pending'::text)"),
        ("user_engagement_states_user_id_key", "user_engagement_states USING btree (user_id)"),
        ("engagement_message_queue_idempotency_key_key", "engagement_message_queue USING btree (idempotency_key)"),
    ];
    for (name, def) in expected {
        let found = strings(
            &pg,
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexname = $1",
            &[&name],
        )
        .await;
        let unique = if name.ends_with("_key") {
            "UNIQUE "
        } else {
            ""
        };
        assert_eq!(
            found,
            [format!("CREATE {unique}INDEX {name} ON public.{def}")],
            "{name}"
        );
    }
}

#[tokio::test]
async fn rls_is_on_and_the_policies_carry_the_story_names() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let rls = strings(
        &pg,
        "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace \
           AND relname IN ('user_engagement_states', 'engagement_state_transitions', \
                           'engagement_message_queue') AND relrowsecurity ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(rls.len(), 3, "{rls:?}");
    let policies = strings(
        &pg,
        "SELECT tablename || ' | ' || policyname || ' | ' || cmd || ' | ' || roles::text \
         FROM pg_policies WHERE schemaname = 'public' AND tablename IN \
           ('user_engagement_states', 'engagement_state_transitions', 'engagement_message_queue') \
         ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(
        policies,
        [
            "engagement_message_queue | Service role only | ALL | {service_role}",
            "engagement_state_transitions | Service role can manage all transitions | ALL | {service_role}",
            "engagement_state_transitions | Users can SELECT own transitions | SELECT | {authenticated}",
            "user_engagement_states | Service role can manage all engagement states | ALL | {service_role}",
            "user_engagement_states | Users can SELECT own engagement state | SELECT | {authenticated}",
        ]
    );
}

/// Two users, each with a state, two transitions and a queued message.
async fn two_users_with_rows(pg: &Client) -> (Uuid, Uuid) {
    let (a, b) = (create_user(pg).await, create_user(pg).await);
    for u in [a, b] {
        insert_state(pg, u).await;
        insert_transition(pg, u, None, "active").await;
        insert_transition(pg, u, Some("active"), "dormant").await;
        queue_message(pg, u).await;
    }
    (a, b)
}

async fn owners(pg: &Client, table: &str) -> Vec<Uuid> {
    pg.query(
        &format!("SELECT user_id FROM public.{table} ORDER BY user_id"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn a_user_reads_only_their_own_state_and_transitions() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let (a, b) = two_users_with_rows(&pg).await;
    for (me, other) in [(a, b), (b, a)] {
        act_as(&pg, "authenticated", Some(me)).await;
        assert_eq!(owners(&pg, "user_engagement_states").await, [me]);
        assert_eq!(owners(&pg, "engagement_state_transitions").await, [me, me]);
        let theirs = count(
            &pg,
            "SELECT count(*) FROM public.user_engagement_states WHERE user_id = $1",
            &[&other],
        )
        .await;
        assert_eq!(theirs, 0);
        pg.batch_execute("ROLLBACK").await.unwrap();
    }
}

#[tokio::test]
async fn a_user_sees_nothing_of_the_queue_and_writes_nothing() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let (a, _) = two_users_with_rows(&pg).await;
    let denied = [
        "SELECT 1 FROM public.engagement_message_queue",
        "INSERT INTO public.engagement_message_queue (user_id, message_type, message_key, \
           destination, destination_jid, idempotency_key) \
         VALUES ($1, 'welcome', 'k', 'individual', 'jid', 'mine')",
        "UPDATE public.engagement_message_queue SET status = 'cancelled' WHERE user_id = $1",
        "INSERT INTO public.user_engagement_states (user_id) VALUES ($1)",
        "UPDATE public.user_engagement_states SET state = 'dormant' WHERE user_id = $1",
        "DELETE FROM public.user_engagement_states WHERE user_id = $1",
        "INSERT INTO public.engagement_state_transitions (user_id, to_state, trigger) \
         VALUES ($1, 'active', 'me')",
        "UPDATE public.engagement_state_transitions SET trigger = 'x' WHERE user_id = $1",
        "DELETE FROM public.engagement_state_transitions WHERE user_id = $1",
    ];
    act_as(&pg, "authenticated", Some(a)).await;
    for sql in denied {
        // Parameterless statements still get $1 bound only when they use it.
        let result = if sql.contains("$1") {
            in_savepoint(&pg, sql, &[&a]).await
        } else {
            in_savepoint(&pg, sql, &[]).await
        };
        assert_rejected(sql, result, SqlState::INSUFFICIENT_PRIVILEGE, None);
    }
    pg.batch_execute("ROLLBACK").await.unwrap();

    act_as(&pg, "anon", None).await;
    for table in [
        "user_engagement_states",
        "engagement_state_transitions",
        "engagement_message_queue",
    ] {
        let sql = format!("SELECT 1 FROM public.{table}");
        let result = in_savepoint(&pg, &sql, &[]).await;
        assert_rejected(&sql, result, SqlState::INSUFFICIENT_PRIVILEGE, None);
    }
    pg.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn the_service_role_reads_inserts_updates_and_deletes_every_row() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    act_as(&pg, "service_role", None).await;
    for u in [a, b] {
        insert_state(&pg, u).await;
        insert_transition(&pg, u, None, "active").await;
        queue_message(&pg, u).await;
    }
    let mut both = vec![a, b];
    both.sort();
    for table in [
        "user_engagement_states",
        "engagement_state_transitions",
        "engagement_message_queue",
    ] {
        assert_eq!(owners(&pg, table).await, both, "{table}");
    }
    for (sql, rows) in [
        (
            "UPDATE public.user_engagement_states SET state = 'dormant'",
            2,
        ),
        (
            "UPDATE public.engagement_state_transitions SET trigger = 'backfill'",
            2,
        ),
        (
            "UPDATE public.engagement_message_queue SET status = 'sent', sent_at = now()",
            2,
        ),
        ("DELETE FROM public.engagement_message_queue", 2),
        ("DELETE FROM public.engagement_state_transitions", 2),
        ("DELETE FROM public.user_engagement_states", 2),
    ] {
        assert_eq!(pg.execute(sql, &[]).await.unwrap(), rows, "{sql}");
    }
    pg.batch_execute("COMMIT").await.unwrap();
}

/// An INSERT of a valid queued message for `$1` except that `column` gets `value` (SQL).
fn queue(column: &str, value: &str) -> String {
    let mut values = [
        ("message_type", "'welcome'"),
        ("message_key", "'k'"),
        ("destination", "'individual'"),
        ("destination_jid", "'jid'"),
        ("idempotency_key", "gen_random_uuid()::text"),
        ("status", "'pending'"),
        ("retry_count", "0"),
    ];
    for v in values.iter_mut().filter(|v| v.0 == column) {
        v.1 = value;
    }
    let columns: Vec<&str> = values.iter().map(|v| v.0).collect();
    let exprs: Vec<&str> = values.iter().map(|v| v.1).collect();
    format!(
        "INSERT INTO public.engagement_message_queue (user_id, {}) SELECT $1, {}",
        columns.join(", "),
        exprs.join(", ")
    )
}

#[tokio::test]
async fn every_check_rejects_an_invalid_value_and_accepts_the_listed_ones() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    insert_state(&pg, a).await;
    pg.execute("INSERT INTO public.user_profiles (id) VALUES ($1)", &[&a])
        .await
        .unwrap();
    let cases = [
        ("UPDATE public.user_engagement_states SET state = 'asleep' WHERE user_id = $1".to_string(),
         "user_engagement_states_state_check"),
        ("INSERT INTO public.engagement_state_transitions (user_id, from_state, to_state, trigger) \
          VALUES ($1, 'asleep', 'active', 't')".into(),
         "engagement_state_transitions_from_state_check"),
        ("INSERT INTO public.engagement_state_transitions (user_id, to_state, trigger) \
          VALUES ($1, 'asleep', 't')".into(),
         "engagement_state_transitions_to_state_check"),
        (queue("message_type", "'spam'"), "engagement_message_queue_message_type_check"),
        (queue("destination", "'channel'"), "engagement_message_queue_destination_check"),
        (queue("status", "'queued'"), "engagement_message_queue_status_check"),
        (queue("retry_count", "-1"), "engagement_message_queue_retry_count_check"),
        ("UPDATE public.user_profiles SET preferred_destination = 'channel' WHERE id = $1".into(),
         "user_profiles_preferred_destination_check"),
        ("UPDATE public.user_profiles SET onboarding_tier = 4 WHERE id = $1".into(),
         "user_profiles_onboarding_tier_check"),
    ];
    for (sql, constraint) in &cases {
        let result = pg.execute(sql.as_str(), &[&a]).await;
        assert_rejected(sql, result, SqlState::CHECK_VIOLATION, Some(constraint));
    }

    let states = [
        "active",
        "goodbye_sent",
        "help_flow",
        "remind_later",
        "dormant",
    ];
    for s in states {
        pg.execute(
            "UPDATE public.user_engagement_states SET state = $2 WHERE user_id = $1",
            &[&a, &s],
        )
        .await
        .unwrap();
        insert_transition(&pg, a, Some(s), s).await;
    }
    insert_transition(&pg, a, None, "active").await;
    for t in [
        "welcome",
        "tier_unlock",
        "goodbye",
        "weekly_review",
        "reminder",
        "help_restart",
    ] {
        pg.execute(&queue("message_type", &format!("'{t}'")), &[&a])
            .await
            .unwrap();
    }
    for v in ["'group'", "'individual'"] {
        pg.execute(&queue("destination", v), &[&a]).await.unwrap();
    }
    for v in ["'pending'", "'sent'", "'failed'", "'cancelled'"] {
        pg.execute(&queue("status", v), &[&a]).await.unwrap();
    }
    for tier in [0, 3] {
        pg.execute(
            "UPDATE public.user_profiles SET onboarding_tier = $2, preferred_destination = 'group' \
             WHERE id = $1",
            &[&a, &tier],
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn both_unique_constraints_reject_duplicates() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    insert_state(&pg, a).await;
    let second = pg
        .execute(
            "INSERT INTO public.user_engagement_states (user_id) VALUES ($1)",
            &[&a],
        )
        .await;
    assert_rejected(
        "a second state row",
        second,
        SqlState::UNIQUE_VIOLATION,
        Some("user_engagement_states_user_id_key"),
    );
    let insert =
        "INSERT INTO public.engagement_message_queue (user_id, message_type, message_key, \
                    destination, destination_jid, idempotency_key) \
                  VALUES ($1, 'goodbye', 'k', 'group', 'jid', 'goodbye:2024-12-10')";
    pg.execute(insert, &[&a]).await.unwrap();
    assert_rejected(
        "the same idempotency key",
        pg.execute(insert, &[&a]).await,
        SqlState::UNIQUE_VIOLATION,
        Some("engagement_message_queue_idempotency_key_key"),
    );
}

#[tokio::test]
async fn updated_at_advances_on_update_through_the_shared_trigger() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    // Every public table with an updated_at column uses public.set_updated_at().
    let tables = strings(
        &pg,
        "SELECT table_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND column_name = 'updated_at' ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(tables, ["user_engagement_states"]);
    for table in &tables {
        let triggers = strings(
            &pg,
            "SELECT t.tgname::text FROM pg_trigger t \
             WHERE t.tgrelid = ('public.' || $1)::regclass AND NOT t.tgisinternal \
               AND t.tgfoid = 'public.set_updated_at()'::regprocedure",
            &[table],
        )
        .await;
        assert_eq!(triggers.len(), 1, "{table}: {triggers:?}");
    }

    let a = create_user(&pg).await;
    insert_state(&pg, a).await;
    let times =
        "SELECT created_at, updated_at FROM public.user_engagement_states WHERE user_id = $1";
    let before = pg.query_one(times, &[&a]).await.unwrap();
    let (created, first): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        (before.get(0), before.get(1));
    assert_eq!(created, first);
    // A client-supplied updated_at is overridden too.
    pg.execute(
        "UPDATE public.user_engagement_states \
         SET state = 'dormant', updated_at = '2000-01-01' WHERE user_id = $1",
        &[&a],
    )
    .await
    .unwrap();
    let after = pg.query_one(times, &[&a]).await.unwrap();
    let (created_after, second): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        (after.get(0), after.get(1));
    assert_eq!(created_after, created, "created_at does not move");
    assert!(second > first, "updated_at {second} after {first}");
}

#[tokio::test]
async fn the_publication_streams_exactly_events_states_and_transitions() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let tables = strings(
        &pg,
        "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
         WHERE pubname = 'engagement_events_pub' ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(
        tables,
        [
            "public.engagement_events",
            "public.engagement_state_transitions",
            "public.user_engagement_states"
        ]
    );
    let row = pg
        .query_one(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication \
             WHERE pubname = 'engagement_events_pub'",
            &[],
        )
        .await
        .unwrap();
    let flags: (bool, bool, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
    // Deletes since 20241213000000 (engagement_events has REPLICA IDENTITY FULL).
    assert_eq!(flags, (true, true, true, false), "insert, update, delete");
    let identity: String = pg
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = 'public.engagement_events'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(identity, "f");
}

#[tokio::test]
async fn deleting_a_user_deletes_their_engagement_rows() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let (a, b) = two_users_with_rows(&pg).await;
    pg.execute("DELETE FROM auth.users WHERE id = $1", &[&a])
        .await
        .unwrap();
    for table in [
        "user_engagement_states",
        "engagement_state_transitions",
        "engagement_message_queue",
    ] {
        let mut left = owners(&pg, table).await;
        left.dedup();
        assert_eq!(left, [b], "{table}");
    }
}

#[tokio::test]
async fn the_monitoring_views_are_for_the_service_role_only() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    act_as(&pg, "service_role", None).await;
    let tables = strings(
        &pg,
        "SELECT schemaname || '.' || tablename FROM public.engagement_events_performance",
        &[],
    )
    .await;
    assert_eq!(tables, ["public.engagement_events"]);
    let indexes = strings(
        &pg,
        "SELECT indexrelname::text FROM public.engagement_events_index_usage ORDER BY 1",
        &[],
    )
    .await;
    for name in [
        "idx_engagement_events_type",
        "idx_engagement_events_user_timestamp",
        "idx_engagement_events_value",
    ] {
        assert!(indexes.iter().any(|i| i == name), "{name} in {indexes:?}");
    }
    pg.batch_execute("ROLLBACK").await.unwrap();

    for (role, sub) in [("anon", None), ("authenticated", Some(Uuid::new_v4()))] {
        act_as(&pg, role, sub).await;
        for view in [
            "engagement_events_performance",
            "engagement_events_index_usage",
        ] {
            let sql = format!("SELECT 1 FROM public.{view}");
            let result = in_savepoint(&pg, &sql, &[]).await;
            assert_rejected(&sql, result, SqlState::INSUFFICIENT_PRIVILEGE, None);
        }
        pg.batch_execute("ROLLBACK").await.unwrap();
    }
}
