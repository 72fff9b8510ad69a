//! TLS for clients (`server.tls_cert`/`tls_key`, `metrics.tls_cert`/`tls_key`): `wss://` with a
//! native client and the real realtime-js, `https://` metrics, certificate reload on SIGHUP
//! without dropping sessions, and what a listener serving TLS does with clients that do not
//! speak it. Every certificate comes from a CA made for the test (`relay_testkit::tls`).

use std::path::Path;
use std::time::Duration;

use engagement_relay::config::Config;
use engagement_relay::Relay;
use relay_testkit::RelayProcess;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::common::certs::Certs;
use crate::common::node::NodeClient;
use crate::common::process::{relay_command, PROCESS_WAIT};
use crate::common::{
    assert_at_least, create_user, insert_event, user_token, wait_until, ws, TestDb,
};

const HOUR: Duration = Duration::from_secs(3600);
/// Bound on every wait for the relay's answer (a failure, never a timing assertion).
const WAIT: Duration = Duration::from_secs(20);

/// Sets `server.tls_cert`/`tls_key` to the certificate `server`.
fn server_tls(certs: &Certs) -> impl FnOnce(&mut Config) + '_ {
    move |config| {
        config.server.tls_cert = Some(certs.cert("server"));
        config.server.tls_key = Some(certs.key("server"));
    }
}

