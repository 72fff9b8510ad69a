//! Admin actions across nodes (issue 16; docs/ARCHITECTURE.md, "Presence and admin actions
//! across nodes"): the transport of the console's announcements. A payload (the console's
//! `Action` as JSON; the relay wires [`Control`] as the console's `Peers`) is published on the
//! core NATS subject [`subject`] with the sender's node id in [`NODE_HEADER`]; every node
//! subscribes and hands the other nodes' payloads to its [`Deliver`].
//!
//! Core NATS, not JetStream: a node not connected when an action is published misses it. A
//! missed revocation still reaches it from `relay.revocations` within the console's poll
//! (5 s); a missed disconnect is lost (the user's sessions on that node stay open).
//!
//! This module does not know the console's types: the console reaches the session engine,
//! which reaches the cluster's archive, so the cluster importing the console would be a cycle.

use std::sync::Arc;

use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The header naming the node an announcement comes from (its registry's node id).
pub const NODE_HEADER: &str = "Relay-Node";

/// Applies another node's announcement on this node: its payload, and the sending node's id
/// (`None` when the header is missing).
pub type Deliver = Arc<dyn Fn(&[u8], Option<&str>) + Send + Sync>;

/// The control subject for `cluster.subject_prefix` `prefix`: `<prefix>-control.admin`. Its
/// first token differs from every subject of the event stream (`<prefix>.>`), so JetStream
/// never stores an announcement.
pub fn subject(prefix: &str) -> String {
    format!("{prefix}-control.admin")
}

/// Announces this node's actions to the others (sent in order by one task).
pub struct Control {
    tx: mpsc::UnboundedSender<Bytes>,
}

impl Control {
    /// Publishes `payload` to every other node; best effort (see the module docs).
    pub fn send(&self, payload: Vec<u8>) {
        // The sender ends only at shutdown: an action announced then is not needed elsewhere.
        let _ = self.tx.send(payload.into());
    }
}

/// Subscribes `client` to the control subject of `prefix` and spawns the tasks that hand the
/// other nodes' announcements to `deliver` and publish this node's (`node`: its id), until
/// `stop`. The subscription is made before this returns, so it is in place once the node
/// serves.
///
/// Errors: the subscription could not be made (the client is closed).
pub async fn start(
    client: &Client,
    prefix: &str,
    node: String,
    deliver: Deliver,
    stop: CancellationToken,
) -> Result<Arc<Control>, async_nats::SubscribeError> {
    let subject = subject(prefix);
    let subscriber = client.subscribe(subject.clone()).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(send(
        client.clone(),
        subject,
        node.clone(),
        rx,
        stop.clone(),
    ));
    tokio::spawn(async move {
        let mut subscriber = subscriber;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                message = subscriber.next() => match message {
                    Some(message) => receive(&deliver, &node, &message),
                    None => break,
                },
            }
        }
        let _ = subscriber.unsubscribe().await;
    });
    Ok(Arc::new(Control { tx }))
}

async fn send(
    client: Client,
    subject: String,
    node: String,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    stop: CancellationToken,
) {
    loop {
        let payload = tokio::select! {
            _ = stop.cancelled() => return,
            payload = rx.recv() => match payload {
                Some(payload) => payload,
                None => return,
            },
        };
        let mut headers = HeaderMap::new();
        headers.insert(NODE_HEADER, node.as_str());
        // Queued on the connection (sent once NATS is reachable, within the client's buffer).
        if let Err(e) = client
            .publish_with_headers(subject.clone(), headers, payload)
            .await
        {
            warn!("an admin action was not announced to the other nodes: {e}");
        }
    }
}

/// Hands an announcement of another node to `deliver` (this node's own come back too:
/// skipped).
fn receive(deliver: &Deliver, node: &str, message: &Message) {
    let from = message
        .headers
        .as_ref()
        .and_then(|h| h.get(NODE_HEADER))
        .map(|v| v.as_str());
    if from != Some(node) {
        deliver(&message.payload, from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether NATS subject `subject` matches `filter` (`*` one token, `>` the rest).
    fn matches(filter: &str, subject: &str) -> bool {
        let mut subject = subject.split('.');
        for token in filter.split('.') {
            match (token, subject.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (t, Some(s)) if t == s => {}
                _ => return false,
            }
        }
        subject.next().is_none()
    }

    #[test]
    fn the_control_subject_is_not_captured_by_the_event_stream() {
        for prefix in ["relay", "a.b", "relay-control", "x"] {
            let stream = crate::cluster::wire::all_subjects(prefix);
            let control = subject(prefix);
            assert!(matches(&stream, &format!("{prefix}.s.t.o")), "{stream}");
            assert!(!matches(&stream, &control), "{stream} captures {control}");
        }
        assert_eq!(subject("relay"), "relay-control.admin");
    }
}
