//! The seed script (`sql/seed/seed_engagement_events.sql`, tasks §5.1 and issue 15): events of
//! the four types spread over 28 days with varied payloads, and engagement states, transitions
//! and queued messages that agree with each user's events and with each other; running it
//! twice changes nothing.

use std::collections::BTreeSet;

use crate::common::sql::{count, strings};
use crate::common::TestDb;
use chrono::{DateTime, Utc};
use engagement_relay::db::migrate::seed;
use tokio_postgres::Client;
use uuid::Uuid;

const STATES: [&str; 5] = [
    "active",
    "goodbye_sent",
    "help_flow",
    "remind_later",
    "dormant",
];

/// Row counts of every table the seed writes.
async fn counts(pg: &Client) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    for table in [
        "auth.users",
        "public.user_profiles",
        "public.engagement_events",
        "public.user_engagement_states",
        "public.engagement_state_transitions",
        "public.engagement_message_queue",
    ] {
        out.push((
            table,
            count(pg, &format!("SELECT count(*) FROM {table}"), &[]).await,
        ));
    }
    out
}

async fn seeded() -> (TestDb, Client) {
    let db = TestDb::new().await;
    let mut pg = db.client().await;
    seed(&mut pg).await.expect("seed");
    (db, pg)
}

#[tokio::test]
async fn the_seed_is_idempotent() {
    let (_db, mut pg) = seeded().await;
    let first = counts(&pg).await;
    assert!(first.iter().all(|(_, n)| *n > 0), "{first:?}");
    seed(&mut pg).await.expect("second seed");
    assert_eq!(counts(&pg).await, first, "a second run inserts nothing");
}

#[tokio::test]
async fn events_have_the_four_types_28_days_and_varied_payloads() {
    let (_db, pg) = seeded().await;
    let types = strings(
        &pg,
        "SELECT DISTINCT event_type FROM public.engagement_events ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(
        types,
        ["app_open", "coach_message", "goal_complete", "steps_import"]
    );
    assert!(
        count(
            &pg,
            "SELECT count(DISTINCT user_id) FROM public.engagement_events",
            &[]
        )
        .await
            >= 5
    );
    // Date spread: 28 UTC days (27 before today's first events at 06:00 UTC), nothing in the
    // future, nothing older than the window.
    let days = count(
        &pg,
        "SELECT count(DISTINCT date_trunc('day', \"timestamp\" AT TIME ZONE 'UTC')) \
         FROM public.engagement_events",
        &[],
    )
    .await;
    assert!((27..=28).contains(&days), "{days} days");
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM public.engagement_events \
             WHERE \"timestamp\" > now() OR \"timestamp\" < now() - interval '29 days'",
            &[]
        )
        .await,
        0
    );
    // Every user has events on many days, every type on several days.
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM (SELECT user_id, event_type FROM public.engagement_events \
             GROUP BY 1, 2 HAVING count(DISTINCT \"timestamp\"::date) < 5) x",
            &[]
        )
        .await,
        0
    );
    // Payload variety: the documented keys per type, and many distinct values.
    for (kind, keys) in [
        ("app_open", "app_version,platform,screen"),
        ("goal_complete", "achieved,goal_id,goal_type,target,unit"),
        ("steps_import", "date,source,steps"),
        ("coach_message", "channel,direction,message_id,sentiment"),
    ] {
        let shapes = strings(
            &pg,
            "SELECT DISTINCT (SELECT string_agg(k, ',' ORDER BY k) FROM jsonb_object_keys(value) k) \
             FROM public.engagement_events WHERE event_type = $1",
            &[&kind],
        )
        .await;
        assert_eq!(shapes, [keys], "{kind}");
    }
    for (field, kind, at_least) in [
        ("screen", "app_open", 6),
        ("app_version", "app_open", 3),
        ("platform", "app_open", 2),
        ("goal_type", "goal_complete", 4),
        ("source", "steps_import", 4),
        ("direction", "coach_message", 2),
        ("channel", "coach_message", 3),
        ("sentiment", "coach_message", 3),
    ] {
        let n = count(
            &pg,
            "SELECT count(DISTINCT value ->> $1) FROM public.engagement_events WHERE event_type = $2",
            &[&field, &kind],
        )
        .await;
        assert!(n >= at_least, "{kind}.{field}: {n} distinct values");
    }
    assert!(
        count(
            &pg,
            "SELECT count(DISTINCT value ->> 'steps') FROM public.engagement_events",
            &[]
        )
        .await
            > 100
    );
    let deleted = count(
        &pg,
        "SELECT count(*) FROM public.engagement_events WHERE is_deleted",
        &[],
    )
    .await;
    assert!(deleted > 0, "some rows are soft-deleted");
    // Goals are achieved in the goal's unit.
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM public.engagement_events WHERE event_type = 'goal_complete' \
             AND (value ->> 'achieved')::numeric < (value ->> 'target')::numeric",
            &[]
        )
        .await,
        0
    );
}

