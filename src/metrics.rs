//! Every metric the relay exports: names, units, buckets and descriptions in one place.
//!
//! Names follow Prometheus conventions (`relay_<name>_<unit>[_total]`); label values come from
//! small fixed sets (never a user id). The recorder is process-global: it is installed once and
//! shared by every relay started in the process (tests start several).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{KeyName, SharedString, Unit};
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
/// Gauge, 0 or 1: this cluster node holds the replication slot and publishes to JetStream.
pub const CLUSTER_PUBLISHER: &str = "relay_cluster_publisher";
/// Gauge, 0 or 1: this cluster node consumes the JetStream stream and is caught up (ready).
pub const CLUSTER_CONSUMING: &str = "relay_cluster_consuming";
/// Histogram (s): commit timestamp to the event's PubAck from JetStream (publisher only).
pub const CLUSTER_PUBLISH_SECONDS: &str = "relay_cluster_publish_seconds";
/// Gauge: messages of the stream this node has not read yet (the consumer's pending count).
pub const CLUSTER_CONSUMER_LAG_EVENTS: &str = "relay_cluster_consumer_lag_events";
/// Counter: stream messages skipped because they could not be read back.
pub const CLUSTER_UNREADABLE: &str = "relay_cluster_unreadable_messages_total";
/// Counter: stream events skipped because their cursor was not after the last one dispatched.
pub const CLUSTER_OUT_OF_ORDER: &str = "relay_cluster_out_of_order_total";
/// Counter: stream messages erased because a later delete removed their row (publisher only).
pub const CLUSTER_ERASED: &str = "relay_cluster_erased_total";
/// Counter by `complete` (`true`/`false`): resumes older than the in-memory window, answered
/// from the JetStream stream.
pub const CLUSTER_ARCHIVE_RESUMES: &str = "relay_cluster_archive_resumes_total";
/// Gauge: cluster nodes, this one included, whose presence heartbeat this node has seen within
/// `presence.node_timeout` (0 while the presence bucket cannot be watched; absent with
/// `presence.enabled = false`).
pub const CLUSTER_PRESENCE_NODES: &str = "relay_cluster_presence_nodes";
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
/// Counter by `reason`: events evicted from the replay window: `user_share` (the owner's
/// `replay.max_events_per_user` exceeded), `age` (`replay.window`), `count`
/// (`replay.max_events`), `bytes` (`replay.max_bytes`), `erased` (a streamed delete removed its
/// row's earlier events).
pub const REPLAY_EVICTED: &str = "relay_replay_evicted_total";
/// Counter by `complete` (`true`, `false`): sessions that resumed with `since`.
pub const RESUMES: &str = "relay_resumes_total";
/// Gauge, bytes: WAL the slot keeps on the server (current WAL LSN minus the slot's
/// `restart_lsn`, from `pg_replication_slots`).
pub const SLOT_RETAINED_WAL_BYTES: &str = "relay_slot_retained_wal_bytes";
/// Gauge, bytes: WAL that can still be written before the slot is invalidated by
/// `max_slot_wal_keep_size` (`safe_wal_size`; absent when the setting is unlimited).
pub const SLOT_SAFE_WAL_SIZE_BYTES: &str = "relay_slot_safe_wal_size_bytes";

/// Counter by `reason` (`header_timeout`, `max_pending`, `user_sessions`, `rows`, …; see
/// [`crate::refused::Reason`]): connections, sessions, requests and rows refused to protect the
/// relay or other users.
pub const REFUSED: &str = "relay_refused_total";

/// Counter by `result` (`ok`, `error`): fetches of `auth.jwks_url`.
pub const JWKS_FETCHES: &str = "relay_jwks_fetches_total";
/// Keys in the JWKS in use (`auth.jwks_url` and `auth.jwks_file` merged); absent without one.
pub const JWKS_KEYS: &str = "relay_jwks_keys";
/// Unix time (s) of the last successful fetch of `auth.jwks_url`; absent before the first.
pub const JWKS_LAST_SUCCESS: &str = "relay_jwks_last_success_timestamp_seconds";
/// Counter by `listener` (`server`, `metrics`) and `result` (`ok`; `failed`: not TLS, no
/// common version or cipher, a certificate the client refused; `timeout`: not done within
/// `server.header_timeout`; `evicted`: its pending slot taken, `server.max_pending`): TLS
/// handshakes on a listener with `tls_cert` set.
pub const TLS_HANDSHAKES: &str = "relay_tls_handshakes_total";
/// Gauge by `listener`: Unix time (s) at which the certificate served there expires (its
/// `notAfter`), updated at start and on each SIGHUP reload.
pub const TLS_CERT_EXPIRY: &str = "relay_tls_certificate_expiry_timestamp_seconds";

