//! A real Prometheus for the monitoring tests: finding `prometheus`/`promtool`, running
//! `promtool`, a server on loopback with a temporary TSDB scraping relays, and its HTTP API.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// What to run when the tools are missing.
pub const INSTALL: &str = "sudo apt-get install -y prometheus";
/// Bound on every wait on Prometheus.
pub const WAIT: Duration = Duration::from_secs(60);

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `name` on PATH, or a failure saying how to install it.
pub fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not on PATH; install Prometheus (it ships promtool): {INSTALL}")
        })
}

/// Runs `promtool args` in `dir`; fails with its output unless it succeeds.
pub fn promtool_ok(promtool: &Path, dir: &Path, args: &[&str]) {
    let output = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "`promtool {}` (in {}) failed with {}:\n{}\n{}",
        args.join(" "),
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Prometheus server on 127.0.0.1 with a temporary TSDB, scraping relays every second and
/// evaluating deploy/prometheus/alerts.yml every second. Drop kills it and removes its files.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus `bin` scraping `targets` in job `engagement-relay` (over https
    /// trusting the CA in `ca`, when given); fails the test if it cannot.
    pub async fn start(bin: &Path, targets: &[SocketAddr], ca: Option<&Path>) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "relay-prometheus-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        ));
        fs::create_dir_all(&dir).expect("create the Prometheus temp dir");
        let rules = repo().join("deploy/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: engagement-relay\n    static_configs:\n      \
             - targets: [{targets}]\n{tls}",
            targets = targets
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", "),
            tls = ca.map_or(String::new(), |ca| format!(
                "    scheme: https\n    tls_config:\n      ca_file: {ca:?}\n"
            )),
        );
        fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        // The port is free until released, then could be taken before Prometheus binds it: try a few.
        for _ in 0..3 {
            let port = relay_testkit::free_port().expect("a free port");
            let log = fs::File::create(dir.join("prometheus.log")).expect("log file");
            let mut child = Command::new(bin);
            child
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={}", port.addr()))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log);
            // Held until now: only the instant between release and Prometheus' bind is open.
            let addr = port.release();
            let child = child.spawn().expect("spawn prometheus");
            let mut prometheus = Prometheus {
                child,
                dir: dir.clone(),
                addr,
            };
            if prometheus.wait_ready().await {
                return prometheus;
            }
            // Exited (the port was taken): the guard cleans up the process, not the directory.
            let log = prometheus.log();
            prometheus.dir = PathBuf::new();
            drop(prometheus);
            eprintln!("prometheus exited early, retrying on another port:\n{log}");
        }
        let log = fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
        let _ = fs::remove_dir_all(&dir);
        panic!("prometheus did not start:\n{log}");
    }

    /// True once `/-/ready` answers 200; false if the process exited; fails after [`WAIT`].
    async fn wait_ready(&mut self) -> bool {
        let url = format!("http://{}/-/ready", self.addr);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(r) = reqwest::get(&url).await {
                if r.status() == 200 {
                    return true;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus was not ready within {WAIT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Prometheus's HTTP API (`data` of successful answers; anything else fails the test).
pub struct Api {
    http: reqwest::Client,
    base: String,
    log: PathBuf,
}

impl Api {
    /// A client of `prometheus`'s API.
    pub fn new(prometheus: &Prometheus) -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
            base: format!("http://{}", prometheus.addr),
            log: prometheus.dir.join("prometheus.log"),
        }
    }

    /// `GET path?params`: the `data` of a successful answer.
    pub async fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(params)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()));
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path} {params:?}: not JSON ({e})"));
        assert!(
            status.is_success() && body["status"] == "success",
            "GET {path} {params:?}: {status} {body}"
        );
        body["data"].clone()
    }

    /// An instant query's result vector.
    pub async fn query(&self, promql: &str) -> Value {
        self.get("/api/v1/query", &[("query", promql)]).await["result"].clone()
    }

    /// Every rule of every group.
    pub async fn rules(&self) -> Vec<Value> {
        let data = self.get("/api/v1/rules", &[]).await;
        data["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().expect("rules").clone())
            .collect()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}