/// The certificate a new TLS connection to `addr` is served (its leaf, DER).
async fn peer_certificate(addr: std::net::SocketAddr, certs: &Certs) -> Vec<u8> {
    let connector = TlsConnector::from(certs.ca.client_config().unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (_, session) = tls.get_ref();
    session.peer_certificates().expect("a peer certificate")[0].to_vec()
}

fn wss_url(addr: std::net::SocketAddr, token: &str) -> String {
    format!(
        "wss://localhost:{}/v1/events?access_token={token}",
        addr.port()
    )
}

/// A relay serving TLS with a new CA's certificate (see [`Certs::new`]), a database
/// connection and a user.
async fn tls_relay(tag: &str) -> (Certs, Relay, tokio_postgres::Client, uuid::Uuid) {
    let certs = Certs::new(tag);
    let db = TestDb::new().await;
    let relay = db.relay_with(server_tls(&certs)).await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    (certs, relay, pg, user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_session_receives_an_inserted_event_and_https_health_answers() {
    let (certs, relay, pg, user) = tls_relay("native").await;
    let url = wss_url(relay.server_addr(), &user_token(user, HOUR));
    let (mut client, ready) = ws::connect_tls(&url, certs.ca.client_config().unwrap()).await;
    assert_eq!(ready["user_id"], user.to_string());
    let id = insert_event(&pg, user, "app_open", json!({"over": "tls"})).await;
    let event = client.events(1, WAIT).await.remove(0);
    assert_eq!(event["record"]["id"], id.to_string());
    assert_eq!(event["record"]["value"], json!({"over": "tls"}));
    let health = certs
        .http()
        .get(format!(
            "https://localhost:{}/healthz",
            relay.server_addr().port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_js_joins_and_receives_an_insert_over_wss() {
    let (certs, relay, pg, user) = tls_relay("realtime").await;
    let token = user_token(user, HOUR);
    let url = format!("wss://localhost:{}/realtime/v1", relay.server_addr().port());
    let ca = certs.ca_pem().display().to_string();
    let options = json!({"url": url, "apikey": token, "token": token});
    let mut client =
        NodeClient::start_with_env("realtime", options, &[("NODE_EXTRA_CA_CERTS", &ca)]);
    client.status("SUBSCRIBED").await;
    let id = insert_event(&pg, user, "goal_complete", json!({"goal": "walk"})).await;
    let change = client.changes(1).await.remove(0);
    assert_eq!(change["eventType"], "INSERT");
    assert_eq!(change["new"]["id"], id.to_string());
    client.quit().await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_open_sessions_keep_going() {
    let certs = Certs::new("reload");
    let db = TestDb::new().await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (cert, key) = (certs.cert("server"), certs.key("server"));
    let env = [
        ("RELAY_SERVER__TLS_CERT", cert.to_str().unwrap()),
        ("RELAY_SERVER__TLS_KEY", key.to_str().unwrap()),
    ];
    let mut relay = RelayProcess::start(relay_command(&db, &env)).await.unwrap();
    relay
        .wait_ready_with(&certs.http(), "https", PROCESS_WAIT)
        .await
        .unwrap();
    let first = peer_certificate(relay.addr, &certs).await;
    let url = wss_url(relay.addr, &user_token(user, HOUR));
    let (mut old, _) = ws::connect_tls(&url, certs.ca.client_config().unwrap()).await;

    // A new certificate from another CA replaces the files; SIGHUP.
    let other = Certs::new("reload-next");
    let next = other.ca.issue(2).unwrap();
    next.write(&cert, &key).unwrap();
    relay_testkit::sighup(relay.pid()).unwrap();
    wait_until("the reload is logged", WAIT, || {
        relay.message("SIGHUP: reloaded").is_some()
    })
    .await;
    let served = peer_certificate(relay.addr, &other).await;
    assert_eq!(
        served,
        next.der.to_vec(),
        "a new connection gets the new certificate"
    );
    assert_ne!(served, first);

    // The session opened before the reload still receives events.
    let id = insert_event(&pg, user, "app_open", json!({"after": "reload"})).await;
    let event = old.events(1, WAIT).await.remove(0);
    assert_eq!(event["record"]["id"], id.to_string());

    // A reload that fails (not PEM) keeps the certificate in use and names the file.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    relay_testkit::sighup(relay.pid()).unwrap();
    wait_until("the failed reload is logged", WAIT, || {
        relay
            .message("SIGHUP: TLS certificate not reloaded")
            .is_some()
    })
    .await;
    let failed = relay
        .message("SIGHUP: TLS certificate not reloaded")
        .unwrap();
    assert!(
        failed.contains("server.tls_cert") && failed.contains(cert.to_str().unwrap()),
        "{failed}"
    );
    assert_eq!(
        peer_certificate(relay.addr, &other).await,
        next.der.to_vec()
    );
    let id = insert_event(&pg, user, "app_open", json!({"after": "failed reload"})).await;
    assert_eq!(old.events(1, WAIT).await[0]["record"]["id"], id.to_string());
    let (status, _) = relay.terminate(PROCESS_WAIT).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_serves_https_with_its_own_certificate() {
    let certs = Certs::new("metrics");
    let metrics = certs.issue(7, "metrics");
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|config| {
            config.metrics.tls_cert = Some(certs.cert("metrics"));
            config.metrics.tls_key = Some(certs.key("metrics"));
        })
        .await;
    let url = format!("https://localhost:{}/metrics", relay.metrics_addr().port());
    let scrape = certs.http().get(&url).send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    let text = scrape.text().await.unwrap();
    assert_at_least(
        &text,
        r#"relay_tls_handshakes_total{listener="metrics",result="ok"}"#,
        1.0,
    );
    // rcgen's certificates are valid until 4096: the gauge is the leaf's notAfter, in the future.
    let expiry = crate::common::metric(
        &text,
        r#"relay_tls_certificate_expiry_timestamp_seconds{listener="metrics"}"#,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now,
        "expiry {expiry} is not after now {now}: {text}"
    );
    assert_eq!(
        peer_certificate(relay.metrics_addr(), &certs).await,
        metrics.der.to_vec()
    );
    // The server port stays plain.
    let health = reqwest::get(format!("http://{}/healthz", relay.server_addr()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    relay.shutdown().await.unwrap();
}

/// Reads until the peer closes; what it sent.
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut got))
        .await
        .expect("the relay closes the connection instead of leaving it hanging")
        .ok();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http_to_a_tls_port_is_closed_not_hung() {
    let certs = Certs::new("plain");
    let db = TestDb::new().await;
    let relay: Relay = db.relay_with(server_tls(&certs)).await;
    let mut tcp = TcpStream::connect(relay.server_addr()).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut tcp).await;
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "served in plaintext: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_handshakes_counted(relay, "failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_at_the_header_timeout() {
    let certs = Certs::new("stall");
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|config| {
            server_tls(&certs)(config);
            config.server.header_timeout = Duration::from_millis(500);
        })
        .await;
    // Connected, and silent: no ClientHello.
    let mut tcp = TcpStream::connect(relay.server_addr()).await.unwrap();
    assert!(read_to_close(&mut tcp).await.is_empty());
    assert_handshakes_counted(relay, "timeout").await;
}

/// Asserts the relay counted a server handshake with `result`, then stops it. The count may
/// follow the client's view of the closed connection by a moment: it is waited for.
async fn assert_handshakes_counted(relay: Relay, result: &str) {
    let sample = format!(r#"relay_tls_handshakes_total{{listener="server",result="{result}"}}"#);
    crate::common::wait_until_async(
        "the handshake is counted",
        Duration::from_secs(10),
        || async { crate::common::metric(&crate::common::scrape(&relay).await, &sample) >= 1.0 },
    )
    .await;
    let text = crate::common::scrape(&relay).await;
    assert_at_least(&text, &sample, 1.0);
    relay.shutdown().await.unwrap();
}

/// Runs the relay binary with `env` until it exits (it must, before touching the database);
/// its exit code and stderr.
fn run_relay(env: &[(&str, &Path)]) -> (Option<i32>, String) {
    let output = crate::cli::relay_bin()
        .args(["--jwt-secret", crate::common::SECRET])
        .env("RELAY_LISTEN", "127.0.0.1:0")
        .env("RELAY_METRICS_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unusable_certificate_or_key_stops_the_start_with_one_line_naming_key_and_file() {
    let certs = Certs::new("bad");
    let missing = certs.dir.join("missing.pem");
    certs.issue(3, "other");
    for (env, key, file) in [
        (
            [
                ("RELAY_SERVER__TLS_CERT", missing.as_path()),
                ("RELAY_SERVER__TLS_KEY", &certs.key("server")),
            ],
            "server.tls_cert",
            missing.clone(),
        ),
        (
            [
                ("RELAY_METRICS__TLS_CERT", &certs.cert("server")),
                ("RELAY_METRICS__TLS_KEY", &certs.ca_pem()),
            ],
            "metrics.tls_key",
            certs.ca_pem(),
        ),
        (
            // A key of another certificate.
            [
                ("RELAY_SERVER__TLS_CERT", &certs.cert("server")),
                ("RELAY_SERVER__TLS_KEY", &certs.key("other")),
            ],
            "server.tls_key",
            certs.key("other"),
        ),
    ] {
        let (code, stderr) = run_relay(&env);
        assert_eq!(code, Some(78), "{stderr}");
        let line = stderr.trim();
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(
            line.contains(key) && line.contains(file.to_str().unwrap()),
            "{line}"
        );
    }
    let (code, stderr) = run_relay(&[("RELAY_SERVER__TLS_CERT", &certs.cert("server"))]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("server.tls_key: is required"), "{stderr}");
}
