//! A scratch folder of test certificates (a CA of the test's own and the server certificates it
//! issues), for relays serving TLS (`tests/client_tls.rs`) and Prometheus scraping over https
//! (`tests/prometheus.rs`).

use std::path::PathBuf;

use relay_testkit::tls::{ServerCert, TestCa};

/// A scratch folder of one test's certificate files, removed when dropped.
pub struct Certs {
    /// The folder (removed on drop).
    pub dir: PathBuf,
    /// The CA signing its certificates.
    pub ca: TestCa,
}

impl Certs {
    /// A folder `relay-tls-{tag}-{pid}` with a new CA, its PEM in `ca.pem`, and a server
    /// certificate (serial 1) in `server.pem` / `server.key`.
    pub fn new(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("relay-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Certs {
            dir,
            ca: TestCa::new(&format!("relay test CA {tag}")).unwrap(),
        };
        std::fs::write(certs.ca_pem(), certs.ca.pem()).unwrap();
        certs.issue(1, "server");
        certs
    }

    /// Issues a certificate with `serial` into `<name>.pem` / `<name>.key`.
    pub fn issue(&self, serial: u64, name: &str) -> ServerCert {
        let cert = self.ca.issue(serial).unwrap();
        cert.write(&self.cert(name), &self.key(name)).unwrap();
        cert
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// An HTTP client trusting this CA only.
    pub fn http(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap();
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .unwrap()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
