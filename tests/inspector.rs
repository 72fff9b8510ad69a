//! The inspector page (`server.inspector`, `GET /inspector`): off it does not exist; on, its
//! responses carry the security headers, and in a real browser (Debian's Chromium driven by
//! playwright-core from `tests/js/inspector.mjs`) it connects with a picked token, shows a
//! row within a second with its latency, pauses and resumes, and resumes from the last cursor.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::common::{create_user, service_token, user_token, TestDb};
use engagement_relay::config::{Config, InspectorPreset, Secret};
use engagement_relay::Relay;

const HOUR: Duration = Duration::from_secs(3600);

/// `server.inspector` on with `presets` (label, token).
fn inspector_on(presets: &[(&str, &str)]) -> impl FnOnce(&mut Config) {
    let presets: Vec<InspectorPreset> = presets
        .iter()
        .map(|(label, token)| InspectorPreset {
            label: (*label).to_string(),
            token: Secret::new(*token),
        })
        .collect();
    move |c: &mut Config| {
        c.server.inspector = true;
        c.server.inspector_presets = presets;
    }
}

async fn get(relay: &Relay, path: &str) -> reqwest::Response {
    reqwest::get(format!("http://{}{path}", relay.server_addr()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_is_404_when_off() {
    let db = TestDb::new().await;
    let relay = db.relay().await;
    for path in ["/inspector", "/inspector/app.js", "/inspector/presets.json"] {
        assert_eq!(get(&relay, path).await.status(), 404, "{path}");
    }
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_carry_the_policy_and_presets_only_when_set() {
    let db = TestDb::new().await;
    let relay = db.relay_with(inspector_on(&[])).await;
    for (path, content_type) in [
        ("/inspector", "text/html; charset=utf-8"),
        ("/inspector/app.js", "text/javascript; charset=utf-8"),
        ("/inspector/panels.js", "text/javascript; charset=utf-8"),
        ("/inspector/common.js", "text/javascript; charset=utf-8"),
        ("/inspector/app.css", "text/css; charset=utf-8"),
        ("/inspector/icon.svg", "image/svg+xml"),
    ] {
        let response = get(&relay, path).await;
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(header("content-type"), content_type, "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        let csp = header("content-security-policy");
        assert!(
            csp.starts_with("default-src 'self'; connect-src 'self' ws: wss:"),
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    }
    let page = get(&relay, "/inspector").await.text().await.unwrap();
    assert!(page.contains("\"presets\":false"), "{page}");
    assert!(
        !page.contains("https://"),
        "nothing is fetched from elsewhere"
    );
    assert_eq!(get(&relay, "/inspector/presets.json").await.status(), 404);
    relay.shutdown().await.unwrap();

    let db = TestDb::new().await;
    let relay = db
        .relay_with(inspector_on(&[("alice@example.com", "a.b.c")]))
        .await;
    let response = get(&relay, "/inspector/presets.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let presets: Value = response.json().await.unwrap();
    assert_eq!(
        presets,
        json!([{"label": "alice@example.com", "token": "a.b.c"}])
    );
    relay.shutdown().await.unwrap();
}

/// The Chromium to drive: `RELAY_CHROMIUM`, else Debian's `/usr/bin/chromium`.
fn chromium() -> String {
    let path = std::env::var("RELAY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} not found: run `sudo apt-get install -y chromium` (scripts/test does as root), or set RELAY_CHROMIUM"
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_picked_token_streams_pauses_and_resumes_from_the_last_cursor() {
    let chromium = chromium();
    let db = TestDb::new().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (token, service) = (user_token(user, HOUR), service_token());
    let label = format!("{user}@example.com");
    let relay = db
        .relay_with(inspector_on(&[
            (&label, &token),
            ("service_role", &service),
        ]))
        .await;
    let screenshot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/inspector.png");
    let options = json!({
        "url": format!("http://{}", relay.server_addr()),
        "chromium": chromium,
        "userId": user.to_string(),
        "userToken": token,
        "userLabel": label,
        "serviceToken": service,
        "screenshot": screenshot,
    });
    let result = run_script(&options).await;
    assert_eq!(result["ok"], true, "{result}");
    let appear = result["appear_ms"].as_f64().unwrap();
    assert!(appear <= 1000.0, "the row took {appear} ms");
    let latency = result["latency_ms"].as_f64().unwrap();
    assert!(
        (-1000.0..1000.0).contains(&latency),
        "commit → browser latency {latency} ms"
    );
    assert_eq!(result["missed_text"], "1 arrived while paused (not shown)");
    assert!(
        result["recovered"]
            .as_str()
            .unwrap()
            .starts_with("Recovered: complete, "),
        "{result}"
    );
    assert!(result["sessions_native"].as_u64().unwrap() >= 2, "{result}");
    assert!(std::path::Path::new(screenshot).exists());
    relay.shutdown().await.unwrap();
}

/// Runs `node tests/js/inspector.mjs <options>`, echoing its steps, and returns its last line.
async fn run_script(options: &Value) -> Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
    let mut child = Command::new("node")
        .current_dir(dir)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .args(["inspector.mjs", &options.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (tests/js needs `npm ci`; scripts/test does it)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last = Value::Null;
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("inspector.mjs: {line}");
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v.get("ok").is_some() {
                    last = v;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("inspector.mjs finishes within 120 s");
    let _ = child.wait().await;
    last
}
