//! The native protocol (`/v1/events`, README "Native protocol") as an engine [`Protocol`]: one
//! subscription per socket, optionally resumed after a `since` cursor.
//!
//! Server → client control frames (`ready`, `recovered`, `error`) are built here; event frames
//! are encoded once per event in [`crate::model`]. Client → server: only `access_token`.

use std::sync::Arc;

use axum::extract::ws::{Utf8Bytes, WebSocket};
use metrics::counter;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use uuid::Uuid;

use super::engine::{
    self, text_frame, Frame, Key, Opening, Outcome, Protocol, Subscriptions, Unreadable,
};
use super::{
    refresh, Close, RefreshError, SessionContext, CLOSE_IDENTITY, CLOSE_POLICY, CLOSE_TOKEN,
};
use crate::auth::{Principal, Verifier};
use crate::cluster::Archive;
use crate::filter::Interest;
use crate::metrics as m;
use crate::model::{Cursor, Event, InvalidCursor};
use crate::presence::{Change, Kick};
use crate::router::Replay;

/// Runs a native-protocol session until it closes. `interest` narrows the events; `since`
/// (the `since` query parameter, parsed) resumes after that cursor: the missed events, then a
/// `recovered` frame, then live events. A malformed cursor gets an `error` frame and 1008.
/// With `presence` (a service-role session's `presence=true`) the session also gets a
/// `presence` frame whenever a user comes online or goes offline.
pub fn run_native(
    ws: WebSocket,
    ctx: SessionContext,
    principal: Principal,
    interest: Interest,
    since: Option<Result<Cursor, InvalidCursor>>,
    presence: bool,
) -> impl std::future::Future<Output = ()> {
    native(Box::new((ws, ctx, principal, interest, since, presence)))
}

/// The arguments of [`run_native`], boxed (see [`super::unbox`]).
type NativeStart = (
    WebSocket,
    SessionContext,
    Principal,
    Interest,
    Option<Result<Cursor, InvalidCursor>>,
    bool,
);

async fn native(start: Box<NativeStart>) {
    let (ws, ctx, principal, interest, since, presence) = super::unbox(start);
    let session_id = ctx.info.id.clone();
    let since = match since.transpose() {
        Ok(since) => since,
        Err(e) => {
            let text = error("invalid_cursor", &format!("since: {e}"));
            let close = Close::new(CLOSE_POLICY, "invalid cursor");
            return engine::refuse(ws, vec![text], close, &session_id).await;
        }
    };
    // Counted under the user (presence) until the session ends.
    let _joined = ctx.registry.join(&ctx.info, &principal);
    let mut subs = Subscriptions::new(ctx.router.clone(), ctx.info.clone());
    let (_, position, mut replay) = subs.subscribe(&principal, interest.clone(), since, None);
    if let (Some(archive), Some(since), Some(window)) = (&ctx.archive, since, &mut replay) {
        if !window.complete && since < position {
            // Boxed: its state would otherwise size every session's future (~4 KB).
            *window = Box::pin(from_archive(
                archive, &principal, &interest, since, position,
            ))
            .await;
        }
    }
    // The subscription holds its own copy: not kept for the session's life.
    drop(interest);
    debug!(session_id, user_id = ?principal.user_id, role = principal.role.as_str(), "session opened");
    // With `since`, the client holds everything up to its cursor; otherwise the stream starts
    // after the subscription's position.
    let mut opening = Opening {
        frames: vec![ready(&session_id, &principal, since.unwrap_or(position))],
        replayed: 0,
        presence: presence.then(|| ctx.registry.changes()),
    };
    let mut skip = None;
    if let (Some(since), Some(replay)) = (since, replay) {
        opening
            .frames
            .extend(replay.events.iter().map(|e| text_frame(e.native_frame())));
        opening.replayed = replay.events.len();
        // A `since` ahead of this relay's position (another relay issued it): live events up
        // to it are ones the client already has.
        let cursor = match replay.complete && since > position {
            true => {
                skip = Some(since);
                since
            }
            false => position,
        };
        opening
            .frames
            .push(recovered(replay.complete, replay.events.len(), cursor));
    }
    let protocol = Native {
        verifier: ctx.verifier.clone(),
        principal,
        skip,
    };
    engine::run(ws, &ctx, protocol, subs, opening, &session_id).await;
}

/// A cluster node's answer to a resume older than its in-memory window: the owner's events
/// after `since` up to `position` read back from the JetStream stream, `complete:false` when
/// the stream no longer reaches back that far or cannot be read.
async fn from_archive(
    archive: &Archive,
    principal: &Principal,
    interest: &Interest,
    since: Cursor,
    position: Cursor,
) -> Replay {
    let events = match archive
        .replay(principal.owner(), interest, since, position)
        .await
    {
        Ok(events) => events,
        Err(e) => {
            warn!("a resume could not be answered from JetStream ({e})");
            None
        }
    };
    let complete = events.is_some();
    counter!(m::CLUSTER_ARCHIVE_RESUMES, "complete" => if complete { "true" } else { "false" })
        .increment(1);
    Replay {
        complete,
        events: events.unwrap_or_default(),
    }
}

/// A native session's protocol state.
struct Native {
    verifier: Arc<Verifier>,
    principal: Principal,
    /// Live events at or before this cursor are dropped (the client has them).
    skip: Option<Cursor>,
}

impl Protocol for Native {
    fn encode(&mut self, _key: Key, event: &Event) -> Option<Frame> {
        match self.skip {
            Some(skip) if event.cursor <= skip => None,
            _ => Some(text_frame(event.native_frame())),
        }
    }

