//! The README's first command: `engagement-relay dev` starts a private PostgreSQL, applies the
//! migrations and the seed, prints a URL whose socket receives live demo events, and Ctrl-C
//! (SIGINT) stops everything, the cluster included, with exit status 0.

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
    let stdout = child.stdout.take().unwrap();
    let url = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.trim()
                    .strip_prefix("connect")
                    .map(|u| u.trim().to_string())
            })
    })
    .await
    .unwrap()
    .expect("dev prints a URL to connect to");

    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let mut types = Vec::new();
    while types.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = msg {
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            types.push(frame["type"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(types, ["ready", "insert"], "a live demo event arrives");

    relay_testkit::sigint(child.id()).expect("SIGINT");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "dev exits 0 on Ctrl-C: {exit:?}");
    assert!(
        !data_dir.join("postmaster.pid").exists(),
        "the private PostgreSQL was stopped"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
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