/// Histogram by `route` (the matched route template, e.g. `/v1/events`; `unmatched` for a path
/// no route serves) and `status_class` (`1xx` for a WebSocket upgrade, `2xx` … `5xx`), seconds:
/// a request on the server port from its head read to its response head (a body streamed after
/// is not timed). Its `_count` counts requests.
pub const HTTP_REQUEST_DURATION: &str = "relay_http_request_duration_seconds";
/// Counter by `route`: requests answered 429 (a request or rows rate limit, a user's or the
/// service role's session cap).
pub const HTTP_RATE_LIMITED: &str = "relay_http_rate_limited_total";
/// Gauge by `state` (`in_use`, `idle`): connections of the API's pool (`ingest.pool_size`),
/// sampled after each API request and on each database health poll.
pub const DB_POOL_CONNECTIONS: &str = "relay_db_pool_connections";
/// Gauge: requests waiting for a connection of the API's pool (then a 503 after
/// `ingest.pool_timeout`).
pub const DB_POOL_WAITING: &str = "relay_db_pool_waiting";
/// Gauge by `table`, bytes: `pg_table_size` of a streamed table (heap, TOAST, free space map;
/// not its indexes), every `monitoring.interval`.
pub const TABLE_SIZE_BYTES: &str = "relay_table_size_bytes";
/// Gauge by `table`, bytes: `pg_indexes_size` of a streamed table.
pub const TABLE_INDEX_SIZE_BYTES: &str = "relay_table_index_size_bytes";
/// Gauge by `table` and `state` (`live`, `dead`): `n_live_tup` / `n_dead_tup` of
/// `pg_stat_user_tables` (estimates maintained by PostgreSQL's statistics).
pub const TABLE_TUPLES: &str = "relay_table_tuples";
/// Counter by `table` and `kind` (`seq`, `index`): `seq_scan` / `idx_scan` of
/// `pg_stat_user_tables`, set to the server's value (it resets with the statistics, which
/// `rate()` and `increase()` treat as a counter reset). `index` is absent for a table without
/// an index.
pub const TABLE_SCANS: &str = "relay_table_scans_total";
/// Counter by `source` (`api`: an insert row-level security refused, answered 403;
/// `token_refresh`: a refreshed token of another `sub` or role): cross-user attempts the relay
/// itself refused.
pub const RLS_DENIALS: &str = "relay_rls_denials_total";
/// The values of [`RLS_DENIALS`]' `source` label.
pub const RLS_SOURCES: [&str; 2] = ["api", "token_refresh"];

/// Counter by `action` (`disconnect`, `revoke`) and `outcome` (`ok`, `error`): admin actions
/// taken on this node (issue 16; each also written to `relay.audit_log`).
pub const ADMIN_ACTIONS: &str = "relay_admin_actions_total";
/// Gauge: users online (any node) as this node sees them.
pub const PRESENCE_ONLINE_USERS: &str = "relay_presence_online_users";
/// Gauge: token revocations in force on this node.
pub const REVOCATIONS: &str = "relay_revocations";
/// Counter: sessions closed from outside, by `reason` (`disconnect`, `revoked`).
pub const SESSIONS_KICKED: &str = "relay_sessions_kicked_total";

/// The SLO target in seconds (PRD §8: "Realtime latency < 500 ms from insert to dashboard").
pub const SLO_TARGET_SECONDS: f64 = 0.5;

/// Latency buckets in seconds: 1 ms to 10 s, including the 0.5 s target.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The Prometheus process collector: `process_resident_memory_bytes`, `process_open_fds`,
/// `process_max_fds`, `process_cpu_seconds_total`, `process_threads`, … (the names of the
/// Prometheus client libraries' process collector), sampled on each scrape ([`render`]).
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// The text exposition for `GET /metrics`: samples the process metrics, then renders every
/// metric.
pub fn render(handle: &PrometheusHandle) -> String {
    if let Some(process) = PROCESS.get() {
        process.collect();
    }
    handle.render()
}

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
            let process = PROCESS.get_or_init(metrics_process::Collector::default);
            process.describe();
            process.collect();
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

