//! SIGKILL of the publisher under a steady insert load: a standby takes the slot and
//! publishing resumes (the gap from the kill to the first event committed after it reaching a
//! client is logged, never asserted); the killed node's clients resume with `since` on another
//! node, complete, and every client of every node ends with exactly its user's committed events.

use std::time::Instant;

use super::support::{last_seq, nodes, process_publisher, publisher, Clients, T};
use crate::common::workload::Load;
use crate::common::{create_user, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_publisher_a_standby_takes_over_and_its_clients_resume_elsewhere() {
    let nats = super::support::nats().await;
    let db = TestDb::new().await;
    // The publisher is the real binary, to be SIGKILLed; the standbys run in this process.
    let killed = process_publisher(&db, &nats.url()).await;
    let standbys = nodes(&db, &nats.url(), 2).await;
    assert!(
        standbys.iter().all(|n| !n.holds_slot()),
        "the first node holds the slot"
    );
    let pg = db.client().await;
    let mut users = Vec::new();
    for _ in 0..3 {
        users.push(create_user(&pg).await);
    }
    let addrs = [
        killed.addr,
        standbys[0].server_addr(),
        standbys[1].server_addr(),
    ];
    let clients = Clients::start(&addrs, &users).await;
    let load = Load::start(&db.url, users.clone(), 50, 0);
    clients.received(10).await;

    // Its clients reconnect to the first standby once their sockets drop.
    clients.redirect(0, addrs[1]);
    let killed_at = Instant::now();
    killed.kill().unwrap();
    let before = last_seq(&pg).await;
    let new_publisher = publisher(&standbys).await;
    let resumed = clients
        .on(2)
        .wait(T, |r| r.seqs.last().is_some_and(|s| *s > before))
        .await;
    assert!(resumed, "no event committed after the kill was delivered");
    eprintln!(
        "cluster failover: SIGKILL of the publisher → first event committed after it delivered \
         on another node: {:?} (node {} took the slot)",
        killed_at.elapsed(),
        new_publisher + 1
    );
    clients.received(30).await;

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
    for node in standbys {
        node.shutdown().await.unwrap();
    }
}
