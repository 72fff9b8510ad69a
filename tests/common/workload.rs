//! Fault-test workload: a steady insert load whose rows carry a sequence number, and native
//! clients that record every event they receive and resume with `since` when their socket
//! drops. [`assert_exact`] then checks per user that the received sequence is exactly the
//! committed rows in commit order: no loss, no duplicate, no reordering.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::user_token;

/// Inserts rows at a steady rate from one connection, one statement at a time, so commit
/// order is sequence order. Every fifth statement inserts three rows in one transaction.
/// Survives a database restart: a failed statement is dropped and the connection re-opened.
pub struct Load {
    stop: CancellationToken,
    task: JoinHandle<u64>,
}

impl Load {
    /// Starts inserting for `users` at `per_second` statements per second; `pad` bytes of
    /// filler make rows large.
    pub fn start(url: &str, users: Vec<Uuid>, per_second: u32, pad: usize) -> Load {
        let stop = CancellationToken::new();
        let task = tokio::spawn(insert_loop(
            url.to_string(),
            users,
            per_second,
            "x".repeat(pad),
            stop.clone(),
        ));
        Load { stop, task }
    }

    /// Stops; returns how many statements succeeded.
    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        self.task.await.expect("load task")
    }
}

async fn insert_loop(
    url: String,
    users: Vec<Uuid>,
    per_second: u32,
    pad: String,
    stop: CancellationToken,
) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    let (mut client, mut seq, mut done) = (None, 0_i64, 0_u64);
    for i in 0_usize.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if client
            .as_ref()
            .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
        {
            client = engagement_relay::db::connect(&url).await.ok();
        }
        let Some(c) = &client else { continue };
        let rows = if i % 5 == 4 { 3 } else { 1 };
        let owners: Vec<Uuid> = (0..rows).map(|r| users[(i + r) % users.len()]).collect();
        let seqs: Vec<i64> = (0..rows as i64).map(|r| seq + r).collect();
        seq += rows as i64;
        let inserted = c
            .execute(
                "INSERT INTO public.engagement_events (user_id, event_type, value) \
                 SELECT u, 'app_open', jsonb_build_object('seq', s, 'pad', $3::text) \
                 FROM unnest($1::uuid[], $2::int8[]) AS t(u, s)",
                &[&owners, &seqs, &pad],
            )
            .await;
        match inserted {
            Ok(_) => done += 1,
            Err(_) => client = None,
        }
    }
    done
}

/// The committed rows' sequence numbers per user, in commit order.
pub async fn committed(pg: &tokio_postgres::Client) -> HashMap<Uuid, Vec<i64>> {
    let rows = pg
        .query(
            "SELECT user_id, (value->>'seq')::int8 FROM public.engagement_events \
             WHERE value ? 'seq' ORDER BY 2",
            &[],
        )
        .await
        .expect("committed rows");
    let mut out: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for row in rows {
        out.entry(row.get(0)).or_default().push(row.get(1));
    }
    out
}

/// What a recording client saw.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// `value.seq` of every event, in arrival order.
    pub seqs: Vec<i64>,
    /// Cursor of the last event.
    pub cursor: Option<String>,
    /// Successful upgrades.
    pub connects: usize,
    /// `ready` frames: the subscription exists once one arrived.
    pub readies: usize,
    /// `(complete, replayed)` of every `recovered` frame.
    pub recovered: Vec<(bool, u64)>,
    /// Close codes received.
    pub closes: Vec<u16>,
    /// Events of another user.
    pub leaks: usize,
}

