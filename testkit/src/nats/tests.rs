//! These start real `nats-server` processes (Debian's 2.9.10 here and in CI).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::*;

/// The first line a NATS server sends a client: `INFO {…}`.
fn info_line(port: u16) -> String {
    let stream = TcpStream::connect((HOST, port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

/// Creates a file-backed JetStream stream over the raw client protocol; returns the API's
/// JSON answer.
fn create_stream(port: u16, name: &str) -> String {
    let mut stream = TcpStream::connect((HOST, port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let config = format!(r#"{{"name":"{name}","subjects":["{name}.>"],"storage":"file"}}"#);
    let request = format!(
        "CONNECT {{\"verbose\":false}}\r\nSUB _INBOX.t 1\r\n\
         PUB $JS.API.STREAM.CREATE.{name} _INBOX.t {}\r\n{config}\r\n",
        config.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "connection closed");
        if line.starts_with("MSG ") {
            line.clear();
            reader.read_line(&mut line).unwrap();
            return line;
        }
        assert!(!line.starts_with("-ERR"), "{line}");
    }
}

fn jsz_streams(server: &NatsServer) -> u64 {
    let (_, body) = monitor::get(server.monitor_port(), "/jsz").unwrap();
    let jsz: serde_json::Value = serde_json::from_str(&body).unwrap();
    jsz["streams"].as_u64().unwrap()
}

#[test]
fn a_server_starts_healthy_with_jetstream_and_its_temp_store_goes_on_drop() {
    let server = NatsServer::start(NatsOptions::default()).unwrap();
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    assert!(server.is_running());
    assert!(server.pid().is_some());
    let info = info_line(server.port());
    assert!(
        info.starts_with("INFO {") && info.contains("\"jetstream\":true"),
        "{info}"
    );
    assert_eq!(
        monitor::get(server.monitor_port(), "/healthz").unwrap().0,
        200
    );
    assert!(server.store_dir().join("jetstream").is_dir());
    let log = fs::read_to_string(server.log_file()).unwrap();
    assert!(log.contains("Server is ready"), "{log}");
    let store = server.store_dir().to_path_buf();
    drop(server);
    assert!(!store.exists(), "temp store removed");
}

#[test]
fn stop_and_restart_keep_the_port_and_the_store() {
    let dir = make_temp_dir().unwrap();
    let opts = NatsOptions {
        store_dir: Some(dir.clone()),
        name: Some("restarted".into()),
        ..NatsOptions::default()
    };
    let mut server = NatsServer::start(opts).unwrap();
    let answer = create_stream(server.port(), "EVENTS");
    assert!(!answer.contains("\"error\""), "{answer}");
    let (port, pid) = (server.port(), server.pid());
    server.stop().unwrap();
    assert!(!server.is_running() && server.pid().is_none());
    assert!(
        TcpStream::connect((HOST, port)).is_err(),
        "stopped: nothing listens"
    );
    server.stop().unwrap(); // stopping a stopped server is fine
    server.restart().unwrap();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), pid);
    assert!(server.is_running());
    assert_eq!(jsz_streams(&server), 1, "the stream survived the restart");
    drop(server);
    assert!(
        dir.join("jetstream").is_dir(),
        "an explicit store dir is kept"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn kill_ends_the_server_at_once() {
    let mut server = NatsServer::start(NatsOptions::default()).unwrap();
    server.kill().unwrap();
    assert!(!server.is_running() && server.pid().is_none());
    assert!(TcpStream::connect((HOST, server.port())).is_err());
    server.kill().unwrap();
    server.restart().unwrap();
    assert!(info_line(server.port()).starts_with("INFO"));
}

#[test]
fn a_taken_explicit_port_is_an_exit_with_the_log() {
    let taken = crate::free_port().unwrap();
    let opts = NatsOptions {
        port: Some(taken.port()),
        ..NatsOptions::default()
    };
    match NatsServer::start(opts) {
        Err(NatsError::Exited { log_tail, .. }) => {
            assert!(log_tail.contains(PORT_TAKEN), "{log_tail}")
        }
        other => panic!("expected Exited, got {other:?}"),
    }
}

#[test]
fn options_nats_server_would_misread_are_refused() {
    let port_zero = NatsOptions {
        port: Some(0),
        ..NatsOptions::default()
    };
    let spaced = NatsOptions {
        name: Some("a b".into()),
        ..NatsOptions::default()
    };
    let nameless_member = NatsOptions {
        cluster: Some(RouteOptions {
            name: CLUSTER_NAME.into(),
            port: 1,
            routes: vec![],
        }),
        ..NatsOptions::default()
    };
    for opts in [port_zero, spaced, nameless_member] {
        let err = NatsServer::start(opts).unwrap_err();
        assert!(matches!(err, NatsError::InvalidOptions(_)), "{err}");
    }
    for n in [0, 17] {
        let err = NatsCluster::start(n).unwrap_err();
        assert!(matches!(err, NatsError::InvalidOptions(_)), "{err}");
    }
}

#[test]
fn a_three_node_cluster_elects_a_meta_leader_and_hands_it_over_on_stop() {
    let mut cluster = NatsCluster::start(3).unwrap();
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.urls().split(',').count(), 3);
    assert_eq!(cluster.urls(), cluster.server_urls().join(","));
    let leader = cluster.meta_leader().unwrap();
    let index = cluster.meta_leader_index().unwrap();
    assert_eq!(
        cluster.server(index).and_then(NatsServer::name),
        Some(&*leader)
    );
    for server in cluster.servers() {
        assert_eq!(server.meta_leader().as_deref(), Some(&*leader));
    }
    assert!(cluster.server(3).is_none());
    let stores: Vec<PathBuf> = cluster
        .servers()
        .iter()
        .map(|s| s.store_dir().into())
        .collect();

    // A stopped leader steps down at once (a killed one would take a ~6 s election).
    cluster.server_mut(index).unwrap().stop().unwrap();
    let new_leader = cluster.wait_ready(Duration::from_secs(20)).unwrap();
    assert_ne!(new_leader, leader);
    cluster.servers_mut()[index].restart().unwrap();
    let after = cluster.wait_ready(Duration::from_secs(20)).unwrap();
    assert_eq!(after, new_leader, "the returning member follows");

    // A killed follower leaves the leader in place and comes back as a follower.
    let follower = (0..3)
        .find(|i| cluster.servers()[*i].name() != Some(&*after))
        .unwrap();
    cluster.servers_mut()[follower].kill().unwrap();
    assert_eq!(cluster.wait_ready(Duration::from_secs(20)).unwrap(), after);
    cluster.servers_mut()[follower].restart().unwrap();
    assert_eq!(cluster.wait_ready(Duration::from_secs(20)).unwrap(), after);
    drop(cluster);
    assert!(stores.iter().all(|s| !s.exists()), "temp stores removed");
}
