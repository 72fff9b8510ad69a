//! The comparison on its own, then the three checks against real `nats-server` processes: one
//! with JetStream (a missing stream, the relay's own stream, one created by hand with another
//! `max_age` and retention), one without, and a port where nothing listens.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy};
use relay_testkit::nats::{find_nats_server, NatsOptions, NatsServer};

use super::*;
use crate::doctor::report::assert_check;
use crate::doctor::{Options, JETSTREAM, NATS, NATS_STREAM};

const TIMEOUT: Duration = Duration::from_secs(5);

fn config(url: &str, window: Duration) -> Config {
    let mut config = Config::default();
    config.cluster.nats_url = crate::config::Secret::new(url);
    config.replay.window = window;
    config
}

#[test]
fn the_relays_own_stream_passes_and_says_how_big_a_message_is() {
    let wanted = crate::cluster::stream_config(&config("nats://x", Duration::from_secs(300)));
    let check = evaluate(&wanted, &wanted, Some((4, 4096)));
    assert_check(&check, Status::Pass, "max_age 5m, duplicate_window 5m");
    assert!(
        check.detail.contains("about 1024 B per message"),
        "{}",
        check.detail
    );
}

#[test]
fn each_difference_names_the_key_and_both_values() {
    let wanted = crate::cluster::stream_config(&config("nats://x", Duration::from_secs(3600)));
    let mut found = wanted.clone();
    found.max_age = Duration::from_secs(90);
    found.duplicate_window = Duration::from_millis(1500);
    found.num_replicas = 3;
    found.max_bytes = 1 << 20;
    let check = evaluate(&wanted, &found, None);
    assert_check(
        &check,
        Status::Warn,
        "max_age = 1m30s on the server, 1h wanted",
    );
    for part in [
        "duplicate_window = 1.5s on the server, 10m wanted",
        "num_replicas = 3 on the server, 1 wanted",
        "max_bytes = 1048576 on the server, unlimited wanted",
    ] {
        assert!(check.detail.contains(part), "{}", check.detail);
    }
    let fix = check.fix.unwrap_or_default();
    assert!(fix.contains("nats stream edit ENGAGEMENT_RELAY"), "{fix}");
    assert!(fix.contains("--max-age 1h --dupe-window 10m"), "{fix}");
}

#[test]
fn a_retention_or_subjects_the_relay_cannot_use_fail() {
    let wanted = crate::cluster::stream_config(&config("nats://x", Duration::from_secs(300)));
    let mut found = wanted.clone();
    found.retention = RetentionPolicy::Interest;
    let check = evaluate(&wanted, &found, None);
    assert_check(
        &check,
        Status::Fail,
        "retention = interest on the server, limits wanted",
    );
    assert!(check.fix.unwrap_or_default().contains("nats stream rm"));

    let mut found = wanted.clone();
    found.subjects = vec!["other.>".into()];
    let check = evaluate(&wanted, &found, None);
    assert_check(
        &check,
        Status::Fail,
        "subjects = [other.>] on the server, [relay.>] wanted",
    );

    found.subjects = vec!["relay.>".into(), "other.>".into()];
    assert_check(
        &evaluate(&wanted, &found, None),
        Status::Warn,
        "other subjects",
    );
}

#[test]
fn a_missing_stream_warns_unless_it_needs_a_cluster_the_server_is_not_in() {
    let mut c = config("nats://x", Duration::from_secs(300));
    let check = missing(&crate::cluster::stream_config(&c), false);
    assert_check(&check, Status::Warn, "does not exist yet");
    assert!(check
        .fix
        .unwrap_or_default()
        .contains("nats stream add ENGAGEMENT_RELAY"));
    c.cluster.replicas = std::num::NonZeroUsize::new(3).unwrap_or(std::num::NonZeroUsize::MIN);
    let wanted = crate::cluster::stream_config(&c);
    assert_check(
        &missing(&wanted, false),
        Status::Fail,
        "needs a NATS cluster",
    );
    assert_eq!(missing(&wanted, true).status, Status::Warn);
}

#[test]
fn durations_read_as_go_durations() {
    let s = Duration::from_secs;
    assert_eq!(go_duration(s(300)), "5m");
    assert_eq!(go_duration(s(86400)), "24h");
    assert_eq!(go_duration(s(5430)), "1h30m30s");
    assert_eq!(go_duration(Duration::ZERO), "0s");
    assert_eq!(go_duration(Duration::from_millis(250)), "0.25s");
}

async fn nats() -> NatsServer {
    tokio::task::spawn_blocking(|| NatsServer::start(NatsOptions::default()))
        .await
        .expect("spawn_blocking")
        .expect("nats-server starts (apt-get install -y nats-server)")
}

async fn doctor(config: &Config) -> Vec<Check> {
    let options = Options {
        connect_timeout: TIMEOUT,
        ..Options::default()
    };
    checks(config, options.connect_timeout).await
}