/// A native client for one user that records events and, when `resume` is set, reconnects
/// with `since=<last cursor>` whenever its socket ends.
pub struct Recorder {
    /// The user it subscribes as.
    pub user: Uuid,
    state: Arc<Mutex<Record>>,
    cut: Arc<Notify>,
    go: CancellationToken,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Recorder {
    /// Like [`Recorder::start`], but it reads nothing on its first connection until
    /// [`Recorder::read`]: a consumer that stopped reading.
    pub fn start_paused(addr: watch::Receiver<SocketAddr>, user: Uuid) -> Recorder {
        Self::spawn(addr, user, true, false)
    }

    /// Lets a paused recorder read.
    pub fn read(&self) {
        self.go.cancel();
    }

    /// Starts recording for `user` against the relay address in `addr` (updated when a relay
    /// is replaced).
    pub fn start(addr: watch::Receiver<SocketAddr>, user: Uuid, resume: bool) -> Recorder {
        Self::spawn(addr, user, resume, true)
    }

    fn spawn(addr: watch::Receiver<SocketAddr>, user: Uuid, resume: bool, go: bool) -> Recorder {
        let state = Arc::new(Mutex::new(Record::default()));
        let (cut, stop, gate) = (
            Arc::new(Notify::new()),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        if go {
            gate.cancel();
        }
        let control = Control {
            cut: cut.clone(),
            go: gate.clone(),
            stop: stop.clone(),
        };
        let task = tokio::spawn(record_loop(addr, user, resume, state.clone(), control));
        Recorder {
            user,
            state,
            cut,
            go: gate,
            stop,
            task,
        }
    }

    /// Drops the socket now; it reconnects with its cursor 2 s later.
    pub fn cut(&self) {
        self.cut.notify_one();
    }

    /// What it saw so far.
    pub fn record(&self) -> Record {
        self.state.lock().unwrap().clone()
    }

    /// Waits until `cond` holds for its record (true), or `timeout` passed (false).
    pub async fn wait(&self, timeout: Duration, cond: impl Fn(&Record) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !cond(&self.state.lock().unwrap()) {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Waits until its first subscription exists (the `ready` frame arrived).
    pub async fn subscribed(&self) {
        let ready = self.wait(Duration::from_secs(30), |r| r.readies > 0).await;
        assert!(ready, "{} got no ready frame", self.user);
    }

    /// Stops and returns what it saw.
    pub async fn stop(self) -> Record {
        self.stop.cancel();
        let state = self.state.clone();
        let _ = self.task.await;
        let record = state.lock().unwrap().clone();
        record
    }
}

/// How the test steers a recorder's loop.
struct Control {
    cut: Arc<Notify>,
    go: CancellationToken,
    stop: CancellationToken,
}

enum Ended {
    Cut,
    Closed,
}

async fn record_loop(
    mut addr: watch::Receiver<SocketAddr>,
    user: Uuid,
    resume: bool,
    state: Arc<Mutex<Record>>,
    control: Control,
) {
    let Control { cut, go, stop } = control;
    let token = user_token(user, Duration::from_secs(3600));
    loop {
        let since = state.lock().unwrap().cursor.clone();
        let since = since.map(|c| format!("&since={c}")).unwrap_or_default();
        let url = format!(
            "ws://{}/v1/events?access_token={token}{since}",
            *addr.borrow_and_update()
        );
        let mut ws = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => ws,
            Err(_) => {
                // Down, restarting, or not ready (503) yet.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        state.lock().unwrap().connects += 1;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = go.cancelled() => {}
        }
        let ended = loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                _ = cut.notified() => break Ended::Cut,
                msg = ws.next() => msg,
            };
            match msg {
                Some(Ok(Message::Text(text))) => on_frame(&state, user, &text),
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    state.lock().unwrap().closes.push(code);
                    break Ended::Closed;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break Ended::Closed,
            }
        };
        drop(ws);
        let pause = match ended {
            Ended::Cut => Duration::from_secs(2),
            Ended::Closed => Duration::from_millis(100),
        };
        if !resume {
            stop.cancelled().await;
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

fn on_frame(state: &Mutex<Record>, user: Uuid, text: &str) {
    let frame: Value = serde_json::from_str(text).expect("JSON frame");
    let mut state = state.lock().unwrap();
    match frame["type"].as_str() {
        Some("insert") => {
            if frame["record"]["user_id"] != json!(user.to_string()) {
                state.leaks += 1;
            }
            let seq = frame["record"]["value"]["seq"].as_i64().expect("seq");
            state.seqs.push(seq);
            state.cursor = frame["cursor"].as_str().map(String::from);
        }
        Some("ready") => state.readies += 1,
        Some("recovered") => {
            let complete = frame["complete"].as_bool().expect("complete");
            let replayed = frame["replayed"].as_u64().expect("replayed");
            state.recovered.push((complete, replayed));
        }
        _ => {}
    }
}

/// Asserts that `got` is exactly the committed sequence `expected` of its user (and that it
/// saw nobody else's rows and never had to reload).
pub fn assert_exact(user: Uuid, got: &Record, expected: &[i64]) {
    assert_eq!(got.leaks, 0, "user {user} received another user's rows");
    assert!(
        got.recovered.iter().all(|(complete, _)| *complete),
        "user {user}: a resume was incomplete: {:?}",
        got.recovered
    );
    if got.seqs != expected {
        let first = got.seqs.iter().zip(expected).position(|(a, b)| a != b);
        panic!(
            "user {user}: received {} events, committed {}; first difference at {first:?}\n\
             received: {:?}\ncommitted: {:?}",
            got.seqs.len(),
            expected.len(),
            got.seqs,
            expected
        );
    }
}

/// Stops the load, waits until every recorder has received its user's committed rows (at most
/// `timeout`), stops them, and asserts each sequence exactly. Returns the records.
pub async fn settle(
    pg: &tokio_postgres::Client,
    load: Load,
    recorders: Vec<Recorder>,
    timeout: Duration,
) -> Vec<Record> {
    assert!(load.stop().await > 0, "the load inserted rows");
    let committed = committed(pg).await;
    let mut records = Vec::new();
    for recorder in recorders {
        let expected = committed.get(&recorder.user).cloned().unwrap_or_default();
        let n = expected.len();
        // A shortfall is reported by assert_exact, with the sequences.
        recorder.wait(timeout, |r| r.seqs.len() >= n).await;
        // Anything more would be a duplicate: give it a moment to show up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let user = recorder.user;
        let record = recorder.stop().await;
        assert_exact(user, &record, &expected);
        records.push(record);
    }
    records
}
