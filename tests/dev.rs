//! The README's first command: `engagement-relay dev` starts a private PostgreSQL, applies the
//! migrations and the seed, prints a URL whose socket receives live demo events, and Ctrl-C
//! (SIGINT) stops everything, the cluster included, with exit status 0. The demo traffic
//! survives a restart of that PostgreSQL (issue 12: it used to log `demo insert failed:
//! connection closed` until exit).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_shows_live_events_and_ctrl_c_stops_everything() {
    let data_dir = std::env::temp_dir().join(format!("relay-dev-test-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_engagement-relay"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "dev",
        ])
        .args(["--demo-rate", "20", "--data-dir"])
        .arg(&data_dir)
        .env_remove("RELAY_JWT_SECRET")
        .env_remove("RELAY_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stop_on_failure = StopOnPanic(child.id());
    let banner = read_banner(child.stdout.take().unwrap()).await;
    let url = banner_urls(&banner, "connect")
        .pop()
        .expect("dev prints a URL to connect to");
    let inspector = banner_urls(&banner, "inspector");
    assert_eq!(inspector.len(), 1, "one inspector URL: {banner:?}");
    assert_inspector_offers_the_demo_tokens(&inspector[0]).await;

    assert_eq!(
        first_frames(&url).await,
        ["ready", "insert"],
        "a live demo event arrives"
    );

    // PostgreSQL restarts under the demo traffic: a new session (live events only) sees demo
    // events again.
    let restart = tokio::task::spawn_blocking({
        let data_dir = data_dir.clone();
        move || pg_ctl_restart(&data_dir)
    });
    restart.await.unwrap();
    assert_eq!(
        first_frames(&url).await,
        ["ready", "insert"],
        "demo events arrive after a PostgreSQL restart"
    );

    stop_dev(child, &data_dir, "dev").await;
}

/// `dev --nodes 2`: a private nats-server and two relay processes in cluster mode; each node
/// prints its own `connect` URL and serves the demo events, and Ctrl-C stops the nodes, NATS
/// and PostgreSQL with exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_nodes_serves_the_demo_on_every_node() {
    let data_dir =
        std::env::temp_dir().join(format!("relay-dev-nodes-test-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_engagement-relay"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "dev",
        ])
        .args(["--nodes", "2", "--demo-rate", "20", "--data-dir"])
        .arg(&data_dir)
        .env_remove("RELAY_JWT_SECRET")
        .env_remove("RELAY_DATABASE_URL")
        .env_remove("RELAY_CLUSTER__NATS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stop_on_failure = StopOnPanic(child.id());
    let banner = read_banner(child.stdout.take().unwrap()).await;
    let urls = banner_urls(&banner, "connect");
    assert_eq!(urls.len(), 2, "one connect URL per node: {urls:?}");
    assert_ne!(urls[0], urls[1], "the nodes listen on different ports");
    let inspectors = banner_urls(&banner, "inspector");
    assert_eq!(
        inspectors.len(),
        2,
        "one inspector URL per node: {banner:?}"
    );
    for inspector in &inspectors {
        assert_inspector_offers_the_demo_tokens(inspector).await;
    }
    for url in &urls {
        assert_eq!(
            first_frames_or_1012(url).await,
            ["ready", "insert"],
            "a live demo event arrives on {url}"
        );
    }

    stop_dev(child, &data_dir, "dev --nodes").await;
}

/// Ctrl-C to `dev` (started as `what`): it exits 0 with its private PostgreSQL stopped; the
/// data directory is removed.
async fn stop_dev(mut child: std::process::Child, data_dir: &std::path::Path, what: &str) {
    relay_testkit::sigint(child.id()).expect("SIGINT");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{what} exits 0 on Ctrl-C: {exit:?}");
    assert!(
        !data_dir.join("postmaster.pid").exists(),
        "the private PostgreSQL was stopped"
    );
    let _ = std::fs::remove_dir_all(data_dir);
}

