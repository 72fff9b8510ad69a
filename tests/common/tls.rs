//! A TLS-only PostgreSQL for the TLS tests: a CA and a server certificate for `localhost` made
//! at start (rcgen), `ssl = on`, and pg_hba.conf refusing TCP without TLS
//! (`hostnossl … reject`). One per test process, shared like [`super::cluster`]; its admin
//! connections use `sslmode=require`.

use std::path::PathBuf;

use relay_testkit::pgcluster::{Cluster, ClusterOptions, ServerTls};
use relay_testkit::tls::TestCa;
use tokio::sync::OnceCell;

use super::{start_cluster, stop_with_this_process};

/// The TLS-only cluster and the CA files tests point `sslrootcert` at.
pub struct TlsCluster {
    /// The cluster (certificate for `localhost` only).
    pub cluster: Cluster,
    /// PEM of the CA that signed the server certificate.
    pub ca_file: PathBuf,
    /// PEM of another CA, which signed nothing the server presents.
    pub other_ca_file: PathBuf,
}

static TLS_CLUSTER: OnceCell<TlsCluster> = OnceCell::const_new();

/// The shared TLS-only cluster, started (with its migrated template) on first use.
pub async fn tls_cluster() -> &'static TlsCluster {
    TLS_CLUSTER
        .get_or_init(|| async {
            let dir = std::env::temp_dir().join(format!("relay-tls-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create the CA dir");
            let ca = TestCa::new("relay test CA").expect("make a CA");
            let other = TestCa::new("some other CA").expect("make another CA");
            let (ca_file, other_ca_file) = (dir.join("ca.crt"), dir.join("other-ca.crt"));
            ca.write(&ca_file).expect("write the CA");
            other.write(&other_ca_file).expect("write the other CA");
            let server = ca.server_cert(&["localhost"]).expect("server certificate");
            let cluster = start_cluster(ClusterOptions {
                tls: Some(ServerTls {
                    cert_pem: server.cert_pem,
                    key_pem: server.key_pem,
                }),
                ..ClusterOptions::default()
            })
            .await;
            stop_with_this_process(&cluster);
            TlsCluster {
                cluster,
                ca_file,
                other_ca_file,
            }
        })
        .await
}

impl TlsCluster {
    /// `postgres://postgres@<host>:<port>/<database>?<params>`.
    pub fn url(&self, host: &str, database: &str, params: &str) -> String {
        let port = self.cluster.port();
        format!("postgres://postgres@{host}:{port}/{database}?{params}")
    }

    /// The URL of `database` at `localhost` with `sslmode=verify-full` and the cluster's CA.
    pub fn verify_full(&self, database: &str) -> String {
        let ca = self.ca_file.display();
        self.url(
            "localhost",
            database,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        )
    }
}