/// The kind of a metric, which decides how the recorder is told about it.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric with its kind, unit (where it has one) and description.
#[rustfmt::skip]
const DESCRIPTIONS: &[(Kind, &str, Option<Unit>, &str)] = &[
    (Histogram, DELIVERY_LATENCY, Some(Unit::Seconds), "Commit timestamp to the event frame written to the client socket."),
    (Histogram, REPLICATION_LATENCY, Some(Unit::Seconds), "Commit timestamp to the row decoded from the slot and routed."),
    (Gauge, SLO_TARGET, Some(Unit::Seconds), "Delivery latency target."),
    (Gauge, REPLAY_WINDOW, Some(Unit::Seconds), "Configured replay window (replay.window)."),
    (Counter, EVENTS_RECEIVED, None, "Rows decoded from the replication slot."),
    (Counter, EVENTS_DELIVERED, None, "Event frames written to client sockets."),
    (Counter, EVENTS_DROPPED, None, "Events not delivered to a session, by reason."),
    (Gauge, SESSIONS, None, "Open WebSocket sessions, by role."),
    (Counter, SESSIONS_CLOSED, None, "Sessions closed by the server, by close code."),
    (Counter, AUTH_FAILURES, None, "Refused tokens, by reason."),
    (Gauge, TLS_CERT_EXPIRY, Some(Unit::Seconds), "Unix time at which the certificate served by a TLS listener expires, by listener."),
    (Counter, TLS_HANDSHAKES, None, "TLS handshakes on the listeners serving TLS, by listener and result (ok, failed, timeout, evicted)."),
    (Counter, REFUSED, None, "Connections, sessions, requests and rows refused under load, by reason."),
    (Gauge, REPLICATION_CONNECTED, None, "1 while the replication stream is connected."),
    (Gauge, CLUSTER_PUBLISHER, None, "1 while this cluster node holds the replication slot and publishes to JetStream."),
    (Gauge, CLUSTER_CONSUMING, None, "1 while this cluster node consumes the JetStream stream and is caught up."),
    (Histogram, CLUSTER_PUBLISH_SECONDS, Some(Unit::Seconds), "Commit timestamp to the event's PubAck from JetStream."),
    (Gauge, CLUSTER_CONSUMER_LAG_EVENTS, None, "Stream messages this cluster node has not read yet."),
    (Counter, CLUSTER_UNREADABLE, None, "Stream messages skipped because they could not be read back."),
    (Counter, CLUSTER_OUT_OF_ORDER, None, "Stream events skipped because their cursor was not after the last one dispatched."),
    (Counter, CLUSTER_ERASED, None, "Stream messages erased because a later delete removed their row."),
    (Counter, CLUSTER_ARCHIVE_RESUMES, None, "Resumes older than the in-memory window answered from the JetStream stream, by completeness."),
    (Gauge, CLUSTER_PRESENCE_NODES, None, "Cluster nodes, this one included, whose presence heartbeat was seen within presence.node_timeout."),
    (Gauge, REPLICATION_LAG_BYTES, Some(Unit::Bytes), "Server WAL end minus the LSN processed by the relay."),
    (Counter, REPLICATION_RECONNECTS, None, "Replication reconnect attempts."),
    (Gauge, CONFIRMED_FLUSH_LSN, None, "LSN last confirmed to PostgreSQL as flushed."),
    (Gauge, REPLAY_WINDOW_EVENTS, None, "Events in the replay window."),
    (Gauge, REPLAY_WINDOW_BYTES, Some(Unit::Bytes), "Estimated memory of the replay window."),
    (Gauge, REPLAY_OLDEST_AGE, Some(Unit::Seconds), "Age of the oldest event in the replay window."),
    (Counter, REPLAY_EVICTED, None, "Events evicted from the replay window, by reason (user_share, age, count, bytes, erased)."),
    (Counter, RESUMES, None, "Sessions resumed with a cursor, by completeness."),
    (Counter, JWKS_FETCHES, None, "Fetches of auth.jwks_url, by result (ok, error)."),
    (Gauge, JWKS_KEYS, None, "Keys in the JWKS in use (auth.jwks_url and auth.jwks_file merged)."),
    (Gauge, JWKS_LAST_SUCCESS, Some(Unit::Seconds), "Unix time of the last successful fetch of auth.jwks_url."),
    (Gauge, SLOT_RETAINED_WAL_BYTES, Some(Unit::Bytes), "WAL retained by the slot (current LSN minus restart_lsn)."),
    (Gauge, SLOT_SAFE_WAL_SIZE_BYTES, Some(Unit::Bytes), "WAL that may still be written before max_slot_wal_keep_size invalidates the slot."),
    (Histogram, HTTP_REQUEST_DURATION, Some(Unit::Seconds), "Server-port HTTP requests, head read to response head, by route template and status class."),
    (Counter, HTTP_RATE_LIMITED, None, "HTTP requests answered 429, by route template."),
    (Gauge, DB_POOL_CONNECTIONS, None, "Connections of the API's pool, by state (in_use, idle)."),
    (Gauge, DB_POOL_WAITING, None, "Requests waiting for a connection of the API's pool."),
    (Gauge, TABLE_SIZE_BYTES, Some(Unit::Bytes), "pg_table_size of a streamed table."),
    (Gauge, TABLE_INDEX_SIZE_BYTES, Some(Unit::Bytes), "pg_indexes_size of a streamed table."),
    (Gauge, TABLE_TUPLES, None, "Live and dead tuples of a streamed table (pg_stat_user_tables), by state."),
    (Counter, TABLE_SCANS, None, "Sequential and index scans of a streamed table (pg_stat_user_tables), by kind (seq, index)."),
    (Counter, RLS_DENIALS, None, "Cross-user attempts refused by the relay, by source (api, token_refresh)."),
    (Counter, ADMIN_ACTIONS, None, "Admin actions taken on this node, by action (disconnect, revoke) and outcome (ok, error)."),
    (Gauge, PRESENCE_ONLINE_USERS, None, "Users online on any node, as this node sees them."),
    (Gauge, REVOCATIONS, None, "Token revocations in force on this node."),
    (Counter, SESSIONS_KICKED, None, "Sessions on this node closed from outside, by reason (disconnect, revoked)."),
];

