//! Every metric the relay exports: names, units, buckets and descriptions in one place.
//!
//! Names follow Prometheus conventions (`relay_<name>_<unit>[_total]`); label values come from
//! small fixed sets (never a user id). The recorder is process-global: it is installed once and
//! shared by every relay started in the process (tests start several).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram, seconds: commit timestamp of the row's transaction → the frame written to the
/// client's socket (one sample per delivered frame). The 500 ms SLO target is a bucket bound.
pub const DELIVERY_LATENCY: &str = "relay_delivery_latency_seconds";
/// Histogram, seconds: commit timestamp → the row decoded and handed to the router.
pub const REPLICATION_LATENCY: &str = "relay_replication_latency_seconds";
/// Gauge, seconds: the latency target dashboards and alerts compare against (0.5).
pub const SLO_TARGET: &str = "relay_slo_target_seconds";
/// Counter: rows decoded from the slot that the relay streams.
pub const EVENTS_RECEIVED: &str = "relay_events_received_total";
/// Counter: frames carrying an event written to a client socket.
pub const EVENTS_DELIVERED: &str = "relay_events_delivered_total";
/// Counter by `reason` (`slow_consumer`, `session_closed`): events not delivered to a session.
pub const EVENTS_DROPPED: &str = "relay_events_dropped_total";
/// Gauge by `role` (`authenticated`, `service_role`): open WebSocket sessions.
pub const SESSIONS: &str = "relay_sessions";
/// Counter by `code` (the WebSocket close code, e.g. `1001`, `4001`, `4008`): sessions closed by
/// the server.
pub const SESSIONS_CLOSED: &str = "relay_sessions_closed_total";
/// Counter by `reason` (the error code of the refusal): refused tokens.
pub const AUTH_FAILURES: &str = "relay_auth_failures_total";
/// Gauge, 0 or 1: the replication stream is connected and streaming.
pub const REPLICATION_CONNECTED: &str = "relay_replication_connected";
/// Gauge, bytes: server WAL end minus the LSN the relay has processed.
pub const REPLICATION_LAG_BYTES: &str = "relay_replication_lag_bytes";
/// Counter: reconnect attempts after a lost replication connection.
pub const REPLICATION_RECONNECTS: &str = "relay_replication_reconnects_total";
/// Gauge: the LSN (as a number) last reported to PostgreSQL as flushed.
pub const CONFIRMED_FLUSH_LSN: &str = "relay_replication_confirmed_flush_lsn";
/// Gauge: events in the replay window.
pub const REPLAY_WINDOW_EVENTS: &str = "relay_replay_window_events";
/// Gauge, bytes: estimated memory of the replay window (`replay.max_bytes` caps it).
pub const REPLAY_WINDOW_BYTES: &str = "relay_replay_window_bytes";
/// Gauge, seconds: age (by commit timestamp) of the oldest event in the replay window.
pub const REPLAY_OLDEST_AGE: &str = "relay_replay_oldest_age_seconds";
/// Gauge: the configured `replay.window`, in seconds (what the oldest age should reach).
pub const REPLAY_WINDOW: &str = "relay_replay_window_seconds";
/// Counter by `complete` (`true`, `false`): sessions that resumed with `since`.
pub const RESUMES: &str = "relay_resumes_total";
/// Gauge, bytes: WAL the slot keeps on the server (current WAL LSN minus the slot's
/// `restart_lsn`, from `pg_replication_slots`).
pub const SLOT_RETAINED_WAL_BYTES: &str = "relay_slot_retained_wal_bytes";
/// Gauge, bytes: WAL that can still be written before the slot is invalidated by
/// `max_slot_wal_keep_size` (`safe_wal_size`; absent when the setting is unlimited).
pub const SLOT_SAFE_WAL_SIZE_BYTES: &str = "relay_slot_safe_wal_size_bytes";

/// The SLO target in seconds (PRD §8: "Realtime latency < 500 ms from insert to dashboard").
pub const SLO_TARGET_SECONDS: f64 = 0.5;

/// Latency buckets in seconds: 1 ms to 10 s, including the 0.5 s target.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and describes every metric.
///
/// Returns the handle that renders the text exposition for `GET /metrics`. When another
/// recorder was installed first (an embedding application's), a private recorder is used for
/// rendering instead and the relay's metrics go to the embedding recorder.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Setting buckets fails only for an empty list, and LATENCY_BUCKETS is not empty;
            // were it, the default summaries would still be exported.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .ok();
            handle
        })
        .clone()
}

fn describe() {
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Commit timestamp to the event frame written to the client socket."
    );
    describe_histogram!(
        REPLICATION_LATENCY,
        Unit::Seconds,
        "Commit timestamp to the row decoded from the slot and routed."
    );
    describe_gauge!(SLO_TARGET, Unit::Seconds, "Delivery latency target.");
    describe_gauge!(
        REPLAY_WINDOW,
        Unit::Seconds,
        "Configured replay window (replay.window)."
    );
    describe_counter!(EVENTS_RECEIVED, "Rows decoded from the replication slot.");
    describe_counter!(EVENTS_DELIVERED, "Event frames written to client sockets.");
    describe_counter!(
        EVENTS_DROPPED,
        "Events not delivered to a session, by reason."
    );
    describe_gauge!(SESSIONS, "Open WebSocket sessions, by role.");
    describe_counter!(
        SESSIONS_CLOSED,
        "Sessions closed by the server, by close code."
    );
    describe_counter!(AUTH_FAILURES, "Refused tokens, by reason.");
    describe_gauge!(
        REPLICATION_CONNECTED,
        "1 while the replication stream is connected."
    );
    describe_gauge!(
        REPLICATION_LAG_BYTES,
        Unit::Bytes,
        "Server WAL end minus the LSN processed by the relay."
    );
    describe_counter!(REPLICATION_RECONNECTS, "Replication reconnect attempts.");
    describe_gauge!(
        CONFIRMED_FLUSH_LSN,
        "LSN last confirmed to PostgreSQL as flushed."
    );
    describe_gauge!(REPLAY_WINDOW_EVENTS, "Events in the replay window.");
    describe_gauge!(
        REPLAY_WINDOW_BYTES,
        Unit::Bytes,
        "Estimated memory of the replay window."
    );
    describe_gauge!(
        REPLAY_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest event in the replay window."
    );
    describe_counter!(RESUMES, "Sessions resumed with a cursor, by completeness.");
    describe_gauge!(
        SLOT_RETAINED_WAL_BYTES,
        Unit::Bytes,
        "WAL retained by the slot (current LSN minus restart_lsn)."
    );
    describe_gauge!(
        SLOT_SAFE_WAL_SIZE_BYTES,
        Unit::Bytes,
        "WAL that may still be written before max_slot_wal_keep_size invalidates the slot."
    );
    metrics::gauge!(SLO_TARGET).set(SLO_TARGET_SECONDS);
    metrics::gauge!(REPLICATION_CONNECTED).set(0.0);
}
