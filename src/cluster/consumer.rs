//! Every node's side: an ordered JetStream consumer on the whole stream that hands each event
//! to the local [`Router`], in stream order, which is commit order.
//!
//! - **Start.** The node rebuilds its replay window from the stream's last `replay.max_events`
//!   messages (not from the slot) and is ready (`/readyz` 200) once it has read up to where
//!   the stream stood when it started. When those messages begin inside a transaction, the
//!   window starts after it (its earlier rows were not read).
//! - **Live.** It stays ready only while connected to NATS and consuming; a standby never
//!   serves stale data as live.
//! - **Begin messages.** One of another WAL history (a restore or failover) starts the window
//!   over: sessions close with 1012 and resume. A publisher's begin in the same history (a
//!   takeover) changes nothing.
//! - **Order guard.** An event whose cursor is not after the last one dispatched (a re-send
//!   older than `cluster.duplicate_window`) is skipped and counted.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::jetstream::stream::Stream;
use async_nats::Client;
use futures_util::StreamExt;
use metrics::{counter, gauge};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::wire::{Decoder, Incoming};
use crate::metrics as m;
use crate::model::{Cursor, Event};
use crate::replication::StreamStatus;
use crate::router::Router;

/// What the consumer works with.
pub struct ConsumerContext {
    /// The NATS connection (its state decides readiness too).
    pub client: Client,
    /// The stream, created or checked at start.
    pub stream: Stream,
    /// Where events go.
    pub router: Arc<Router>,
    /// `/readyz` and the upgrade routes read it.
    pub status: Arc<StreamStatus>,
    /// `replay.max_events`: how many messages a starting node reads back.
    pub rebuild_events: u64,
    /// Cancelled on shutdown.
    pub stop: CancellationToken,
}

/// Where the node stands in the stream.
#[derive(Default)]
struct Position {
    /// The stream sequence of the last message handled.
    sequence: u64,
    /// The WAL history of the router's window (`None` before the first message).
    history: Option<u32>,
    /// The cursor of the last event dispatched.
    last: Option<Cursor>,
    /// The first event read of a transaction whose earlier rows may not have been: the rest
    /// of that transaction stays out of the window.
    partial: Option<Cursor>,
}

/// Consumes until `stop`, reconnecting (from the next sequence) after any failure.
pub async fn run(mut ctx: ConsumerContext) {
    let mut position = Position::default();
    let mut decoder = Decoder::default();
    loop {
        if let Err(e) = consume(&mut ctx, &mut position, &mut decoder).await {
            ctx.status.set_disconnected(&e.to_string());
            warn!("consuming the JetStream stream failed ({e}); retrying in 1s");
        }
        tokio::select! {
            _ = ctx.stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn consume(
    ctx: &mut ConsumerContext,
    position: &mut Position,
    decoder: &mut Decoder,
) -> Result<(), async_nats::Error> {
    let state = ctx.stream.info().await?.state.clone();
    let target = state.last_sequence;
    let start = if position.sequence > 0 {
        position.sequence + 1
    } else {
        (target + 1)
            .saturating_sub(ctx.rebuild_events)
            .max(state.first_sequence)
            .max(1)
    };
    let consumer = ctx
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: ctx.client.new_inbox(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    if position.sequence >= target {
        ready(ctx, target);
    }
    let lag = gauge!(m::CLUSTER_CONSUMER_LAG_EVENTS);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let message = tokio::select! {
            _ = ctx.stop.cancelled() => return Ok(()),
            _ = tick.tick() => {
                let connected = ctx.client.connection_state() == async_nats::connection::State::Connected;
                if !connected && ctx.status.is_connected() {
                    ctx.status.set_disconnected("NATS connection lost");
                } else if connected && !ctx.status.is_connected() && position.sequence >= target {
                    ready(ctx, target);
                }
                continue;
            }
            next = messages.next() => match next {
                Some(message) => message?,
                None => return Err("the consumer ended".into()),
            },
        };
        let info = message.info()?;
        let sequence = info.stream_sequence;
        lag.set(info.pending as f64);
        match decoder.decode(
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload.clone(),
        ) {
            Ok(incoming) => handle(&ctx.router, position, incoming),
            Err(e) => {
                counter!(m::CLUSTER_UNREADABLE).increment(1);
                warn!(sequence, "skipping stream message: {e}");
            }
        }
        position.sequence = sequence;
        if sequence >= target && !ctx.status.is_ready() {
            ready(ctx, target);
        }
    }
}

fn ready(ctx: &ConsumerContext, target: u64) {
    ctx.status.set_connected();
    if !ctx.status.is_rebuilt() {
        ctx.status.set_rebuilt();
        info!(
            sequence = target,
            "replay window rebuilt from JetStream; ready"
        );
    }
}

fn handle(router: &Router, position: &mut Position, incoming: Incoming) {
    match incoming {
        Incoming::Begin { history, lsn } => {
            if position.history != Some(history) {
                router.begin(history, lsn);
                position.history = Some(history);
                position.last = None;
                position.partial = None;
            }
        }
        Incoming::Mark { .. } => {}
        Incoming::Event(event) => {
            let cursor = event.cursor;
            if position.history != Some(cursor.history) {
                // The begin message aged out of the stream, the rebuild started after it
                // (`replay.max_events`), or a new history began without one reaching this
                // node: the window starts here.
                position.history = Some(cursor.history);
                position.last = None;
                position.partial = None;
                if cursor.index == 0 {
                    router.begin(cursor.history, cursor.lsn);
                } else {
                    // Rows of this transaction before it may be in the stream before where
                    // this node started: a window starting at its commit LSN would answer
                    // `complete` to a cursor among them without them. It starts after it.
                    router.begin(cursor.history, cursor.lsn.saturating_add(1));
                    position.partial = Some(cursor);
                    return;
                }
            }
            if position
                .partial
                .is_some_and(|p| p.lsn == cursor.lsn && p.history == cursor.history)
            {
                return;
            }
            if position.last.is_some_and(|last| cursor <= last) {
                counter!(m::CLUSTER_OUT_OF_ORDER).increment(1);
                return;
            }
            position.last = Some(cursor);
            router.dispatch(Arc::new(event) as Arc<Event>);
        }
    }
}