/// Exports the metrics of the relay's mode at their resting values, so that they exist from
/// the start (alerts and dashboards see a 0, not a missing series): on a single node
/// `relay_replication_connected` 0; on a cluster node (`cluster`) `relay_cluster_publisher`,
/// `relay_cluster_consuming` and `relay_cluster_consumer_lag_events` 0 and the skip counters.
///
/// A cluster node never exports `relay_replication_connected`: whether it holds the slot is
/// `relay_cluster_publisher`, and a standby does not hold it by design, so the single-node
/// "replication disconnected" alert must not see it (docs/OPERATIONS.md, "Cluster mode").
pub fn export_mode(cluster: bool) {
    if cluster {
        metrics::gauge!(CLUSTER_PUBLISHER).set(0.0);
        metrics::gauge!(CLUSTER_CONSUMING).set(0.0);
        metrics::gauge!(CLUSTER_CONSUMER_LAG_EVENTS).set(0.0);
        metrics::counter!(CLUSTER_UNREADABLE).increment(0);
        metrics::counter!(CLUSTER_OUT_OF_ORDER).increment(0);
    } else {
        metrics::gauge!(REPLICATION_CONNECTED).set(0.0);
    }
}

fn describe() {
    metrics::with_recorder(|recorder| {
        for &(kind, name, unit, description) in DESCRIPTIONS {
            let (key, text) = (
                KeyName::from_const_str(name),
                SharedString::const_str(description),
            );
            match kind {
                Counter => recorder.describe_counter(key, unit, text),
                Gauge => recorder.describe_gauge(key, unit, text),
                Histogram => recorder.describe_histogram(key, unit, text),
            }
        }
    });
    metrics::gauge!(SLO_TARGET).set(SLO_TARGET_SECONDS);
    // Present from the start, so that `increase()` sees the first denial.
    for source in RLS_SOURCES {
        metrics::counter!(RLS_DENIALS, "source" => source).increment(0);
    }
    for action in ["disconnect", "revoke"] {
        for outcome in ["ok", "error"] {
            metrics::counter!(ADMIN_ACTIONS, "action" => action, "outcome" => outcome).increment(0);
        }
    }
    for reason in ["disconnect", "revoked"] {
        metrics::counter!(SESSIONS_KICKED, "reason" => reason).increment(0);
    }
    metrics::gauge!(PRESENCE_ONLINE_USERS).set(0.0);
    metrics::gauge!(REVOCATIONS).set(0.0);
}
