//! Backup and point-in-time recovery under a running relay, as docs/OPERATIONS.md ("Backup and
//! recovery") describes them: WAL archiving with `wal_level` kept at `logical`, a
//! `pg_basebackup` of the running cluster, a restore into a new data directory through
//! `recovery.signal` and `postgresql.conf` (the seed's `recovery.conf` is obsolete since
//! PostgreSQL 12), and what the relay then does: it closes live sessions with 1012, answers an
//! old cursor `complete:false`, creates its slot anew on the restored server and streams from
//! there. (On clusters of its own: it stops one and starts another on its port.)

use std::sync::Arc;
use std::time::Duration;

use crate::common::ws::{connect, Client};
use crate::common::{create_user, insert_event, start_cluster, user_token, wait_until, TestDb};
use crate::history::get as history;
use relay_testkit::pgcluster::{configure_recovery, Cluster, ClusterOptions, ScratchDir, StopMode};
use serde_json::{json, Value};
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);
const RESTORE_POINT: &str = "before_the_bad_deploy";

/// Receives the next `engagement_events` event (skipping the activity trigger's
/// `user_engagement_states` updates) and returns its `record.value.n` and `cursor`.
async fn next_event(client: &mut Client) -> (i64, String) {
    loop {
        let event = client.events(1, T).await.remove(0);
        if event["table"] == "engagement_events" {
            let n = event["record"]["value"]["n"].as_i64().expect("value.n");
            return (n, event["cursor"].as_str().expect("cursor").to_string());
        }
    }
}

async fn insert(pg: &tokio_postgres::Client, user: Uuid, n: i64) {
    insert_event(pg, user, "app_open", json!({ "n": n })).await;
}

/// The `n` of the user's events in the history API, oldest first.
async fn history_ns(relay: &engagement_relay::Relay, token: &str) -> Vec<i64> {
    let (status, body) = history(relay, token, "limit=100").await;
    assert_eq!(status, 200, "{body}");
    let mut ns: Vec<i64> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["value"]["n"].as_i64())
        .collect();
    ns.reverse();
    ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_in_time_restore_under_a_running_relay_closes_1012_and_streams_on_a_new_slot() {
    let scratch = ScratchDir::new().unwrap();
    let archive = scratch.mkdir("wal_archive").unwrap();
    // The seed's PITR setup, with wal_level left at logical (the harness sets it).
    let primary = Arc::new(
        start_cluster(ClusterOptions {
            settings: vec![
                ("archive_mode".into(), "on".into()),
                // Copied under a temporary name, then renamed (the PostgreSQL docs, "Setting Up
                // WAL Archiving"): the immediate stop below may kill a `cp` mid-segment, and
                // recovery refuses an archived segment of the wrong size.
                (
                    "archive_command".into(),
                    format!(
                        "cp %p {dir}/%f.part && mv {dir}/%f.part {dir}/%f",
                        dir = archive.display()
                    ),
                ),
                ("full_page_writes".into(), "on".into()),
            ],
            ..ClusterOptions::default()
        })
        .await,
    );
    let db = TestDb::on(&primary).await;
    let relay = db.relay().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let token = user_token(user, Duration::from_secs(3600));
    let (mut live, _) = connect(&relay, &token, "").await;

    insert(&pg, user, 1).await;
    assert_eq!(next_event(&mut live).await.0, 1);
    let restored = scratch.path().join("restored");
    let (c, into) = (primary.clone(), restored.clone());
    tokio::task::spawn_blocking(move || c.base_backup(&into))
        .await
        .unwrap()
        .unwrap();
    let slots = std::fs::read_dir(restored.join("pg_replslot")).unwrap();
    assert_eq!(slots.count(), 0, "a base backup holds no replication slot");

    // Event 2 is kept by the restore, event 3 (after the restore point) is not.
    insert(&pg, user, 2).await;
    pg.execute("SELECT pg_create_restore_point($1)", &[&RESTORE_POINT])
        .await
        .unwrap();
    insert(&pg, user, 3).await;
    assert_eq!(next_event(&mut live).await.0, 2);
    let (n, lost_cursor) = next_event(&mut live).await;
    assert_eq!(n, 3);
    archive_current_segment(&pg, &archive).await;

    // The primary is lost; the backup is restored to the restore point, on its port.
    tokio::task::spawn_blocking({
        let c = primary.clone();
        move || c.stop(StopMode::Immediate)
    })
    .await
    .unwrap()
    .unwrap();
    configure_recovery(&restored, &archive, RESTORE_POINT).unwrap();
    let port = primary.port();
    let replica = tokio::task::spawn_blocking(move || {
        Cluster::start(ClusterOptions {
            data_dir: Some(restored),
            port: Some(port),
            fast: true,
            ..ClusterOptions::default()
        })
    })
    .await
    .unwrap()
    .unwrap();

    // Live sessions are told the stream started over.
    assert_eq!(live.close_code(T).await, 1012);
    wait_until("the relay streams from the restored server", T, || {
        relay.is_ready()
    })
    .await;
    let pg = db.client().await;
    let in_recovery: bool = pg
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_recovery, "the restored server promoted itself");
    let timeline: i32 = pg
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(timeline >= 2, "a new timeline, not {timeline}");
    let slot: Option<String> = pg
        .query_opt(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    assert_eq!(
        slot.as_deref(),
        Some("pgoutput"),
        "the relay made its slot anew"
    );

    // A cursor from before the restore cannot be honoured: the client reloads its history,
    // which is the restored table's.
    let (mut resumed, _) = connect(&relay, &token, &format!("&since={lost_cursor}")).await;
    let recovered: Value = resumed.next_json(T).await.unwrap();
    assert_eq!(recovered["type"], "recovered", "{recovered}");
    assert_eq!(recovered["complete"], false, "{recovered}");
    assert_eq!(history_ns(&relay, &token).await, [1, 2]);

    // New commits on the restored server stream as usual.
    insert(&pg, user, 4).await;
    assert_eq!(next_event(&mut resumed).await.0, 4);
    relay.shutdown().await.unwrap();
    drop(replica);
}

/// Switches to a new WAL segment and waits until the completed one is in `archive`, so that
/// the restore point and the commits before it can be replayed from the archive.
async fn archive_current_segment(pg: &tokio_postgres::Client, archive: &std::path::Path) {
    let segment: String = pg
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    let file = archive.join(&segment);
    wait_until("the segment is archived", T, || file.exists()).await;
}