    fn on_text(&mut self, text: &str, _subs: &mut Subscriptions) -> Outcome {
        let access_token = match parse_client_frame(text) {
            Ok(ClientFrame::AccessToken { access_token }) => access_token,
            Err(reason) => {
                let frame = error("malformed_frame", &reason);
                return Outcome::close(Some(frame), Close::new(CLOSE_POLICY, reason));
            }
        };
        match refresh(&self.verifier, &mut self.principal, &access_token) {
            Ok(()) => Outcome::nothing(),
            Err(e @ RefreshError::IdentityChanged) => Outcome::close(
                Some(error("identity_changed", &e.to_string())),
                Close::new(CLOSE_IDENTITY, "token identity changed"),
            ),
            Err(RefreshError::Invalid(e)) => {
                counter!(m::AUTH_FAILURES, "reason" => e.code()).increment(1);
                Outcome::close(
                    Some(error(e.code(), &e.to_string())),
                    Close::new(CLOSE_TOKEN, "invalid token"),
                )
            }
        }
    }

    fn on_kick(&mut self, kick: &Kick) -> Outcome {
        Outcome::close(
            Some(error(kick.error, &kick.reason)),
            Close::new(kick.code, kick.reason.clone()),
        )
    }

    fn on_presence(&mut self, change: &Change) -> Option<Frame> {
        Some(presence_frame(change))
    }

    fn on_unreadable(&mut self, what: Unreadable) -> Outcome {
        Outcome::close(
            Some(error("malformed_frame", what.describe())),
            Close::new(CLOSE_POLICY, what.describe()),
        )
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.principal.expires_at)
    }

    fn on_expired(&mut self, _cutoff: i64, _subs: &mut Subscriptions) -> Outcome {
        Outcome::close(
            Some(error(
                "token_expired",
                "the access token expired; reconnect with a fresh token",
            )),
            Close::new(CLOSE_TOKEN, "token expired"),
        )
    }
}

/// `{"type":"ready","session_id","user_id","role","cursor"}`: the first frame of a session.
pub fn ready(session_id: &str, principal: &Principal, cursor: Cursor) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Ready<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        session_id: &'a str,
        user_id: Option<Uuid>,
        role: &'static str,
        cursor: String,
    }
    let user_id = principal.owner();
    to_frame(&Ready {
        kind: "ready",
        session_id,
        user_id,
        role: principal.role.as_str(),
        cursor: cursor.to_string(),
    })
}

/// `{"type":"recovered","complete","replayed","cursor"}`: ends the replay of a session opened
/// with `since`. `complete: false` means the window did not reach back to the cursor and the
/// client must reload its history; `cursor` is where the live events that follow begin.
pub fn recovered(complete: bool, replayed: usize, cursor: Cursor) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Recovered {
        #[serde(rename = "type")]
        kind: &'static str,
        complete: bool,
        replayed: usize,
        cursor: String,
    }
    to_frame(&Recovered {
        kind: "recovered",
        complete,
        replayed,
        cursor: cursor.to_string(),
    })
}

/// `{"type":"presence","user_id","online","sessions"}`: a user's first socket opened
/// (`online: true`) or last one closed (`online: false`, `sessions: 0`), over every node.
pub fn presence_frame(change: &Change) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Presence {
        #[serde(rename = "type")]
        kind: &'static str,
        user_id: Uuid,
        online: bool,
        sessions: u32,
    }
    to_frame(&Presence {
        kind: "presence",
        user_id: change.user_id,
        online: change.online,
        sessions: change.sessions,
    })
}

/// `{"type":"error","code","message"}`, sent before a close that has a reason.
pub fn error(code: &str, message: &str) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        code: &'a str,
        message: &'a str,
    }
    to_frame(&Error {
        kind: "error",
        code,
        message,
    })
}

fn to_frame(value: &impl Serialize) -> Utf8Bytes {
    serde_json::to_string(value).unwrap_or_default().into()
}

/// A frame a client may send.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// `{"type":"access_token","access_token":"<jwt>"}`: replaces the session's token; it must
    /// keep the same `sub` and role.
    AccessToken {
        /// The new JWT.
        access_token: String,
    },
}

/// Parses a client text frame. Errors: a human-readable reason for the 1008 close.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, String> {
    serde_json::from_str(text).map_err(|e| format!("malformed client frame: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_or_explain() {
        assert_eq!(
            parse_client_frame(r#"{"type":"access_token","access_token":"t"}"#),
            Ok(ClientFrame::AccessToken {
                access_token: "t".into()
            })
        );
        for bad in [
            "",
            "{}",
            r#"{"type":"subscribe"}"#,
            r#"{"type":"access_token"}"#,
            "[1]",
        ] {
            assert!(parse_client_frame(bad)
                .unwrap_err()
                .starts_with("malformed client frame"));
        }
    }
}

#[cfg(test)]
mod future_size {
    /// The size of the future a function of six arguments returns.
    fn future_size<A, B, C, D, E, G, F>(_: fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open socket holds its session future for its whole life (issue 17): a rare
    /// path's state (a resume from JetStream) is boxed so that it does not size every idle
    /// socket, and the arguments are handed over in a box so that they are not held twice.
    #[test]
    fn a_session_future_stays_small() {
        let size = future_size(super::run_native);
        // 3,208 bytes in a debug build (4,400 before the boxed arguments).
        assert!(size <= 3328, "run_native's future is {size} bytes");
    }
}
