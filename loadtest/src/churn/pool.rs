//! The churn's sessions: the held pool (sessions and connects in flight), the task that reads
//! each held session and closes it when told, the presence watchers, and the churn loops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::report::Tally;
use crate::sessions::{self, Live, SessionOutcome, SessionSpec, StopToken, Ws};

/// Longest a connect may take, socket to `ready`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause of a churn loop after a failed connect, so a refusing relay is not spun on.
const FAILURE_PAUSE: Duration = Duration::from_millis(50);
/// A held session: its stop switch and the task reading it (which closes it when stopped).
struct Held {
    stop: StopToken,
    task: JoinHandle<()>,
}

impl Held {
    /// Closes the session (close handshake, at most [`CLOSE_TIMEOUT`]) and waits for it.
    async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The held sessions and the connects in flight that will join them.
struct Pool {
    sessions: Vec<Held>,
    opening: usize,
}

/// What the ramp and the churn loops share.
pub(super) struct Churn {
    /// Per user: the `/v1/events` URL with the user's token, and the user's id.
    users: Vec<(String, String)>,
    relay: SocketAddr,
    /// Sessions held, and connects in flight; the churn keeps `target` of both together.
    held: Mutex<Pool>,
    target: usize,
    /// Events received by held sessions (and those the relay dropped, in `failed`).
    live: Arc<Live>,
    /// Parent of every held session's stop switch.
    all: StopToken,
    next_source: AtomicUsize,
    relay_closed: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Churn {
    /// A pool that keeps `target` sessions of `users` (per user: the `/v1/events` URL with the
    /// user's token, and the user's id) on `relay`.
    pub(super) fn new(
        users: Vec<(String, String)>,
        relay: SocketAddr,
        target: usize,
    ) -> Arc<Churn> {
        Arc::new(Churn {
            users,
            relay,
            held: Mutex::new(Pool {
                sessions: Vec::with_capacity(target),
                opening: 0,
            }),
            target,
            live: Arc::new(Live::default()),
            all: StopToken::new(),
            next_source: AtomicUsize::new(0),
            relay_closed: Mutex::new(BTreeMap::new()),
        })
    }

    /// Sessions held now.
    pub(super) fn held(&self) -> usize {
        lock(&self.held).sessions.len()
    }

    /// Events the held sessions received.
    pub(super) fn received(&self) -> u64 {
        self.live.received.load(Ordering::Relaxed)
    }

    /// Held sessions the relay closed, by close code (`dropped` without one).
    pub(super) fn relay_closed(&self) -> BTreeMap<String, u64> {
        lock(&self.relay_closed).clone()
    }

    /// Ramp: opens session `i` (user `i` round-robin) and holds it.
    pub(super) async fn open_nth(self: &Arc<Self>, i: usize) -> Result<(), String> {
        lock(&self.held).opening += 1;
        self.open(i % self.users.len()).await
    }

    /// Closes every held session (each close bounded); returns how many there were.
    pub(super) async fn close_all(&self) -> usize {
        let held = std::mem::take(&mut lock(&self.held).sessions);
        let n = held.len();
        self.all.cancel();
        for h in held {
            h.close().await;
        }
        n
    }

    /// A session spec for `url` (`user`: index and id) from the next source address.
    pub(super) fn spec(&self, url: String, user: Option<(usize, String)>) -> SessionSpec {
        let i = self.next_source.fetch_add(1, Ordering::Relaxed);
        SessionSpec {
            user: user.as_ref().map(|u| u.0),
            user_id: user.map(|u| u.1),
            url,
            tls: None,
            relay: self.relay,
            source: sessions::source_address(i),
            resume_to: Vec::new(),
        }
    }

    /// Opens a session of `user` (at most [`CONNECT_TIMEOUT`]) and holds it. The caller has
    /// counted it in `opening`.
    async fn open(self: &Arc<Self>, user: usize) -> Result<(), String> {
        let result = self.connect(user).await;
        let mut pool = lock(&self.held);
        pool.opening -= 1;
        let held = result?;
        pool.sessions.push(held);
        Ok(())
    }

    async fn connect(self: &Arc<Self>, user: usize) -> Result<Held, String> {
        let (url, id) = &self.users[user];
        let spec = self.spec(url.clone(), Some((user, id.clone())));
        let (ws, _) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            sessions::open(&spec.url, spec.relay, &spec),
        )
        .await
        .map_err(|_| "timed out before ready".to_string())??;
        let stop = self.all.child_token();
        let task = tokio::spawn(hold(ws, spec, self.clone(), stop.clone()));
        Ok(Held { stop, task })
    }
}

/// Reads a held session until `stop`, then closes it; counts a close by the relay.
async fn hold(mut ws: Ws, spec: SessionSpec, churn: Arc<Churn>, stop: StopToken) {
    let mut out = SessionOutcome::default();
    let mut cursor = None;
    if sessions::serve(&mut ws, &mut out, &spec, &churn.live, &stop, &mut cursor).await {
        let code = out.close_code.map_or("dropped".into(), |c| c.to_string());
        *lock(&churn.relay_closed).entry(code).or_default() += 1;
        return;
    }
    close(&mut ws).await;
}

/// Sends a close frame and reads until the relay closes the connection (at most
/// [`CLOSE_TIMEOUT`]).
async fn close(ws: &mut Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// A service-role `presence=true` session: counts `presence` frames into `frames` until
/// `stop`. `Err` when the relay closed it first.
pub(super) async fn watch(
    mut ws: Ws,
    stop: StopToken,
    frames: Arc<AtomicU64>,
) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            msg = ws.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                if serde_json::from_str::<Kind>(&t).is_ok_and(|k| k.kind == "presence") {
                    frames.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("watcher closed by the relay: {frame:?}"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("watcher: {e}")),
            None => return Err("watcher dropped by the relay".into()),
        }
    }
    close(&mut ws).await;
    Ok(())
}

/// One churn loop until `deadline`: close a random held session (while `target` are held or
/// being opened), open one for a random user.
pub(super) async fn churner(churn: Arc<Churn>, deadline: Instant, seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::new();
    while Instant::now() < deadline {
        let victim = {
            let mut pool = lock(&churn.held);
            let full = pool.sessions.len() + pool.opening >= churn.target;
            pool.opening += 1;
            (full && !pool.sessions.is_empty()).then(|| {
                let i = rng.random_range(0..pool.sessions.len());
                pool.sessions.swap_remove(i)
            })
        };
        if let Some(victim) = victim {
            victim.close().await;
        }
        let user = rng.random_range(0..churn.users.len());
        let started = Instant::now();
        let result = churn.open(user).await;
        tally.record(&result, started.elapsed());
        if result.is_err() {
            tokio::time::sleep(FAILURE_PAUSE).await;
        }
    }
    tally
}
