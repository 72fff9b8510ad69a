//! Database access outside the replication stream: connections, migrations, the seed.

pub mod migrate;
pub mod sql_split;

use tokio_postgres::{Client, NoTls};
use tracing::warn;

/// Opens an SQL connection to `url` (libpq URL syntax); the connection task runs in the
/// background until the client is dropped.
///
/// Errors: the driver's error (see [`describe`] for a readable form).
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!("SQL connection closed: {e}");
        }
    });
    Ok(client)
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
