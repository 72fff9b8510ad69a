//! Cluster mode on a real `nats-server -js` (issue 14): relay nodes on one database and one
//! slot. One holds the slot and publishes to JetStream; every node serves its sessions from
//! the stream, with the same frames and cursors.
//!
//! - [`serving`]: nodes serve the same frames, clients spread over three nodes get exactly
//!   their own events, the slot is confirmed on PubAck, a late node rebuilds its window from
//!   the stream (and never calls complete a window that starts inside a transaction), a
//!   graceful stop hands the slot over.
//! - [`failover`]: SIGKILL of the publisher.
//! - [`archive`]: resumes older than a node's in-memory window answered from the stream, and
//!   erasure in the stream.
//! - [`outages`]: `nats-server` restarted, PostgreSQL restarted, and PostgreSQL restarted
//!   while `nats-server` is down, all under load.
//! - [`console`]: presence and admin actions across nodes (issue 16): a user online on every
//!   node, `presence` frames, a disconnect and a revocation issued on one node closing sessions
//!   on the others, a crashed node's users leaving presence within `presence.node_timeout`, a
//!   stopped node's at once.

mod archive;
mod console;
mod failover;
mod outages;
mod serving;
mod support;
