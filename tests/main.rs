//! The integration tests, in one binary so that `common` (the harness) compiles once.
//!
//! Tests share one process: the private PostgreSQL cluster of [`common::cluster`] (each test has a
//! database and slot of its own), and the process-global metrics recorder, so a test asserts on
//! metrics its own relay must have produced, never on their absence. A test that stops, restarts
//! or reconfigures PostgreSQL starts a cluster of its own ([`common::private_cluster`]).

// Test code fails loudly: a harness step that cannot go on panics with what it was doing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod analytics;
mod api;
mod api_properties;
mod auth;
mod backup_restore;
mod cli;
mod client_tls;
mod cluster;
mod console;
mod db_health;
mod deletes;
mod deploy_cluster;
mod dev;
mod doctor;
mod engagement_schema;
mod fairness;
mod fault_pg_restart;
mod faults;
mod history;
mod hostile_connections;
mod http;
mod inactive;
mod inspector;
mod jwks;
mod memory;
mod module_cycles;
mod pg_tls;
mod prometheus;
mod realtime_protocol;
mod replication;
mod retention;
mod rls;
mod rollback;
mod routing;
mod seed;
mod session_behaviour;
mod supabase_compat;
mod tables;
