//! What a session protocol (native, Supabase Realtime) gives the engine and gets from it: the
//! [`Protocol`] trait, its [`Outcome`]s, the [`Opening`] frames and the shared [`Frame`].

use axum::extract::ws::Utf8Bytes;

use super::subscriptions::{Key, Subscriptions};
use super::Close;
use crate::model::Event;
use crate::presence::{Change, Kick};

/// An encoded text frame, shared between the sessions that write the same bytes.
pub type Frame = Utf8Bytes;

/// An event's encoded bytes (the model keeps frames as [`bytes::Bytes`]) as a text frame,
/// without copying. The check for UTF-8 cannot fail for JSON the relay wrote from `String`s;
/// should it, the frame is empty rather than invalid.
pub fn text_frame(bytes: bytes::Bytes) -> Frame {
    Utf8Bytes::try_from(bytes).unwrap_or_default()
}

/// What a protocol asks of the engine after handling a client frame or an expiry: frames to
/// write (in order), then possibly a close.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Frames to write, flushed together.
    pub frames: Vec<Frame>,
    /// The close that ends the session, sent after `frames`.
    pub close: Option<Close>,
}

impl Outcome {
    /// Nothing to write, the session goes on.
    pub fn nothing() -> Outcome {
        Outcome::default()
    }

    /// One frame, the session goes on.
    pub fn reply(frame: Frame) -> Outcome {
        Outcome {
            frames: vec![frame],
            close: None,
        }
    }

    /// Optional frame, then `close`.
    pub fn close(frame: Option<Frame>, close: Close) -> Outcome {
        Outcome {
            frames: frame.into_iter().collect(),
            close: Some(close),
        }
    }
}

/// A client frame the protocol cannot read. (A text frame that is not UTF-8 never reaches the
/// protocol: the engine closes with 1007, RFC 6455 §7.4.1.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// A binary frame (both protocols speak JSON text).
    Binary,
}

impl Unreadable {
    /// What was wrong, for error frames.
    pub fn describe(self) -> &'static str {
        match self {
            Unreadable::Binary => "binary frames are not accepted",
        }
    }
}

/// A session protocol: what differs between the native and the Supabase-compatible endpoint.
pub trait Protocol: Send {
    /// The encoded frame of `event`, which arrived on subscription `key`; `None` skips it
    /// (a binding that does not match, an event a resuming client already has).
    fn encode(&mut self, key: Key, event: &Event) -> Option<Frame>;

    /// Handles a client text frame; may subscribe or unsubscribe.
    fn on_text(&mut self, text: &str, subs: &mut Subscriptions) -> Outcome;

    /// Handles a frame that is not readable text.
    fn on_unreadable(&mut self, what: Unreadable) -> Outcome;

    /// The earliest `exp` (Unix seconds) of the session's token(s), `None` when it holds none.
    fn expires_at(&self) -> Option<i64>;

    /// Ends what has expired: every token whose `exp` is at or before `cutoff` (Unix seconds,
    /// the configured leeway already taken off).
    fn on_expired(&mut self, cutoff: i64, subs: &mut Subscriptions) -> Outcome;

    /// True while the session holds no subscription it authorized on the socket (Realtime: no
    /// joined channel holds a session slot). A session awaiting a join for `limits.join_timeout`
    /// is closed; the wait starts when the socket opens and again whenever it becomes true
    /// after being false (the last channel left). Default: never (the native protocol is
    /// authorized at the upgrade).
    fn awaiting_join(&self) -> bool {
        false
    }

    /// The session was closed from outside (an operator's disconnect, a revocation): what to
    /// write before the close. Default: the close alone.
    fn on_kick(&mut self, kick: &Kick) -> Outcome {
        Outcome::close(None, Close::new(kick.code, kick.reason.clone()))
    }

    /// The frame announcing a presence change to a session that asked for them (`None`:
    /// none). Default: none.
    fn on_presence(&mut self, _change: &Change) -> Option<Frame> {
        None
    }
}

/// Frames to write before the loop starts (the native `ready`, a resume's replay and its
/// `recovered`).
#[derive(Debug, Default)]
pub struct Opening {
    /// Written in order, [`BATCH`](super::engine::BATCH) per flush.
    pub frames: Vec<Frame>,
    /// How many of them are replayed events (counted as delivered, without a latency sample).
    pub replayed: usize,
    /// Presence changes to announce ([`Protocol::on_presence`]): a service-role native
    /// session opened with `presence=true`.
    pub presence: Option<tokio::sync::broadcast::Receiver<Change>>,
}
