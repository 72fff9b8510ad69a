//! Fault tests: a steady insert load, clients that record every event, a fault, then per user
//! the received sequence must equal the committed rows in commit order (no loss, no duplicate,
//! no reordering). The relay runs as the real binary where it crashes or gets signals.
//! PostgreSQL restarts are in `fault_pg_restart.rs` (on a cluster of their own).

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::process::{start_ready, RelayProcess, PROCESS_WAIT};
use crate::common::workload::{settle, Load, Record, Recorder};
use crate::common::ws::{connect, Next};
use crate::common::{create_user, metric, user_token, TestDb};
use tokio::sync::watch;
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);

async fn users(pg: &tokio_postgres::Client, n: usize) -> Vec<Uuid> {
    let mut users = Vec::new();
    for _ in 0..n {
        users.push(create_user(pg).await);
    }
    users
}

/// Waits until every recorder has at least `n` events.
async fn wait_events(recorders: &[Recorder], n: usize) {
    for r in recorders {
        assert!(
            r.wait(T, |rec| rec.seqs.len() >= n).await,
            "{n} events reach {}",
            r.user
        );
    }
}

/// A test database, the relay binary on it, three users each with a recording client that
/// resumes with `since`, and a load of 50 statements per second over them.
struct Scenario {
    db: TestDb,
    pg: tokio_postgres::Client,
    relay: Option<RelayProcess>,
    addr: watch::Sender<SocketAddr>,
    recorders: Vec<Recorder>,
    load: Load,
}

impl Scenario {
    async fn start(env: &[(&str, &str)]) -> Scenario {
        let db = TestDb::new().await;
        let pg = db.client().await;
        let relay = start_ready(&db, env).await;
        let users = users(&pg, 3).await;
        let (addr, rx) = watch::channel(relay.addr);
        let recorders: Vec<Recorder> = users
            .iter()
            .map(|u| Recorder::start(rx.clone(), *u, true))
            .collect();
        for r in &recorders {
            r.subscribed().await;
        }
        let load = Load::start(&db.url, users, 50, 0);
        Scenario {
            db,
            pg,
            relay: Some(relay),
            addr,
            recorders,
            load,
        }
    }

    /// Starts another relay on the same slot; clients move to it once it is ready.
    async fn restart(&mut self, env: &[(&str, &str)]) {
        let relay = start_ready(&self.db, env).await;
        self.addr.send(relay.addr).unwrap();
        self.relay = Some(relay);
    }

