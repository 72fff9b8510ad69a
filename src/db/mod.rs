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

/// The server's message when there is one (`ERROR: …`), else the driver's.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}
