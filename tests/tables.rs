//! `[[tables]]`: several tables on one stream. The defaults stream engagement-state
//! transitions (insert) and engagement-state changes (update) to their owner next to the events,
//! never the message queue; the native `table` parameter and Supabase bindings select among the
//! streamed tables; a custom entry routes by its own owner column; a misconfigured entry stops
//! the relay with a message naming it.

use std::time::Duration;

use crate::common::phoenix::{join, next, open};
use crate::common::ws::{connect, upgrade, Upgrade};
use crate::common::{create_user, insert_event, user_token, TestDb};
use engagement_relay::model::Operation;
use engagement_relay::tables::TableConfig;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_postgres::Client;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const HOUR: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(10);

async fn transition(pg: &Client, user: Uuid, to: &str) {
    pg.execute(
        "INSERT INTO public.engagement_state_transitions (user_id, from_state, to_state, trigger) \
         VALUES ($1, 'active', $2, 'test')",
        &[&user, &to],
    )
    .await
    .expect("insert transition");
}

async fn queue_message(pg: &Client, user: Uuid) {
    pg.execute(
        "INSERT INTO public.engagement_message_queue \
           (user_id, message_type, message_key, destination, destination_jid, idempotency_key) \
         VALUES ($1, 'goodbye', 'engagement.goodbye', 'individual', 'jid', gen_random_uuid()::text)",
        &[&user],
    )
    .await
    .expect("queue a message");
}

