//! SIGKILL of the publisher under a steady insert load: a standby takes the slot and
//! publishing resumes (the gap from the kill to the first event committed after it reaching a
//! client is logged, never asserted); the killed node's clients resume with `since` on another
//! node, complete, and every client of every node ends with exactly its user's committed events.

use std::time::{Duration, Instant};

use super::support::{last_seq, nats, node_with, process_node, process_publishes, Clients, T};
use crate::common::workload::Load;
use crate::common::{create_user, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_publisher_a_standby_takes_over_and_its_clients_resume_elsewhere() {
    let nats = nats().await;
    let db = TestDb::new().await;
    // The publisher and the standby that takes over are the real binary: one to SIGKILL, one
    // whose log is read. A third node, in this process, only serves: it tries for the slot
    // once a minute.
    let killed = process_node(&db, &nats.url()).await;
    process_publishes(&killed).await;
    let successor = process_node(&db, &nats.url()).await;
    let server = node_with(&db, &nats.url(), |c| {
        c.cluster.takeover_interval = Duration::from_secs(60)
    })
    .await;
    let pg = db.client().await;
    let mut users = Vec::new();
    for _ in 0..3 {
        users.push(create_user(&pg).await);
    }
    let addrs = [killed.addr, successor.addr, server.server_addr()];
    let clients = Clients::start(&addrs, &users).await;
    let load = Load::start(&db.url, users.clone(), 50, 0);
    clients.received(10).await;

    // Its clients reconnect to the serving node once their sockets drop.
    clients.redirect(0, addrs[2]);
    let killed_at = Instant::now();
    killed.kill().unwrap();
    let before = last_seq(&pg).await;
    let resumed = clients
        .on(2)
        .wait(T, |r| r.seqs.last().is_some_and(|s| *s > before))
        .await;
    assert!(resumed, "no event committed after the kill was delivered");
    eprintln!(
        "cluster failover: SIGKILL of the publisher → first event committed after it delivered \
         on another node: {:?}",
        killed_at.elapsed()
    );
    process_publishes(&successor).await;
    clients.received(30).await;
    // Re-sending the unconfirmed tail (duplicates) is no failure.
    let failed = successor.message("publishing to JetStream failed");
    assert_eq!(failed, None, "the new publisher's sends were refused");

    for (node, record) in clients.settle(&pg, load).await {
        if node == 0 {
            assert_eq!(
                record.connects, 2,
                "resumed once on another node: {record:?}"
            );
            assert!(
                !record.recovered.is_empty(),
                "resumed with since: {record:?}"
            );
        } else {
            assert_eq!(
                record.connects, 1,
                "node {node}'s client stayed: {record:?}"
            );
        }
    }
    server.shutdown().await.unwrap();
}