fn find<'a>(checks: &'a [Check], id: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no {id} check in {checks:#?}"))
}

#[tokio::test]
async fn a_real_server_missing_stream_warns_and_the_relays_stream_passes() {
    let server = nats().await;
    let config = config(&server.url(), Duration::from_secs(300));
    let checks = doctor(&config).await;
    assert_check(
        find(&checks, NATS),
        Status::Pass,
        "connected to nats-server 2.",
    );
    assert_check(find(&checks, JETSTREAM), Status::Pass, "JetStream enabled");
    assert_check(
        find(&checks, NATS_STREAM),
        Status::Warn,
        "does not exist yet",
    );

    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.create_stream(crate::cluster::stream_config(&config))
        .await
        .expect("create the relay's stream");
    js.publish("relay._begin", bytes::Bytes::from_static(b"x"))
        .await
        .expect("publish")
        .await
        .expect("PubAck");
    let checks = doctor(&config).await;
    assert_check(find(&checks, NATS_STREAM), Status::Pass, "1 messages");
}

#[tokio::test]
async fn a_real_stream_created_with_another_max_age_and_retention_is_reported() {
    let server = nats().await;
    let config = config(&server.url(), Duration::from_secs(3600));
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.create_stream(StreamConfig {
        max_age: Duration::from_secs(120),
        duplicate_window: Duration::from_secs(60),
        retention: RetentionPolicy::WorkQueue,
        ..crate::cluster::stream_config(&config)
    })
    .await
    .expect("create a stream by hand");
    let checks = doctor(&config).await;
    let check = find(&checks, NATS_STREAM);
    assert_check(check, Status::Fail, "max_age = 2m on the server, 1h wanted");
    assert!(
        check
            .detail
            .contains("retention = workqueue on the server, limits wanted"),
        "{}",
        check.detail
    );
}

/// A `nats-server` without `-js`, killed on drop.
struct Plain(Child);

impl Drop for Plain {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_server_without_jetstream_fails_the_jetstream_check() {
    let binary = find_nats_server().expect("nats-server (apt-get install -y nats-server)");
    let port = relay_testkit::free_port().expect("a free port").release();
    let child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.port().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nats-server");
    let _server = Plain(child);
    let url = format!("nats://{port}");
    // Up once it accepts clients (bounded: the check below fails clearly otherwise).
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(port).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let checks = doctor(&config(&url, Duration::from_secs(300))).await;
    assert_check(find(&checks, NATS), Status::Pass, "not clustered");
    assert_check(
        find(&checks, JETSTREAM),
        Status::Fail,
        "JetStream is not enabled",
    );
    assert_eq!(find(&checks, NATS_STREAM).status, Status::Skip);
}

#[tokio::test]
async fn nothing_listening_fails_nats_and_skips_the_rest_without_credentials_in_the_detail() {
    let port = relay_testkit::free_port().expect("a free port").release();
    let url = format!("nats://relay:s3cret@{port}");
    let checks = doctor(&config(&url, Duration::from_secs(300))).await;
    let check = find(&checks, NATS);
    assert_check(
        check,
        Status::Fail,
        &format!("cannot connect to NATS at {port}"),
    );
    assert!(!check.detail.contains("s3cret"), "{}", check.detail);
    assert_eq!(find(&checks, JETSTREAM).status, Status::Skip);
    assert_eq!(find(&checks, NATS_STREAM).status, Status::Skip);

    let bad = doctor(&config("nats://[::1", Duration::from_secs(300))).await;
    assert_check(find(&bad, NATS), Status::Fail, "cluster.nats_url");
}

#[tokio::test]
async fn credentials_in_the_url_are_used_and_wrong_ones_fail_nats() {
    let server = tokio::task::spawn_blocking(|| {
        NatsServer::start(NatsOptions {
            args: vec![
                "--user".into(),
                "relay".into(),
                "--pass".into(),
                "s3cret".into(),
            ],
            ..NatsOptions::default()
        })
    })
    .await
    .expect("spawn_blocking")
    .expect("nats-server starts");
    let at = server.url().replace("nats://", "");
    let good = doctor(&config(
        &format!("nats://relay:s3cret@{at}"),
        Duration::from_secs(300),
    ))
    .await;
    assert_check(find(&good, NATS), Status::Pass, "connected to nats-server");
    assert_check(find(&good, JETSTREAM), Status::Pass, "JetStream enabled");
    let bad = doctor(&config(
        &format!("nats://relay:wrong@{at}"),
        Duration::from_secs(300),
    ))
    .await;
    let check = find(&bad, NATS);
    assert_check(check, Status::Fail, "cannot connect to NATS");
    assert!(!check.detail.contains("wrong"), "{}", check.detail);
}