/// `(type, table)` of a native frame.
fn kind(frame: &Value) -> (&str, &str) {
    (
        frame["type"].as_str().unwrap_or_default(),
        frame["table"].as_str().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_defaults_stream_transitions_and_state_changes_to_their_owner_never_the_queue() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    let (mut client, _) = connect(&relay, &user_token(a, HOUR), "").await;

    // Not streamed: a state row's insert, a transition's update, the queue, b's rows.
    pg.execute(
        "INSERT INTO public.user_engagement_states (user_id) VALUES ($1), ($2)",
        &[&a, &b],
    )
    .await
    .unwrap();
    transition(&pg, b, "dormant").await;
    queue_message(&pg, a).await;
    transition(&pg, a, "goodbye_sent").await;
    pg.execute(
        "UPDATE public.engagement_state_transitions SET metadata = '{\"x\":1}' WHERE user_id = $1",
        &[&a],
    )
    .await
    .unwrap();
    pg.execute(
        "UPDATE public.user_engagement_states SET state = 'goodbye_sent' WHERE user_id IN ($1, $2)",
        &[&a, &b],
    )
    .await
    .unwrap();
    insert_event(&pg, a, "app_open", json!({})).await;

    let frames = client.events(3, WAIT).await;
    assert_eq!(
        frames.iter().map(kind).collect::<Vec<_>>(),
        [
            ("insert", "engagement_state_transitions"),
            ("update", "user_engagement_states"),
            ("insert", "engagement_events"),
        ],
        "{frames:?}"
    );
    assert_eq!(frames[0]["record"]["to_state"], "goodbye_sent");
    assert_eq!(frames[0]["record"]["user_id"], a.to_string());
    assert_eq!(frames[1]["record"]["state"], "goodbye_sent");
    assert_eq!(frames[1]["record"]["user_id"], a.to_string());
    assert!(
        frames[0]["cursor"].as_str() < frames[1]["cursor"].as_str(),
        "cursors order rows across tables"
    );
    client.assert_silent(Duration::from_millis(300)).await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_parameter_narrows_a_session_and_names_only_streamed_tables() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    let token = user_token(a, HOUR);
    let (mut transitions, _) =
        connect(&relay, &token, "&table=public.engagement_state_transitions").await;
    let (mut both, _) = connect(
        &relay,
        &token,
        "&table=engagement_events,engagement_state_transitions",
    )
    .await;
    insert_event(&pg, a, "app_open", json!({})).await;
    transition(&pg, a, "help_flow").await;
    let only = transitions.events(1, WAIT).await;
    assert_eq!(kind(&only[0]), ("insert", "engagement_state_transitions"));
    assert_eq!(both.events(2, WAIT).await.len(), 2);

    for table in ["engagement_message_queue", "other.engagement_events", "*"] {
        match upgrade(&relay, &format!("access_token={token}&table={table}"), None).await {
            Upgrade::Refused(400, body) => {
                assert_eq!(body["error"], "unknown_table", "{body}");
                let message = body["message"].as_str().unwrap_or_default();
                assert!(message.contains("public.engagement_events"), "{message}");
            }
            Upgrade::Refused(status, body) => panic!("{table}: {status} {body}"),
            Upgrade::Open(_) => panic!("{table}: an unstreamed table was accepted"),
        }
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_bindings_select_among_the_streamed_tables() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let a = create_user(&pg).await;
    pg.execute(
        "INSERT INTO public.user_engagement_states (user_id) VALUES ($1)",
        &[&a],
    )
    .await
    .unwrap();
    let token = user_token(a, HOUR);
    let mut ws = open(&relay, &token, "2.0.0").await;
    let dormant = json!({"event": "INSERT", "schema": "public",
        "table": "engagement_state_transitions", "filter": "to_state=eq.dormant"});
    let states = json!({"event": "UPDATE", "schema": "public", "table": "user_engagement_states"});
    let everything = json!({"event": "*", "schema": "public"});
    let queue = json!({"event": "*", "schema": "public", "table": "engagement_message_queue"});
    let bindings = json!([dormant, states, everything, queue]);
    ws.send(Message::text(join("realtime:me", "1", &token, bindings)))
        .await
        .unwrap();
    let reply = next(&mut ws).await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let ids: Vec<u64> = reply[4]["response"]["postgres_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_u64().unwrap())
        .collect();
    assert_eq!(next(&mut ws).await[4]["status"], "ok", "subscribed");
    let refused = next(&mut ws).await;
    assert_eq!(refused[3], "system", "{refused}");
    assert!(refused[4]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("engagement_message_queue"));

    queue_message(&pg, a).await;
    transition(&pg, a, "remind_later").await;
    transition(&pg, a, "dormant").await;
    pg.execute(
        "UPDATE public.user_engagement_states SET state = 'dormant' WHERE user_id = $1",
        &[&a],
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let change = next(&mut ws).await;
        assert_eq!(change[3], "postgres_changes", "{change}");
        let data = &change[4]["data"];
        got.push((
            data["table"].as_str().unwrap_or_default().to_string(),
            data["type"].as_str().unwrap_or_default().to_string(),
            change[4]["ids"].clone(),
        ));
    }
    let transitions = "engagement_state_transitions".to_string();
    assert_eq!(
        got,
        [
            (transitions.clone(), "INSERT".into(), json!([ids[2]])),
            (transitions, "INSERT".into(), json!([ids[0], ids[2]])),
            (
                "user_engagement_states".into(),
                "UPDATE".into(),
                json!([ids[1], ids[2]])
            ),
        ]
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_entry_routes_by_its_own_owner_column() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE public.audit_log (id bigserial PRIMARY KEY, actor uuid NOT NULL, note text);
         ALTER PUBLICATION engagement_events_pub ADD TABLE public.audit_log;",
    )
    .await
    .unwrap();
    let relay = db
        .relay_with(|c| {
            c.tables = vec![TableConfig {
                schema: "public".into(),
                table: "audit_log".into(),
                owner_column: "actor".into(),
                operations: vec![Operation::Insert],
            }]
        })
        .await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    let (mut client, _) = connect(&relay, &user_token(a, HOUR), "").await;
    insert_event(&pg, a, "app_open", json!({})).await;
    pg.execute(
        "INSERT INTO public.audit_log (actor, note) VALUES ($1, 'theirs'), ($2, 'mine')",
        &[&b, &a],
    )
    .await
    .unwrap();
    let frames = client.events(1, WAIT).await;
    assert_eq!(kind(&frames[0]), ("insert", "audit_log"));
    assert_eq!(frames[0]["record"]["note"], "mine");
    client.assert_silent(Duration::from_millis(300)).await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_entry_stops_the_relay_naming_it() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE public.unpublished (id bigserial PRIMARY KEY, user_id uuid);
         CREATE TABLE public.text_owner (id bigserial PRIMARY KEY, user_id text);
         CREATE TABLE public.listed (id bigserial PRIMARY KEY, user_id uuid, note text);
         ALTER PUBLICATION engagement_events_pub ADD TABLE public.text_owner;
         ALTER PUBLICATION engagement_events_pub ADD TABLE public.listed (id, note);",
    )
    .await
    .unwrap();
    let entry = |table: &str, owner: &str| TableConfig {
        schema: "public".into(),
        table: table.into(),
        owner_column: owner.into(),
        operations: vec![Operation::Insert],
    };
    let cases = [
        (entry("missing", "user_id"), "does not exist"),
        (
            entry("engagement_state_transitions", "owner"),
            "has no column `owner`",
        ),
        (entry("text_owner", "user_id"), "must be a uuid"),
        (entry("unpublished", "user_id"), "ALTER PUBLICATION"),
        (entry("listed", "user_id"), "column list"),
    ];
    for (table, expected) in cases {
        let mut config = db.config();
        config.tables = vec![engagement_relay::tables::default_tables().remove(0), table];
        let err = match engagement_relay::start(config).await {
            Ok(relay) => {
                relay.shutdown().await.ok();
                panic!("started with a bad entry ({expected})")
            }
            Err(e) => e.to_string(),
        };
        assert!(err.contains("tables[1]") && err.contains(expected), "{err}");
    }
}
