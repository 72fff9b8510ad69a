//! Outages of what the cluster runs on, under a steady insert load, with clients on two nodes:
//!
//! - `nats-server` stopped and started again (same port, same store dir): while it is down
//!   every node's `/readyz` is 503 and the publisher confirms nothing to PostgreSQL past what
//!   JetStream acknowledged; afterwards the nodes reconnect and every event committed during
//!   the outage arrives, once, in order.
//! - PostgreSQL restarted (fast, then immediate): as on a single node, the slot is taken again,
//!   events after the restart stream, and clients that resume meanwhile get no duplicates.
//! - PostgreSQL restarted while `nats-server` is down: its fast shutdown does not get the rows
//!   JetStream never acknowledged confirmed, and once both are back nothing is lost.

use std::time::Duration;

use super::support::{
    confirmed_lsn, last_seq, nats, publisher, readyz, readyz_on_all, shutdown, wal_lsn, Loaded, T,
};
use crate::common::{private_cluster, wait_until, wait_until_async, TestDb};
use relay_testkit::pgcluster::StopMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_nothing_confirmed_past_jetstream_and_nothing_lost() {
    let mut nats = nats().await;
    let db = TestDb::new().await;
    let Loaded {
        nodes,
        addrs,
        pg,
        clients,
        load,
    } = Loaded::start(&db, &nats.url()).await;
    clients.received(10).await;

    tokio::task::block_in_place(|| nats.stop()).unwrap();
    // A row committed from here on cannot have been acknowledged by JetStream: the slot must
    // stay before the end of the first one.
    let down = last_seq(&pg).await;
    wait_until_async("a row is committed during the outage", T, || async {
        last_seq(&pg).await > down
    })
    .await;
    let unacked = wal_lsn(&pg).await;
    readyz_on_all(&addrs, 503, "/readyz is 503 while NATS is down").await;
    // Rows keep coming for a while; the publisher confirms about once a second.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let confirmed = confirmed_lsn(&pg, &db.name).await;
        assert!(
            confirmed < unacked,
            "the slot was confirmed to {confirmed:#x}, past an unacknowledged row (< {unacked:#x})"
        );
    }
    assert!(
        last_seq(&pg).await > down + 20,
        "rows were committed during the outage"
    );

    tokio::task::block_in_place(|| nats.restart()).unwrap();
    readyz_on_all(&addrs, 200, "/readyz is 200 once NATS is back").await;
    wait_until_async(
        "the slot is confirmed past the outage's rows",
        T,
        || async { confirmed_lsn(&pg, &db.name).await >= unacked },
    )
    .await;
    clients
        .get_rows_after_now(1, &pg, "rows committed after the restart arrive")
        .await;
    clients.settle(&pg, load).await;
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_the_slot_is_taken_again_and_resuming_clients_get_no_duplicates() {
    let nats = nats().await;
    let cluster = private_cluster().await;
    let db = TestDb::on(&cluster).await;
    let Loaded {
        nodes,
        addrs,
        pg: _,
        clients,
        load,
    } = Loaded::start(&db, &nats.url()).await;

    for (round, mode) in [StopMode::Fast, StopMode::Immediate]
        .into_iter()
        .enumerate()
    {
        clients.received(10 * (round + 1)).await;
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.stop(mode))
            .await
            .unwrap()
            .unwrap();
        wait_until("the publisher loses the slot", T, || {
            nodes.iter().all(|n| !n.holds_slot())
        })
        .await;
        // The nodes still serve what the stream has: they consume NATS, not PostgreSQL.
        for addr in &addrs {
            assert_eq!(readyz(*addr).await, 200, "during a {mode:?} restart");
        }
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.restart_server())
            .await
            .unwrap()
            .unwrap();
        publisher(&nodes).await;
        // One node's clients resume with `since` meanwhile.
        clients.cut(round);
    }
    let pg = db.client().await;
    clients
        .get_rows_after_now(0, &pg, "rows committed after the restarts arrive")
        .await;
    for (node, record) in clients.settle(&pg, load).await {
        assert!(!record.recovered.is_empty(), "node {node}: {record:?}");
    }
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_while_nats_is_down_confirms_nothing_unacknowledged() {
    let mut nats = nats().await;
    let cluster = private_cluster().await;
    let db = TestDb::on(&cluster).await;
    let Loaded {
        nodes,
        addrs: _,
        pg,
        clients,
        load,
    } = Loaded::start(&db, &nats.url()).await;
    clients.received(5).await;

    tokio::task::block_in_place(|| nats.stop()).unwrap();
    let down = last_seq(&pg).await;
    wait_until_async("rows are committed during the outage", T, || async {
        last_seq(&pg).await > down + 10
    })
    .await;
    let unacked = wal_lsn(&pg).await;
    // A checkpoint logs the running transactions: a confirmation past it moves the slot's
    // restart_lsn, which PostgreSQL saves to disk at once, confirmed_flush_lsn with it.
    pg.batch_execute("CHECKPOINT").await.unwrap();
    // A fast shutdown waits for the walsender, which waits for the relay's confirmation.
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.restart(StopMode::Fast))
        .await
        .unwrap()
        .unwrap();
    let pg = db.client().await;
    let confirmed = confirmed_lsn(&pg, &db.name).await;
    assert!(
        confirmed < unacked,
        "the slot was confirmed to {confirmed:#x} at shutdown, past rows JetStream never \
         acknowledged (< {unacked:#x})"
    );
    publisher(&nodes).await;

    tokio::task::block_in_place(|| nats.restart()).unwrap();
    clients
        .get_rows_after_now(1, &pg, "rows committed after both restarts arrive")
        .await;
    clients.settle(&pg, load).await;
    shutdown(nodes).await;
}
