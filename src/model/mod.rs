//! The domain model: what flows from the slot to the sessions, and nothing else.
//!
//! A [`Relation`] and its [`Column`]s describe a table as the server's Relation message did; a
//! [`Record`] is a decoded row whose values come from [`text_to_json`]; an [`Event`] is one row
//! change at a [`Cursor`], kept as its once-encoded native frame. Sessions, filters, the replay
//! window and the replication task all speak these types.
//!
//! This module is a leaf: it imports nothing else of the crate and no web framework (encoded
//! frames are [`bytes::Bytes`]), so every other module may depend on it and it on none of them
//! (`tests/module_cycles.rs` checks the whole crate for import cycles).

mod cursor;
mod event;
mod record;
mod relation;
mod values;

pub use cursor::{history_id, Cursor, InvalidCursor};
pub use event::{now_unix_us, row_key, Event, FrameMeta, Operation};
pub use relation::{Column, Record, Relation};
pub use values::{
    format_pg_timestamp_us, format_unix_us, oid, pg_epoch_to_unix_us, text_to_json, type_name,
};
