//! engagement-relay: streams new `engagement_events` rows from a PostgreSQL logical replication
//! slot (pgoutput) to the WebSocket sessions whose JWT `sub` is the row's `user_id`.
//!
//! Pipeline (docs/ARCHITECTURE.md): [`replication`] decodes the slot into [`model::Event`]s and
//! hands them to a [`replication::Dispatch`]: the [`router::Router`] offers each to the bounded queues of its receivers, and each
//! [`session`] task writes the shared, once-encoded frames to its socket.
//!
//! [`start`] runs the whole daemon in-process (tests bind port 0); `src/main.rs` is the CLI.

pub mod auth;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod console;
pub mod db;
pub mod doctor;
pub mod filter;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod monitoring;
pub mod pem;
pub mod presence;
pub mod refused;
mod relay;
pub mod replay;
pub mod replication;
pub mod router;
pub mod session;
pub mod tables;

pub use relay::{shutdown_signal, start, Relay, RelayError};