#[tokio::test]
async fn states_and_transitions_agree_with_the_events_and_each_other() {
    let (_db, pg) = seeded().await;
    // Every user with events has a state; its last_activity_at is the newest event.
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM (SELECT user_id, max(\"timestamp\") AS newest \
             FROM public.engagement_events GROUP BY user_id) e \
             LEFT JOIN public.user_engagement_states s USING (user_id) \
             WHERE s.user_id IS NULL OR s.last_activity_at <> e.newest",
            &[]
        )
        .await,
        0
    );
    let present: BTreeSet<String> = strings(
        &pg,
        "SELECT DISTINCT state FROM public.user_engagement_states",
        &[],
    )
    .await
    .into_iter()
    .collect();
    assert_eq!(
        present,
        STATES.iter().map(|s| s.to_string()).collect(),
        "the seed shows every state"
    );

    let rows = pg
        .query(
            "SELECT s.user_id, s.state, s.last_activity_at, s.goodbye_sent_at, \
                    s.goodbye_expires_at, s.remind_at, \
                    (SELECT min(\"timestamp\") FROM public.engagement_events e \
                     WHERE e.user_id = s.user_id) \
             FROM public.user_engagement_states s ORDER BY s.user_id",
            &[],
        )
        .await
        .unwrap();
    assert!(rows.len() >= 5);
    for row in rows {
        let user: Uuid = row.get(0);
        let state: String = row.get(1);
        let last_activity: DateTime<Utc> = row.get(2);
        let goodbye_sent: Option<DateTime<Utc>> = row.get(3);
        let goodbye_expires: Option<DateTime<Utc>> = row.get(4);
        let remind_at: Option<DateTime<Utc>> = row.get(5);
        let first_event: DateTime<Utc> = row.get(6);
        let chain = pg
            .query(
                "SELECT from_state, to_state, trigger, created_at \
                 FROM public.engagement_state_transitions WHERE user_id = $1 \
                 ORDER BY created_at, id",
                &[&user],
            )
            .await
            .unwrap();
        assert!(!chain.is_empty(), "{user}: no transitions");
        let mut previous: Option<String> = None;
        let mut previous_at: Option<DateTime<Utc>> = None;
        for t in &chain {
            let (from, to, trigger, at): (Option<String>, String, String, DateTime<Utc>) =
                (t.get(0), t.get(1), t.get(2), t.get(3));
            assert_eq!(
                from, previous,
                "{user}: {trigger} starts where the last one ended"
            );
            assert_ne!(
                from.as_deref(),
                Some(to.as_str()),
                "{user}: {trigger} changes the state"
            );
            assert!(
                previous_at.is_none_or(|p| p < at),
                "{user}: timestamps strictly ordered"
            );
            assert!(at <= Utc::now(), "{user}: {trigger} in the future");
            if trigger == "inactivity_timeout" {
                // A goodbye follows 48 h without any event.
                let recent = count(
                    &pg,
                    "SELECT count(*) FROM public.engagement_events WHERE user_id = $1 \
                     AND \"timestamp\" > $2::timestamptz - interval '48 hours' \
                     AND \"timestamp\" <= $2",
                    &[&user, &at],
                )
                .await;
                assert_eq!(recent, 0, "{user}: goodbye after recent activity");
            }
            previous = Some(to);
            previous_at = Some(at);
        }
        let first_at: DateTime<Utc> = chain[0].get(3);
        assert!(
            first_at <= first_event,
            "{user}: signup before the first event"
        );
        assert_eq!(
            previous.as_deref(),
            Some(state.as_str()),
            "{user}: chain ends in the state"
        );
        let last_at = previous_at.unwrap();
        // The state's own timestamps fit the state.
        assert_eq!(
            goodbye_sent.is_some(),
            state == "goodbye_sent",
            "{user} {state}: goodbye_sent_at"
        );
        assert_eq!(goodbye_expires.is_some(), state == "goodbye_sent");
        if let (Some(sent), Some(expires)) = (goodbye_sent, goodbye_expires) {
            assert_eq!(sent, last_at, "{user}: goodbye_sent_at is the transition");
            assert!(sent > last_activity && expires > sent && expires > Utc::now());
        }
        assert_eq!(
            remind_at.is_some(),
            state == "remind_later",
            "{user}: remind_at"
        );
        if let Some(at) = remind_at {
            assert!(at > last_at && at > Utc::now(), "{user}: reminder ahead");
        }
        if matches!(state.as_str(), "goodbye_sent" | "dormant" | "remind_later") {
            assert!(
                last_activity < Utc::now() - chrono::Duration::hours(48),
                "{user}: {state} but active"
            );
        }
    }
}

