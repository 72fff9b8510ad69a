//! Deletes and old rows (issue 13): a delete reaches its owner's native session and realtime-js
//! `DELETE` listener with the whole old row, nobody else's; an update carries its old row under
//! `REPLICA IDENTITY FULL`; `delete_user_data` erases the user's events from the replay window;
//! start-up refuses `delete` on a table whose replica identity omits the owner column.

use std::time::Duration;

use crate::common::node::NodeClient;
use crate::common::ws::connect;
use crate::common::{create_user, insert_event, service_token, user_token, TestDb};
use engagement_relay::model::Operation;
use engagement_relay::tables::TableConfig;
use serde_json::{json, Value};

const HOUR: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_reaches_only_its_owner_with_the_old_row_and_an_update_carries_its_old_row() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    let (mut mine, _) = connect(&relay, &user_token(a, HOUR), "").await;
    let (mut theirs, _) = connect(&relay, &user_token(b, HOUR), "").await;
    let (mut service, _) = connect(&relay, &service_token(), "").await;
    let id = insert_event(&pg, a, "app_open", json!({"screen": "home"})).await;
    pg.execute(
        "UPDATE public.engagement_events SET is_deleted = true WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    pg.execute("DELETE FROM public.engagement_events WHERE id = $1", &[&id])
        .await
        .unwrap();
    let frames = mine.events(3, WAIT).await;
    let types: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(types, ["insert", "update", "delete"], "{frames:?}");
    let (update, delete) = (&frames[1], &frames[2]);
    assert_eq!(update["old_record"]["is_deleted"], false, "{update}");
    assert_eq!(update["record"]["is_deleted"], true);
    assert!(delete.get("record").is_none(), "{delete}");
    let old = &delete["old_record"];
    assert_eq!(old["id"], id.to_string());
    assert_eq!(old["user_id"], a.to_string());
    assert_eq!(old["event_type"], "app_open");
    assert_eq!(old["value"], json!({"screen": "home"}));
    assert_eq!(old["is_deleted"], true);
    assert_eq!(delete["table"], "engagement_events");
    assert!(delete["cursor"].as_str() > update["cursor"].as_str());
    assert!(delete["commit_timestamp"].is_string());
    let all = service.events(3, WAIT).await;
    assert_eq!(all[2]["type"], "delete");
    theirs.assert_silent(Duration::from_millis(300)).await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realtime_js_delete_listener_gets_the_old_row_and_nothing_of_others() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let (a, b) = (create_user(&pg).await, create_user(&pg).await);
    let url = format!("ws://{}/realtime/v1", relay.server_addr());
    let listen = |user, event| {
        let token = user_token(user, HOUR);
        NodeClient::start(
            "realtime",
            json!({"url": url, "apikey": token, "token": token, "event": event}),
        )
    };
    let (mut mine, mut theirs) = (listen(a, "DELETE"), listen(b, "DELETE"));
    let mut every = listen(a, "*");
    mine.status("SUBSCRIBED").await;
    theirs.status("SUBSCRIBED").await;
    every.status("SUBSCRIBED").await;
    let id = insert_event(&pg, a, "goal_complete", json!({"goal_id": 7})).await;
    pg.execute("DELETE FROM public.engagement_events WHERE id = $1", &[&id])
        .await
        .unwrap();
    let change = mine.changes(1).await.remove(0);
    assert_eq!(change["eventType"], "DELETE", "{change}");
    assert_eq!(change["new"], json!({}));
    let old = &change["old"];
    assert_eq!(old["id"], id.to_string(), "{change}");
    assert_eq!(old["user_id"], a.to_string());
    assert_eq!(old["event_type"], "goal_complete");
    assert_eq!(old["value"], json!({"goal_id": 7}));
    assert_eq!(change["table"], "engagement_events");
    theirs.no_change(Duration::from_millis(500)).await;
    // A `*` binding gets the insert and the delete, the same old row.
    let both = every.changes(2).await;
    assert_eq!(both[0]["eventType"], "INSERT");
    assert_eq!(both[1]["eventType"], "DELETE");
    assert_eq!(both[1]["old"], change["old"]);
    every.quit().await;
    mine.quit().await;
    theirs.quit().await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_delete_user_data_a_resume_replays_no_erased_event() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let (u, other) = (create_user(&pg).await, create_user(&pg).await);
    let (mut first, ready) = connect(&relay, &user_token(u, HOUR), "").await;
    let since = ready["cursor"].as_str().unwrap_or_default().to_string();
    let erased = [
        insert_event(&pg, u, "app_open", json!({"n": 1})).await,
        insert_event(&pg, u, "app_open", json!({"n": 2})).await,
    ];
    insert_event(&pg, other, "app_open", json!({})).await;
    first.events(2, WAIT).await;
    pg.execute("SELECT * FROM public.delete_user_data($1)", &[&u])
        .await
        .unwrap();
    let kept = insert_event(&pg, u, "app_open", json!({"n": 3})).await;
    // The open session hears the erasure (both deletes), then the new row.
    let live = first.events(3, WAIT).await;
    let types: Vec<&str> = live.iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(types, ["delete", "delete", "insert"], "{live:?}");
    drop(first);
    let (mut resumed, _) = connect(&relay, &user_token(u, HOUR), &format!("&since={since}")).await;
    let mut frames = Vec::new();
    let recovered = loop {
        let frame = resumed.next_json(WAIT).await.expect("a frame");
        if frame["type"] == "recovered" {
            break frame;
        }
        frames.push(frame);
    };
    assert_eq!(recovered["complete"], true, "{recovered}");
    let inserted: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "insert")
        .map(|f| &f["record"]["id"])
        .collect();
    assert_eq!(inserted, [&json!(kept.to_string())], "{frames:?}");
    let deleted: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "delete")
        .map(|f| &f["old_record"]["id"])
        .collect();
    let expected: Vec<Value> = erased.iter().map(|id| json!(id.to_string())).collect();
    assert_eq!(deleted, expected.iter().collect::<Vec<_>>(), "{frames:?}");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_delete_on_a_table_whose_identity_omits_the_owner() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    pg.batch_execute(
        "CREATE TABLE public.notes (id bigserial PRIMARY KEY, user_id uuid NOT NULL, body text);
         ALTER PUBLICATION engagement_events_pub ADD TABLE public.notes;",
    )
    .await
    .unwrap();
    let notes = TableConfig {
        schema: "public".into(),
        table: "notes".into(),
        owner_column: "user_id".into(),
        operations: vec![Operation::Insert, Operation::Delete],
    };
    let mut config = db.config();
    config.tables = vec![notes.clone()];
    let err = match engagement_relay::start(config).await {
        Ok(relay) => {
            relay.shutdown().await.ok();
            panic!("started streaming deletes without the owner in the old row")
        }
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("tables[0]")
            && err.contains("ALTER TABLE public.notes REPLICA IDENTITY FULL")
            && !err.contains('\n'),
        "{err}"
    );
    pg.batch_execute("ALTER TABLE public.notes REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let relay = db.relay_with(|c| c.tables[0] = notes).await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_auth_user_streams_the_cascaded_deletes_to_their_owner() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let u = create_user(&pg).await;
    let (mut session, _) = connect(&relay, &user_token(u, HOUR), "").await;
    let ids = [
        insert_event(&pg, u, "app_open", json!({})).await,
        insert_event(&pg, u, "app_open", json!({})).await,
    ];
    session.events(2, WAIT).await;
    pg.execute("DELETE FROM auth.users WHERE id = $1", &[&u])
        .await
        .unwrap();
    let deletes = session.events(2, WAIT).await;
    let mut deleted: Vec<String> = deletes
        .iter()
        .filter(|f| f["type"] == "delete")
        .filter_map(|f| f["old_record"]["id"].as_str().map(String::from))
        .collect();
    deleted.sort();
    let mut expected: Vec<String> = ids.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(deleted, expected, "{deletes:?}");
    relay.shutdown().await.unwrap();
}
