//! Database access outside the replication stream: connections (over TLS as `database.url`
//! says, [`tls`]), migrations, the seed.

pub mod conninfo;
pub mod migrate;
pub mod sql_split;
pub mod tls;

use std::fmt;

use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::warn;

use tls::{PeerCertificate, PgTls, SslMode, TlsSettingsError};

/// `database.url` read once: the tokio-postgres settings (TLS parameters taken out, its
/// `sslmode` set from them) and the TLS settings for every connection to it.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: PgTls,
    connector: MakeRustlsConnect,
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("config", &self.config)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    /// Reads `url` (libpq URL or key/value syntax; [`conninfo`]) and the files its TLS
    /// parameters name.
    ///
    /// Errors: one line naming `database.url` and what is wrong with it.
    pub fn parse(url: &str) -> Result<PgTarget, TlsSettingsError> {
        let (rest, params) = conninfo::split(url);
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| TlsSettingsError::new(format!("is not a valid PostgreSQL URL: {e}")))?;
        let tls = PgTls::from_params(&params)?;
        config.ssl_mode(tls.postgres_mode());
        let connector = tls.connector(None)?;
        Ok(PgTarget {
            config,
            tls,
            connector,
        })
    }

    /// The tokio-postgres settings (without the TLS parameters it does not know).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS settings.
    pub fn tls(&self) -> &PgTls {
        &self.tls
    }

    /// The connector every SQL connection to this target uses (the API pool takes it).
    pub fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }

    /// The first host (a name, an address or a socket directory); `127.0.0.1` when none.
    pub fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(path)) => path.to_string_lossy().into_owned(),
            None => "127.0.0.1".to_string(),
        }
    }

    /// The first port (5432 when none).
    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// Opens an SQL connection; the connection task runs in the background until the client is
    /// dropped.
    ///
    /// Errors: [`ConnectError`], one line (TLS failures say so and name the host).
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        self.connect_with(self.connector.clone()).await
    }

    /// [`PgTarget::connect`], also returning the certificate the server presented (none on a
    /// plaintext connection).
    ///
    /// Errors: as [`PgTarget::connect`].
    pub async fn connect_observed(&self) -> Result<(Client, PeerCertificate), ConnectError> {
        let seen = PeerCertificate::default();
        let connector = self.tls.connector(Some(&seen))?;
        Ok((self.connect_with(connector).await?, seen))
    }

    async fn connect_with(&self, connector: MakeRustlsConnect) -> Result<Client, ConnectError> {
        let (client, connection) =
            self.config
                .connect(connector)
                .await
                .map_err(|source| ConnectError::Connect {
                    server: format!("{}:{}", self.host(), self.port()),
                    mode: self.tls.mode(),
                    source,
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!("SQL connection closed: {e}");
            }
        });
        Ok(client)
    }
}

/// `url`'s tokio-postgres settings, the TLS parameters it does not know left out (files are not
/// read: for messages and host checks).
///
/// Errors: tokio-postgres's parse error.
pub fn parse_config(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    conninfo::split(url).0.parse()
}

/// Opens an SQL connection to `url` (libpq URL syntax, TLS parameters included); the
/// connection task runs in the background until the client is dropped.
///
/// Errors: [`ConnectError`]: the URL or its TLS files are bad, or connecting failed.
pub async fn connect(url: &str) -> Result<Client, ConnectError> {
    PgTarget::parse(url)?.connect().await
}

/// Why an SQL connection could not be opened. `Display` is one line; a TLS failure names TLS,
/// the server and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `database.url` or a file it names is bad.
    #[error(transparent)]
    Settings(#[from] TlsSettingsError),
    /// The server could not be reached, refused TLS, failed the handshake or refused the login.
    #[error("{}", connect_failure(server, *mode, source))]
    Connect {
        /// `host:port`.
        server: String,
        /// The effective `sslmode`.
        mode: SslMode,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// The server's SQLSTATE, when it refused the connection (e.g. `28000`, `28P01`).
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            ConnectError::Connect { source, .. } => source.code(),
            ConnectError::Settings(_) => None,
        }
    }

    /// Whether this is a TLS failure (bad settings, no TLS on the server, a failed handshake):
    /// retrying cannot help until someone changes the server or `database.url`.
    pub fn is_tls(&self) -> bool {
        match self {
            ConnectError::Settings(_) => true,
            ConnectError::Connect { source, .. } => {
                rustls_cause(source).is_some() || no_tls_on_server(source)
            }
        }
    }
}

/// The rustls error under a failed handshake, if there is one.
fn rustls_cause(e: &tokio_postgres::Error) -> Option<String> {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let io = cause.downcast_ref::<std::io::Error>();
        let inner = io
            .and_then(|io| io.get_ref())
            .map(|i| i as &dyn std::error::Error);
        if let Some(tls) = inner.unwrap_or(cause).downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        source = cause.source();
    }
    None
}

/// Whether the server answered the SSLRequest with "no" (tokio-postgres's wording).
fn no_tls_on_server(e: &tokio_postgres::Error) -> bool {
    describe(e).contains("server does not support TLS")
}

/// One line for a failed connect to `server` at `mode`.
fn connect_failure(server: &str, mode: SslMode, e: &tokio_postgres::Error) -> String {
    let text = describe(e);
    if no_tls_on_server(e) {
        return format!(
            "server {server} does not support TLS (sslmode={mode}): enable ssl on the server, or lower sslmode in database.url"
        );
    }
    if let Some(cause) = rustls_cause(e) {
        return format!("TLS handshake with {server} failed (sslmode={mode}): {cause}");
    }
    if text.starts_with("error performing TLS handshake") {
        return format!("TLS handshake with {server} failed (sslmode={mode}): {text}");
    }
    let refused_plaintext = e.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        && text.contains("no encryption");
    if refused_plaintext {
        return format!(
            "{text}: the server requires TLS; set sslmode=require or stronger in database.url"
        );
    }
    text
}

/// The server's message when there is one (`ERROR: …`), else the driver's with its causes
/// (`error connecting to server: Connection refused (os error 111)`).
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