    /// Stops the load and checks every client's sequence exactly.
    async fn settle(self) -> (Vec<Record>, Option<RelayProcess>) {
        let records = settle(&self.pg, self.load, self.recorders, T).await;
        (records, self.relay)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_mid_stream_resumes_with_its_cursor_and_misses_nothing() {
    let s = Scenario::start(&[]).await;
    wait_events(&s.recorders, 5).await;
    s.recorders[0].cut();
    // Reconnected 2 s later with `since`, while the load kept going.
    assert!(s.recorders[0].wait(T, |r| r.connects >= 2).await);
    wait_events(&s.recorders, 40).await;
    let (records, relay) = s.settle().await;
    let (complete, replayed) = records[0].recovered[0];
    assert!(
        complete && replayed > 0,
        "it replayed what it missed: {replayed}"
    );
    assert!(
        records[1..].iter().all(|r| r.connects == 1),
        "the others never dropped"
    );
    let exposition = relay.unwrap().scrape().await;
    assert_eq!(
        metric(&exposition, "relay_resumes_total{complete=\"true\"}"),
        1.0
    );
    assert!(
        metric(&exposition, "relay_replay_window_events") > 0.0,
        "{exposition}"
    );
    for name in [
        "relay_replay_window_bytes",
        "relay_replay_oldest_age_seconds",
        "relay_slot_retained_wal_bytes",
    ] {
        assert!(exposition.contains(name), "{name} in:\n{exposition}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_relay_sigkill_a_restarted_relay_rebuilds_the_window_from_its_slot() {
    let mut s = Scenario::start(&[]).await;
    wait_events(&s.recorders, 10).await;
    s.relay.take().unwrap().kill().expect("SIGKILL");
    // Rows keep committing while no relay runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.restart(&[]).await;
    let second = s.relay.as_ref().unwrap();
    // The log line is written just before readiness, by another thread.
    let logged = |p: &RelayProcess| p.message("replay window rebuilt").is_some();
    crate::common::wait_until("the rebuild is logged", T, || logged(second)).await;
    for r in &s.recorders {
        let resumed = r.wait(T, |rec| rec.connects >= 2).await;
        assert!(resumed, "resumed on the new relay");
    }
    wait_events(&s.recorders, 40).await;
    let (records, _) = s.settle().await;
    for record in &records {
        assert!(record.recovered.iter().any(|(complete, _)| *complete));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_closed_with_4008_resumes_and_catches_up_while_a_fast_one_kept_up() {
    let db = TestDb::new().await;
    let pg = db.client().await;
    let relay = start_ready(&db, &[("RELAY_LIMITS__SESSION_QUEUE", "64")]).await;
    let user = create_user(&pg).await;
    let (_addr, rx) = watch::channel(relay.addr);
    let fast = Recorder::start(rx.clone(), user, true);
    let slow = Recorder::start_paused(rx.clone(), user);
    fast.subscribed().await;
    // The paused one reads nothing, not even `ready`: wait for the relay to count it.
    let sessions = "relay_sessions{role=\"authenticated\"}";
    let deadline = tokio::time::Instant::now() + T;
    while metric(&relay.scrape().await, sessions) < 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "both sessions open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ~20 KB rows: the slow socket's buffers and its 64-event queue fill within a few MB.
    let load = Load::start(&db.url, vec![user], 50, 20_000);
    // Until the relay drops the slow one (its socket buffers and queue full), it reads nothing
    // at all, while the fast one keeps receiving: the slow consumer never holds it back.
    let dropped = "relay_events_dropped_total{reason=\"slow_consumer\"}";
    let deadline = tokio::time::Instant::now() + T;
    while metric(&relay.scrape().await, dropped) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow consumer is dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slow.record().seqs.is_empty());
    assert!(
        fast.record().seqs.len() > 64,
        "fast kept receiving past the slow one's queue"
    );
    slow.read();
    assert!(
        slow.wait(T, |r| r.closes.contains(&4008)).await,
        "closed as slow"
    );
    assert!(slow.wait(T, |r| !r.recovered.is_empty()).await, "resumed");
    let records = settle(&pg, load, vec![fast, slow], T).await;
    assert_eq!(records[0].connects, 1, "the fast client was never dropped");
    assert!(records[1].recovered[0].0 && records[1].recovered[0].1 > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_cursor_is_incomplete_and_a_garbage_one_is_refused_alone() {
    let db = TestDb::new().await;
    let relay = db.relay_with(|c| c.replay.max_events = 20).await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (_addr, rx) = watch::channel(relay.server_addr());
    let bystander = Recorder::start(rx, user, true);
    bystander.subscribed().await;
    let load = Load::start(&db.url, vec![user], 100, 0);
    wait_events(std::slice::from_ref(&bystander), 2).await;
    let old = bystander.record().cursor.unwrap();
    wait_events(std::slice::from_ref(&bystander), 60).await;
    let token = user_token(user, Duration::from_secs(3600));
    let recovered = |since: String| {
        let (relay, token) = (&relay, &token);
        async move {
            let (mut client, ready) = connect(relay, token, &format!("&since={since}")).await;
            assert_eq!(ready["cursor"], since.as_str(), "ready echoes the cursor");
            client.next_json(T).await.unwrap()
        }
    };
    let frame = recovered(old.clone()).await;
    assert_eq!(frame["type"], "recovered");
    assert_eq!(
        (frame["complete"].as_bool(), frame["replayed"].as_u64()),
        (Some(false), Some(0))
    );
    // The same position in another WAL history (say, after a restore) is no better.
    let foreign = format!(
        "{}{:08x}",
        &old[..24],
        u32::from_str_radix(&old[24..], 16).unwrap() ^ 1
    );
    assert_eq!(recovered(foreign).await["complete"], false);

    for garbage in ["not-a-cursor", "00000000000000000000000000000000zz"] {
        let mut client = connect_raw(&relay, &token, garbage).await;
        match client.next(T).await {
            Next::Json(frame) => assert_eq!(frame["code"], "invalid_cursor", "{frame}"),
            other => panic!("expected an error frame, got {other:?}"),
        }
        assert_eq!(client.close_code(T).await, 1008);
    }
    let records = settle(&pg, load, vec![bystander], T).await;
    assert_eq!(records[0].connects, 1, "nothing else was affected");
}

/// Opens `/v1/events` with a garbage `since`: the upgrade succeeds, nothing else is read.
async fn connect_raw(
    relay: &engagement_relay::Relay,
    token: &str,
    since: &str,
) -> crate::common::ws::Client {
    match crate::common::ws::upgrade(relay, &format!("access_token={token}&since={since}"), None)
        .await
    {
        crate::common::ws::Upgrade::Open(client) => *client,
        crate::common::ws::Upgrade::Refused(status, body) => panic!("refused {status}: {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_with_1001_and_the_slot_holds_what_was_confirmed() {
    let window = [("RELAY_REPLAY__WINDOW", "1s")];
    let mut s = Scenario::start(&window).await;
    let (pg, slot) = (&s.pg, s.db.name.clone());
    let initial = slot_lsn(pg, &slot).await;
    wait_events(&s.recorders, 40).await;

    // Mid-stream: every session gets 1001 after what was dispatched to it.
    let (status, log) = s
        .relay
        .take()
        .unwrap()
        .terminate(PROCESS_WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "exit status {status}");
    for r in &s.recorders {
        let closed = r.wait(T, |rec| rec.closes.first() == Some(&1001)).await;
        assert!(closed, "1001");
    }
    let message = log
        .message("replication stopped; confirmed LSN")
        .expect("the final confirmation is logged");
    let confirmed = message.split_whitespace().nth(4).unwrap().to_string();
    let held = slot_lsn(&s.pg, &slot).await;
    assert_eq!(held, confirmed, "the slot holds what was confirmed");
    let advanced: bool =
        s.pg.query_one(
            "SELECT $1::text::pg_lsn > $2::text::pg_lsn",
            &[&confirmed, &initial],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        advanced,
        "a 1 s window lets the confirmation advance: {initial} → {confirmed}"
    );

    // The last second was not confirmed: a new relay (with a longer window, so that resuming
    // clients need not race the clock) rebuilds it and the clients resume.
    s.restart(&[]).await;
    let (records, _) = s.settle().await;
    for record in &records {
        assert_eq!(record.closes[0], 1001);
        assert!(!record.recovered.is_empty(), "resumed after the restart");
    }
}

/// The slot's `confirmed_flush_lsn` as text (`X/Y`).
async fn slot_lsn(pg: &tokio_postgres::Client, slot: &str) -> String {
    pg.query_one(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}
