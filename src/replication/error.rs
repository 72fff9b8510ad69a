//! [`ReplicationError`]: why the replication task stopped streaming, sorted by [`ErrorKind`]
//! into reconnect-and-retry and stop, with the underlying error as its source.

use pgwire_replication::PgWireError;
use tokio_postgres::error::SqlState;

use super::pgoutput::DecodeError;
use crate::catalog::CatalogError;
use crate::db::tls::TlsSettingsError;
use crate::db::{describe, ConnectError};

/// What to do about a [`ReplicationError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reconnect after a backoff: the server restarted, the network dropped, the stream was
    /// restarted on purpose.
    Transient,
    /// Stop the relay: retrying cannot help until someone changes something.
    Definite,
}

/// A replication failure. [`ReplicationError::kind`] says whether to retry; `Display` is one
/// line with what to change where someone must.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// `database.url` cannot be parsed (definite).
    #[error(transparent)]
    Url(#[from] TlsSettingsError),
    /// The SQL connection failed: definite for refused credentials (SQLSTATE class 28), a
    /// missing database (3D000) or a TLS failure (bad TLS settings, a server without TLS, a
    /// certificate that does not verify), else transient.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] ConnectError),
    /// The catalog check failed: definite on a mismatch, transient when a query failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A query on the SQL connection failed (transient).
    #[error("{}", describe(.0))]
    Query(#[source] tokio_postgres::Error),
    /// The slot could not be created for want of a privilege or a free slot (definite).
    #[error("cannot create replication slot `{slot}`: {} ({remedy})", describe(.source))]
    CreateSlot {
        /// `database.slot`.
        slot: String,
        /// What to change.
        remedy: &'static str,
        /// The server's refusal.
        source: tokio_postgres::Error,
    },
    /// The slot has no confirmed position (dropped meanwhile?): transient, the next connect
    /// recreates it.
    #[error("replication slot `{0}` has no confirmed position (dropped meanwhile?)")]
    NoConfirmedPosition(String),
    /// The replication connection failed; the kind follows the server's answer.
    #[error("{source}")]
    Stream {
        /// Transient, or definite for refused authentication and a missing publication.
        kind: ErrorKind,
        /// The replication client's error.
        source: PgWireError,
    },
    /// The slot lost WAL it needed (`max_slot_wal_keep_size`): events are gone for good
    /// (definite).
    #[error("{0}: the slot must be dropped and recreated (events in the gap are lost)")]
    SlotInvalidated(#[source] PgWireError),
    /// What was streamed no longer lines up with the slot (a restore, a failover, another
    /// relay on the slot): transient, the stream and the replay window start over.
    #[error("{0}: restarting the stream and the replay window from the slot")]
    HistoryLost(&'static str),
    /// The server ended the stream (transient).
    #[error("replication stream ended")]
    Ended,
    /// A row change arrived outside a transaction (transient: reconnecting resynchronises).
    #[error("protocol: a row change arrived outside a transaction")]
    RowOutsideTransaction,
    /// A pgoutput message could not be decoded (definite: the same WAL decodes the same).
    #[error("cannot decode a pgoutput message: {0}")]
    Decode(#[source] DecodeError),
}

impl ReplicationError {
    /// Whether to reconnect or stop.
    pub fn kind(&self) -> ErrorKind {
        use ReplicationError as E;
        match self {
            E::Connect(e) => {
                let definite = e.is_tls()
                    || e.code().is_some_and(|c| {
                        c.code().starts_with("28") || *c == SqlState::INVALID_CATALOG_NAME
                    });
                if definite {
                    ErrorKind::Definite
                } else {
                    ErrorKind::Transient
                }
            }
            E::Catalog(CatalogError::Query(_)) => ErrorKind::Transient,
            E::Catalog(CatalogError::Mismatch(_)) => ErrorKind::Definite,
            E::Stream { kind, .. } => *kind,
            E::Query(_)
            | E::NoConfirmedPosition(_)
            | E::HistoryLost(_)
            | E::Ended
            | E::RowOutsideTransaction => ErrorKind::Transient,
            E::Url(_) | E::CreateSlot { .. } | E::SlotInvalidated(_) | E::Decode(_) => {
                ErrorKind::Definite
            }
        }
    }

    /// True when retrying cannot help ([`ErrorKind::Definite`]).
    pub fn is_definite(&self) -> bool {
        self.kind() == ErrorKind::Definite
    }

    /// True when another walsender holds the slot: PostgreSQL's "replication slot … is active
    /// for PID …" (SQLSTATE 55006). In cluster mode that is another node publishing.
    pub fn is_slot_in_use(&self) -> bool {
        matches!(self, ReplicationError::Stream { source: PgWireError::Server(msg), .. }
            if msg.contains("is active for PID"))
    }
}

/// Sorts a replication client error into reconnect-and-retry or stop.
pub(super) fn classify(e: PgWireError) -> ReplicationError {
    let kind = match &e {
        PgWireError::Server(msg)
            if msg.contains("publication") && msg.contains("does not exist") =>
        {
            ErrorKind::Definite
        }
        PgWireError::Auth(_) => ErrorKind::Definite,
        // A certificate that does not verify, a server without TLS, unreadable TLS files: the
        // same next time (a connection lost mid-handshake is an I/O error, transient).
        PgWireError::Tls(msg)
            if [
                "invalid peer certificate",
                "does not support TLS",
                "config error",
            ]
            .iter()
            .any(|m| msg.contains(m)) =>
        {
            ErrorKind::Definite
        }
        PgWireError::Server(msg)
            if msg.contains("invalidated") || msg.contains("can no longer get changes") =>
        {
            return ReplicationError::SlotInvalidated(e)
        }
        _ => ErrorKind::Transient,
    };
    ReplicationError::Stream { kind, source: e }
}