#[tokio::test]
async fn queued_messages_satisfy_the_checks_and_fit_their_users() {
    let (_db, pg) = seeded().await;
    let total = count(
        &pg,
        "SELECT count(*) FROM public.engagement_message_queue",
        &[],
    )
    .await;
    assert!(total >= 10, "{total} queued messages");
    for (rule, sql) in [
        (
            "message_type in the story's set",
            "message_type NOT IN ('welcome', 'tier_unlock', 'goodbye', 'weekly_review', \
             'reminder', 'help_restart')",
        ),
        ("status in the set", "status NOT IN ('pending', 'sent', 'failed', 'cancelled')"),
        ("destination in the set", "destination NOT IN ('individual', 'group')"),
        ("retry_count >= 0", "retry_count < 0"),
        (
            "user exists",
            "NOT EXISTS (SELECT 1 FROM auth.users u WHERE u.id = q.user_id)",
        ),
        (
            "destination is the profile's",
            "destination <> (SELECT p.preferred_destination FROM public.user_profiles p \
             WHERE p.id = q.user_id)",
        ),
        (
            "JID matches the destination",
            "destination_jid !~ CASE destination WHEN 'individual' THEN '^[0-9]+@s\\.whatsapp\\.net$' \
             ELSE '^[0-9]+@g\\.us$' END",
        ),
        ("sent rows have sent_at, others not", "(status = 'sent') <> (sent_at IS NOT NULL)"),
        ("sent after scheduled", "sent_at < scheduled_for"),
        (
            "failures have retries and an error, others none",
            "(status = 'failed') <> (retry_count > 0 AND error_message IS NOT NULL)",
        ),
        ("sent messages are in the past", "status = 'sent' AND sent_at > now()"),
        ("localization key", "message_key !~ ('^engagement\\.' || message_type || '\\.')"),
        ("seed idempotency key", "idempotency_key NOT LIKE 'seed:' || message_type || ':' || user_id || '%'"),
        (
            "goodbye only after a goodbye_sent transition",
            "message_type = 'goodbye' AND NOT EXISTS (SELECT 1 FROM \
             public.engagement_state_transitions t WHERE t.user_id = q.user_id \
             AND t.to_state = 'goodbye_sent' AND t.created_at = q.scheduled_for)",
        ),
        (
            "reminder at the state's remind_at",
            "message_type = 'reminder' AND scheduled_for IS DISTINCT FROM (SELECT s.remind_at \
             FROM public.user_engagement_states s WHERE s.user_id = q.user_id)",
        ),
    ] {
        let bad = count(
            &pg,
            &format!("SELECT count(*) FROM public.engagement_message_queue q WHERE {sql}"),
            &[],
        )
        .await;
        assert_eq!(bad, 0, "{rule}");
    }
    for (column, at_least) in [("message_type", 6), ("status", 4), ("destination", 2)] {
        let n = count(
            &pg,
            &format!("SELECT count(DISTINCT {column}) FROM public.engagement_message_queue"),
            &[],
        )
        .await;
        assert!(n >= at_least, "{column}: {n} distinct values");
    }
    // Every user with events got a welcome.
    assert_eq!(
        count(
            &pg,
            "SELECT count(DISTINCT user_id) FROM public.engagement_events e WHERE NOT EXISTS \
             (SELECT 1 FROM public.engagement_message_queue q \
              WHERE q.user_id = e.user_id AND q.message_type = 'welcome')",
            &[]
        )
        .await,
        0
    );
}
