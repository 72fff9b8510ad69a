//! Native protocol frames (`/v1/events`, PROTOCOL.md "Native protocol").
//!
//! Server → client control frames (`ready`, `recovered`, `error`) are built here; event frames are encoded
//! once per event in [`crate::model`]. Client → server: only `access_token`.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Principal;
use crate::model::Cursor;

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
    let user_id = match principal.role {
        crate::auth::Role::Authenticated => principal.user_id,
        crate::auth::Role::ServiceRole => None,
    };
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
