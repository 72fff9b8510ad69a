//! Erasure in the stream (docs/RETENTION.md §4): when a delete of a row streams through the
//! publisher, that row's earlier messages are erased from JetStream (`STREAM.MSG.DELETE`,
//! which overwrites the stored message), so no resume on any node, now or later, replays
//! them; the delete itself stays, so a resuming client learns the row is gone.
//!
//! - **Who.** Only the node holding the slot: its publisher notes each delete it publishes
//!   ([`Erasures`]); the [`run`] task does the work.
//! - **When.** About a second after a delete (deletes of one user's rows, as
//!   `delete_user_data` makes, are gathered into one pass), and only once JetStream
//!   acknowledged every event up to the delete, so no earlier message of the row is still in
//!   flight.
//! - **How.** One scan of the delete's subject (`<prefix>.<schema>.<table>.<owner>`) per pass,
//!   erasing each insert or update of a deleted row older than its delete.
//! - **Limits.** A publisher killed between a delete's PubAck and the pass leaves that row's
//!   messages until they age out (`max_age`); resumes still skip them
//!   ([`super::archive::Archive::replay`] drops events of rows a later delete removed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::archive::{Archive, Scanned, Stored};
use super::wire;
use crate::metrics as m;
use crate::model::{Cursor, Event, Operation};
use crate::replication::Dispatch;

/// How long deletes are gathered before a pass.
const GATHER: Duration = Duration::from_secs(1);
/// How often a pass waiting for PubAcks looks again, and the pause after a failed pass.
const RETRY: Duration = Duration::from_millis(200);

/// A row to erase: its delete's subject and cursor.
struct Erase {
    subject: String,
    row: u64,
    delete: Cursor,
}

/// Where the publisher notes each delete it publishes, for the [`run`] task.
#[derive(Clone)]
pub struct Erasures {
    tx: mpsc::UnboundedSender<Erase>,
}

impl Erasures {
    /// The noting end, and the receiving end to hand to [`run`].
    pub fn new() -> (Erasures, Receiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Erasures { tx }, Receiver(rx))
    }

    /// Notes `event`, published on `subject`, if it is a delete of a known row.
    pub fn note(&self, subject: &str, event: &Event) {
        if let (Operation::Delete, Some(row)) = (event.operation, event.row) {
            // The task ends only at shutdown; a delete noted then is left to the resume
            // filter ([`super::archive::Archive::replay`]).
            let _ = self.tx.send(Erase {
                subject: subject.to_string(),
                row,
                delete: event.cursor,
            });
        }
    }
}

/// The receiving end of [`Erasures`].
pub struct Receiver(mpsc::UnboundedReceiver<Erase>);

/// Deleted rows by subject: each row with its newest delete.
type Pass = HashMap<String, HashMap<u64, Cursor>>;

/// Erases what `rx` names, a pass at a time, until `stop`; a pass waits until `publisher` has
/// no unacknowledged event up to its newest delete.
pub async fn run(
    archive: Arc<Archive>,
    publisher: Arc<dyn Dispatch>,
    rx: Receiver,
    stop: CancellationToken,
) {
    let mut rx = rx.0;
    let mut pass = Pass::new();
    loop {
        if pass.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                next = rx.recv() => match next {
                    Some(erase) => add(&mut pass, erase),
                    None => return,
                },
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(GATHER) => {}
            }
        }
        while let Ok(erase) = rx.try_recv() {
            add(&mut pass, erase);
        }
        let newest = pass.values().flat_map(|rows| rows.values()).max().copied();
        let acked = newest.is_none_or(|n| publisher.oldest_lsn().is_none_or(|o| o > n.lsn));
        if acked {
            match erase_pass(&archive, &pass).await {
                Ok(erased) => {
                    if erased > 0 {
                        info!(
                            erased,
                            "erased the earlier messages of deleted rows from JetStream"
                        );
                    }
                    pass.clear();
                    continue;
                }
                Err(e) => warn!("erasing deleted rows from JetStream failed ({e}); retrying"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

fn add(pass: &mut Pass, erase: Erase) {
    let rows = pass.entry(erase.subject).or_default();
    let delete = rows.entry(erase.row).or_insert(erase.delete);
    *delete = (*delete).max(erase.delete);
}

/// One scan per subject of `pass`, erasing the older messages of its deleted rows.
///
/// Errors: the first JetStream failure (the pass is tried again whole; erasing twice is
/// harmless).
async fn erase_pass(archive: &Archive, pass: &Pass) -> Result<usize, super::archive::ArchiveError> {
    let mut erased = 0;
    for (subject, rows) in pass {
        let mut doomed = Vec::new();
        let newest = rows.values().max().copied().unwrap_or_default();
        let mut visit = |stored: Stored| {
            if stored.cursor > newest {
                return Ok(false);
            }
            let row = wire::erasable_row(stored.message.headers.as_ref());
            if let Some(delete) = row.and_then(|row| rows.get(&row)) {
                if stored.cursor < *delete {
                    doomed.push(stored.sequence);
                }
            }
            Ok(true)
        };
        if archive.scan(subject, 1, &mut visit).await? == Scanned::Stopped {
            continue;
        }
        for sequence in doomed {
            archive.erase(sequence).await?;
            counter!(m::CLUSTER_ERASED).increment(1);
            erased += 1;
        }
    }
    Ok(erased)
}
