//! Test harness: one shared private PostgreSQL cluster (started on first use, stopped by a
//! watchdog when the test process exits) or a cluster of a test's own ([`private_cluster`]), a
//! fresh database per test cloned from a migrated template, a relay per test on port 0, and real
//! WebSocket clients. The cluster machinery itself is `relay_testkit::pgcluster`.

pub mod certs;
pub mod jwks_server;
pub mod keys;
pub mod node;
pub mod phoenix;
pub mod process;
pub mod prometheus;
pub mod promql;
pub mod sql;
pub mod tls;
pub mod workload;
pub mod ws;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engagement_relay::auth::sign::{public_jwks, SigningKey};
use engagement_relay::auth::{mint, Role};
use engagement_relay::config::{Config, Secret};
use engagement_relay::db;
use engagement_relay::Relay;
use relay_testkit::pgcluster::{running_as_root, Cluster, ClusterOptions};
use tokio::sync::OnceCell;
use tokio_postgres::Client;
use uuid::Uuid;

/// The JWT secret every test relay uses.
pub const SECRET: &str = "test-secret-with-at-least-32-characters!!";
const TEMPLATE: &str = "relay_template";

static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The shared cluster, started (and the template database migrated) on first use. Tests must
/// not stop, restart or reconfigure it: they use [`private_cluster`] for that.
pub async fn cluster() -> &'static Cluster {
    CLUSTER
        .get_or_init(|| async {
            let cluster = start_cluster(ClusterOptions::default()).await;
            stop_with_this_process(&cluster);
            cluster
        })
        .await
}

/// A cluster of the caller's own (with the migrated template), for tests that stop, restart or
/// reconfigure PostgreSQL. Dropping the last `Arc` stops it and removes its files.
pub async fn private_cluster() -> Arc<Cluster> {
    Arc::new(start_cluster(ClusterOptions::default()).await)
}

/// Starts a fast (non-durable) cluster with `options` and migrates the template database on it.
pub(crate) async fn start_cluster(options: ClusterOptions) -> Cluster {
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::start(ClusterOptions {
            fast: true,
            ..options
        })
    })
    .await
    .expect("cluster start task")
    .unwrap_or_else(|e| panic!("cannot start a private PostgreSQL: {e}"));
    let admin = connect(&cluster.url("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {TEMPLATE}"))
        .await
        .expect("create template");
    let mut template = connect(&cluster.url(TEMPLATE)).await;
    db::migrate::migrate(&mut template)
        .await
        .expect("migrations apply");
    cluster
}

/// Spawns a watchdog that stops the cluster and removes its files once this process is gone
/// (statics are never dropped, so `Drop` would not run).
pub(crate) fn stop_with_this_process(cluster: &Cluster) {
    let pg_ctl = cluster.bin_dir().join("pg_ctl");
    let data = cluster.data_dir().display().to_string();
    let as_postgres = if running_as_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         {as_postgres}{pg_ctl} -D '{data}' stop -m immediate >/dev/null 2>&1; rm -rf '{data}'",
        pid = std::process::id(),
        pg_ctl = pg_ctl.display(),
    );
    // Deliberately not waited for: it outlives this process by design.
    let _watchdog = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn cluster watchdog");
    #[allow(clippy::zombie_processes)]
    std::mem::forget(_watchdog);
}