/// The banner's lines, up to its last (`new token …`), read from `dev`'s stdout.
async fn read_banner(stdout: std::process::ChildStdout) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let end = line.trim().starts_with("new token");
            lines.push(line);
            if end {
                break;
            }
        }
        lines
    })
    .await
    .unwrap()
}

/// The URLs of the banner's `name` lines (`  connect    ws://…`), in order.
fn banner_urls(banner: &[String], name: &str) -> Vec<String> {
    banner
        .iter()
        .filter_map(|l| l.trim().strip_prefix(name))
        .map(|u| u.trim().to_string())
        .collect()
}

/// The inspector page answers at `url`, and its picker offers each seeded user's token by
/// email and the service role's (`server.inspector_presets`, set by `dev`).
async fn assert_inspector_offers_the_demo_tokens(url: &str) {
    let page = reqwest::get(url).await.unwrap();
    assert_eq!(page.status(), 200, "{url}");
    let presets: Vec<serde_json::Value> = reqwest::get(format!("{url}/presets.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let labels: Vec<&str> = presets
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert!(labels.contains(&"alice@example.com"), "{labels:?}");
    assert_eq!(labels.last(), Some(&"service_role"), "{labels:?}");
    assert!(presets
        .iter()
        .all(|p| p["token"].as_str().is_some_and(|t| t.starts_with("eyJ"))));
}

/// The types of the first two frames of a new session on `url`, updates skipped (each within
/// 30 s; the upgrade is retried for 30 s while the relay reconnects and answers 503).
async fn first_frames(url: &str) -> Vec<String> {
    let started = std::time::Instant::now();
    let mut ws = loop {
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => break ws,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("upgrade refused ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no session within 30 s: {e}"),
        }
    };
    frame_types(&mut ws)
        .await
        .unwrap_or_else(|| panic!("{url}: closed with 1012"))
}

/// [`first_frames`], but a session closed with 1012 (the window started over: the client
/// resumes, as the protocol says) is opened again, up to 3 times. A node is ready once it
/// has read the stream, which can be before the publisher's first `begin` message reaches
/// it; that message then restarts the sessions already open.
async fn first_frames_or_1012(url: &str) -> Vec<String> {
    for _ in 0..3 {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        if let Some(types) = frame_types(&mut ws).await {
            return types;
        }
    }
    panic!("{url}: closed with 1012 three times")
}

/// The types of the session's first two text frames (each within 30 s), updates skipped: the
/// demo traffic also moves users' engagement states (updates of `user_engagement_states`),
/// which may come before an insert. `None` when the session is closed with 1012 first.
async fn frame_types(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<Vec<String>> {
    let mut types = Vec::new();
    while types.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame within 30 s");
        match msg {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["type"] != "update" {
                    types.push(frame["type"].as_str().unwrap().to_string());
                }
            }
            Some(Ok(Message::Close(Some(close)))) if u16::from(close.code) == 1012 => return None,
            Some(Ok(_)) => {}
            other => panic!("the session ended: {other:?}"),
        }
    }
    Some(types)
}

/// `pg_ctl restart -m fast` of the dev cluster in `data_dir` (its options come from
/// `postmaster.opts`); as root, as the `postgres` OS user.
fn pg_ctl_restart(data_dir: &std::path::Path) {
    let pg_ctl = relay_testkit::pgcluster::find_bin_dir()
        .unwrap()
        .join("pg_ctl");
    let mut command = if relay_testkit::pgcluster::running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_ctl);
        c
    } else {
        Command::new(pg_ctl)
    };
    let out = command
        .args(["restart", "-w", "-t", "60", "-m", "fast", "-D"])
        .arg(data_dir)
        .arg("-l")
        .arg(data_dir.join("relay-server.log"))
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_ctl restart: {out:?}");
}

/// Sends SIGINT to the dev process if the test fails, so that it stops its private PostgreSQL
/// instead of outliving the test.
struct StopOnPanic(u32);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = relay_testkit::sigint(self.0);
        }
    }
}
