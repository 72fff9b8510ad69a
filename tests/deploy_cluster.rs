//! The worked cluster example in `deploy/cluster/` as shipped: the three `nats-N.conf` pass
//! `nats-server -t`, differ only in `server_name`, and, started for real on this host (their
//! hosts, ports and store dirs moved to loopback and temp dirs, nothing else changed), form a
//! JetStream cluster on which a relay with `deploy/cluster/config.toml`'s `[cluster]` section
//! (the R3 stream) takes the slot and delivers an event with the example's credentials.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::prometheus::repo;
use crate::common::ws::connect;
use crate::common::{create_user, insert_event, user_token, wait_until, wait_until_async, TestDb};
use engagement_relay::config::{Config, Overrides, Secret};
use relay_testkit::nats::find_nats_server;
use serde_json::json;

const T: Duration = Duration::from_secs(30);
const PASSWORD: &str = "deploy-cluster-test";

fn kit() -> PathBuf {
    repo().join("deploy/cluster")
}

fn nats_server() -> PathBuf {
    find_nats_server().expect("nats-server (apt-get install -y nats-server)")
}

/// `nats-server -c <file> -t`: the configuration parses.
fn config_is_valid(file: &Path) {
    let output = Command::new(nats_server())
        .arg("-c")
        .arg(file)
        .arg("-t")
        .env("RELAY_NATS_PASSWORD", PASSWORD)
        .output()
        .expect("run nats-server -t");
    assert!(
        output.status.success(),
        "nats-server -c {} -t failed:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_three_nats_configs_are_valid_and_differ_only_in_server_name() {
    let text = |n: usize| {
        let file = kit().join(format!("nats-{n}.conf"));
        config_is_valid(&file);
        fs::read_to_string(&file).expect("read nats-N.conf")
    };
    let first = text(1);
    for n in 2..=3 {
        assert_eq!(
            text(n)
                .replace(&format!("server {n} of 3"), "server 1 of 3")
                .replace(
                    &format!("nats-{n}.internal (Debian"),
                    "nats-1.internal (Debian"
                )
                .replace(&format!("server_name: nats-{n}"), "server_name: nats-1"),
            first,
            "nats-{n}.conf differs from nats-1.conf beyond its name"
        );
    }
    let config = Config::load(&kit().join("config.toml"), true, &Overrides::default())
        .expect("deploy/cluster/config.toml loads");
    assert_eq!(config.cluster.replicas.get(), 3);
}

/// The three servers, killed on drop.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `text` with `from` replaced by `to`, which must occur.
fn moved(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the example no longer has `{from}`");
    text.replace(from, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_forms_a_nats_cluster_on_which_a_relay_publishes_to_an_r3_stream() {
    let dir = tempdir();
    // Client, monitoring and route port of each server, all on loopback.
    let guards: Vec<_> = (0..9)
        .map(|_| relay_testkit::free_port().expect("a free port"))
        .collect();
    let ports: Vec<u16> = guards.iter().map(|g| g.port()).collect();
    let mut files = Vec::new();
    for n in 1..=3 {
        let text = fs::read_to_string(kit().join(format!("nats-{n}.conf"))).expect("read");
        let p = &ports[(n - 1) * 3..n * 3];
        let store = dir.join(format!("store-{n}"));
        let mut text = moved(&text, "0.0.0.0:4222", &format!("127.0.0.1:{}", p[0]));
        text = moved(&text, "0.0.0.0:8222", &format!("127.0.0.1:{}", p[1]));
        text = moved(&text, "0.0.0.0:6222", &format!("127.0.0.1:{}", p[2]));
        text = moved(&text, "/var/lib/nats", &store.display().to_string());
        for peer in 1..=3 {
            let route = ports[(peer - 1) * 3 + 2];
            text = moved(
                &text,
                &format!("nats-{peer}.internal:6222"),
                &format!("127.0.0.1:{route}"),
            );
        }
        let file = dir.join(format!("nats-{n}.conf"));
        fs::write(&file, text).expect("write the moved config");
        files.push(file);
    }
    drop(guards);
    let mut servers = Servers(Vec::new());
    for (n, file) in files.iter().enumerate() {
        let log = fs::File::create(dir.join(format!("nats-{}.log", n + 1))).expect("log");
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(file)
            .env("RELAY_NATS_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        servers.0.push(child);
    }
    // Plain /healthz is 200 on a member once the cluster has a JetStream meta leader.
    let http = reqwest::Client::new();
    for n in 0..3 {
        let url = format!("http://127.0.0.1:{}/healthz", ports[n * 3 + 1]);
        wait_until_async(&format!("nats-{} is healthy", n + 1), T, || async {
            let answer = http.get(&url).send().await;
            answer.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    let example = Config::load(&kit().join("config.toml"), true, &Overrides::default())
        .expect("deploy/cluster/config.toml loads");
    let urls: Vec<String> = (0..3)
        .map(|n| format!("nats://relay:{PASSWORD}@127.0.0.1:{}", ports[n * 3]))
        .collect();
    let db = TestDb::new().await;
    let relay = db
        .relay_with(|config| {
            config.cluster = example.cluster.clone();
            config.cluster.nats_url = Secret::new(urls.join(","));
        })
        .await;
    wait_until("the relay holds the slot", T, || relay.holds_slot()).await;
    let pg = db.client().await;
    let user = create_user(&pg).await;
    let (mut client, _) = connect(&relay, &user_token(user, Duration::from_secs(3600)), "").await;
    insert_event(&pg, user, "deploy_cluster", json!({})).await;
    assert_eq!(client.events(1, T).await.len(), 1);

    // The stream the relay created has a copy on each of the three servers.
    let servers_of = engagement_relay::cluster::servers(&urls.join(",")).expect("URLs");
    let nats = engagement_relay::cluster::connect_options(&servers_of)
        .connect(servers_of)
        .await
        .expect("connect with the example's credentials");
    let js = async_nats::jetstream::new(nats);
    let mut stream = js.get_stream("ENGAGEMENT_RELAY").await.expect("the stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.config.num_replicas, 3);
    let cluster = info.cluster.clone().expect("a clustered stream");
    assert!(cluster.leader.is_some(), "{cluster:?}");
    assert_eq!(cluster.replicas.len(), 2, "{cluster:?}");
    relay.shutdown().await.expect("relay shutdown");
    drop(servers);
    let _ = fs::remove_dir_all(&dir);
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "relay-deploy-cluster-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    ));
    fs::create_dir_all(&dir).expect("create the temp dir");
    dir
}