/// Connects as the superuser.
pub async fn connect(url: &str) -> Client {
    db::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// A fresh, migrated database of its own, with a slot name of its own.
pub struct TestDb {
    /// Database name (also the slot name).
    pub name: String,
    /// Superuser URL of the database.
    pub url: String,
}

impl TestDb {
    /// Clones the migrated template of the shared cluster into a new database.
    pub async fn new() -> TestDb {
        TestDb::on(cluster().await).await
    }

    /// Clones the migrated template of `cluster` (the shared one or a [`private_cluster`]) into
    /// a new database.
    pub async fn on(cluster: &Cluster) -> TestDb {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&cluster.url("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .await
            .expect("create test database");
        TestDb {
            url: cluster.url(&name),
            name,
        }
    }

    /// A superuser connection to the database.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// A relay configuration for this database: port 0 listeners, the test secret.
    pub fn config(&self) -> Config {
        let mut config = Config::default();
        config.database.url = Secret::new(self.url.clone());
        config.database.slot = self.name.clone();
        config.database.reconnect_min = Duration::from_millis(100);
        config.database.reconnect_max = Duration::from_secs(1);
        config.database.status_interval = Duration::from_millis(200);
        config.auth.jwt_secret = Secret::new(SECRET);
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.metrics.listen = "127.0.0.1:0".parse().unwrap();
        config.shutdown.grace = Duration::from_secs(5);
        config
    }

    /// Starts a relay on this database and waits until it streams.
    pub async fn relay(&self) -> Relay {
        self.relay_with(|_| {}).await
    }

    /// Starts a relay with an adjusted configuration and waits until it is ready.
    pub async fn relay_with(&self, adjust: impl FnOnce(&mut Config)) -> Relay {
        let mut config = self.config();
        adjust(&mut config);
        let relay = engagement_relay::start(config).await.expect("relay starts");
        wait_until(
            "the relay is ready (stream connected, replay window rebuilt)",
            Duration::from_secs(20),
            || relay.is_ready(),
        )
        .await;
        relay
    }
}

/// Polls `cond` every 20 ms; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_until`], for a condition that must await (a query).
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Inserts a user into `auth.users` and returns its id.
pub async fn create_user(client: &Client) -> Uuid {
    let id = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
            &[&id, &format!("{id}@example.com")],
        )
        .await
        .expect("insert user");
    id
}

/// Inserts an event as the superuser; returns its id.
pub async fn insert_event(
    client: &Client,
    user: Uuid,
    event_type: &str,
    value: serde_json::Value,
) -> Uuid {
    client
        .query_one(
            "INSERT INTO public.engagement_events (user_id, event_type, value) VALUES ($1, $2, $3) RETURNING id",
            &[&user, &event_type, &value],
        )
        .await
        .expect("insert event")
        .get(0)
}

/// A user token for `user` valid for `ttl`.
pub fn user_token(user: Uuid, ttl: Duration) -> String {
    mint(SECRET, Some(user), Role::Authenticated, ttl).unwrap()
}

/// A service-role token valid for an hour.
pub fn service_token() -> String {
    mint(SECRET, None, Role::ServiceRole, Duration::from_secs(3600)).unwrap()
}

/// `GET` on the relay's metrics listener; returns the exposition text.
pub async fn scrape(relay: &Relay) -> String {
    let url = format!("http://{}/metrics", relay.metrics_addr());
    reqwest::get(&url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body")
}

/// Asserts that the sample named exactly `name` (with labels) in `exposition` is at least `n`
/// (tests share the process: counters are compared with `>=`, never for equality).
pub fn assert_at_least(exposition: &str, name: &str, n: f64) {
    let value = metric(exposition, name);
    assert!(value >= n, "{name} is {value}, expected at least {n}");
}

/// The value of the sample named exactly `name` (with labels) in a Prometheus exposition, or 0.
pub fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A relay on `db` that waits 3 s between reconnects, leaving time to move its slot meanwhile.
pub async fn relay_with_slow_reconnects(db: &TestDb) -> Relay {
    db.relay_with(|c| {
        c.database.reconnect_min = Duration::from_secs(3);
        c.database.reconnect_max = Duration::from_secs(3);
    })
    .await
}

/// As if another relay had streamed and confirmed `write` while this one was away: ends the
/// walsender holding `slot`, waits until the slot is free, runs `write` (committed durably, so
/// the slot can advance past it: the test cluster commits asynchronously) and advances the slot
/// to the WAL end.
pub async fn confirm_elsewhere(
    pg: &Client,
    slot: &str,
    write: impl std::future::Future<Output = ()>,
) {
    pg.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .expect("terminate the walsender");
    let free = "SELECT NOT active FROM pg_replication_slots WHERE slot_name = $1";
    wait_until_async("the walsender exits", Duration::from_secs(10), || async {
        pg.query_one(free, &[&slot])
            .await
            .expect("slot state")
            .get::<_, bool>(0)
    })
    .await;
    pg.batch_execute("SET synchronous_commit = on")
        .await
        .expect("synchronous commit");
    write.await;
    pg.execute(
        "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
        &[&slot],
    )
    .await
    .expect("advance the slot");
}
