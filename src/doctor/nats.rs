//! Cluster mode's checks (only with `cluster.nats_url` set): `nats` (a server answers within
//! the connect timeout), `jetstream` (JetStream is enabled for the account) and `nats_stream`
//! (the stream `cluster.stream` is configured as the relay would create it,
//! [`crate::cluster::stream_config`]).
//!
//! The relay creates a missing stream but never changes an existing one, so a stream created
//! by hand, or by a relay with another configuration, keeps its settings: this is where a
//! difference shows, one finding per key with the server's value and the wanted one.

use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream;
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, ServerAddr};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::report::{format_bytes, Check, Status};
use super::{JETSTREAM, NATS, NATS_STREAM};
use crate::config::Config;

const NOT_CONNECTED: &str = "not checked: no NATS connection (see nats)";

/// The three checks, in order; never fails: an unreachable server fails `nats` and skips the
/// others. Each step waits at most `timeout`.
pub(super) async fn checks(config: &Config, timeout: Duration) -> Vec<Check> {
    let servers = match crate::cluster::servers(config.cluster.nats_url.expose()) {
        Ok(servers) => servers,
        Err(e) => {
            let fix = "cluster.nats_url (RELAY_CLUSTER__NATS_URL) is a comma-separated list of \
                       NATS URLs: nats://host:4222, tls://host:4222, nats://user:password@host:4222";
            return skipped_after(Check::fail(NATS, e.to_string(), fix));
        }
    };
    let (check, client) = connect(&servers, timeout).await;
    let Some(client) = client else {
        return skipped_after(check);
    };
    let (account, enabled) = jetstream_check(&client, timeout).await;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(timeout);
    let stream = if enabled {
        stream_check(&js, &client, config, timeout).await
    } else {
        Check::skip(
            NATS_STREAM,
            "not checked: JetStream is not enabled (see jetstream)",
        )
    };
    vec![check, account, stream]
}

fn skipped_after(first: Check) -> Vec<Check> {
    vec![
        first,
        Check::skip(JETSTREAM, NOT_CONNECTED),
        Check::skip(NATS_STREAM, NOT_CONNECTED),
    ]
}

/// `host:port` of each server, without scheme or credentials.
fn describe(servers: &[ServerAddr]) -> String {
    servers
        .iter()
        .map(|s| format!("{}:{}", s.host(), s.port()))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn connect(servers: &[ServerAddr], timeout: Duration) -> (Check, Option<Client>) {
    let fix = "check cluster.nats_url (RELAY_CLUSTER__NATS_URL): hosts, ports, credentials and \
               TLS; that nats-server runs (systemctl status nats-server) and accepts clients \
               from here";
    let targets = describe(servers);
    let options = crate::cluster::connect_options(servers)
        .name("engagement-relay doctor")
        .connection_timeout(timeout);
    let attempt = tokio::time::timeout(timeout, options.connect(servers.to_vec())).await;
    let client = match attempt {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            let detail = format!("cannot connect to NATS at {targets}: {e}");
            return (Check::fail(NATS, detail, fix), None);
        }
        Err(_) => {
            let detail = format!(
                "cannot connect to NATS at {targets}: no answer within {}",
                humantime::format_duration(timeout)
            );
            return (Check::fail(NATS, detail, fix), None);
        }
    };
    let info = client.server_info();
    let cluster = info.cluster.as_deref().map_or_else(
        || ", not clustered".to_string(),
        |c| format!(", cluster {c}"),
    );
    let detail = format!(
        "connected to nats-server {} (name {}{cluster}) at {}:{}; cluster.nats_url lists {targets}",
        info.version, info.server_name, info.host, info.port
    );
    (Check::pass(NATS, detail), Some(client))
}

/// The `jetstream` check and whether JetStream answered. The account info is read as JSON
/// (`$JS.API.INFO`): the client's typed answer expects fields nats-server 2.9 does not send.
async fn jetstream_check(client: &Client, timeout: Duration) -> (Check, bool) {
    let fix = "enable JetStream on every NATS server: `jetstream { store_dir: /var/lib/nats }` \
               in its configuration (or nats-server -js), and for this account when accounts \
               are configured";
    let answer = tokio::time::timeout(timeout, client.request("$JS.API.INFO", Bytes::new())).await;
    let failed = |detail: String| (Check::fail(JETSTREAM, detail, fix), false);
    let message = match answer {
        Ok(Ok(message)) => message,
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
            return failed(
                "JetStream is not enabled on the server (no JetStream API answered)".into(),
            );
        }
        Ok(Err(e)) => return failed(format!("JetStream account info failed: {e}")),
        Err(_) => {
            return failed(format!(
                "JetStream account info: no answer within {}",
                humantime::format_duration(timeout)
            ))
        }
    };
    let info: Value = match serde_json::from_slice(&message.payload) {
        Ok(info) => info,
        Err(e) => return failed(format!("JetStream account info is not JSON: {e}")),
    };
    if let Some(error) = info.get("error") {
        let description = error["description"].as_str().unwrap_or("an error");
        return failed(format!(
            "JetStream is not usable for this account: {description} (err_code {})",
            error["err_code"]
        ));
    }
    let number = |v: &Value| v.as_i64().unwrap_or(-1);
    let limit = |bytes: i64| match u64::try_from(bytes) {
        Ok(bytes) => format_bytes(bytes),
        Err(_) => "unlimited".into(),
    };
    let domain = info["domain"]
        .as_str()
        .map_or(String::new(), |d| format!(", domain {d}"));
    let detail = format!(
        "JetStream enabled{domain}: {} streams, {} of file storage in use (account limit {})",
        number(&info["streams"]).max(0),
        format_bytes(u64::try_from(number(&info["storage"])).unwrap_or(0)),
        limit(number(&info["limits"]["max_storage"])),
    );
    (Check::pass(JETSTREAM, detail), true)
}

async fn stream_check(
    js: &jetstream::Context,
    client: &Client,
    config: &Config,
    timeout: Duration,
) -> Check {
    let wanted = crate::cluster::stream_config(config);
    let answer = tokio::time::timeout(timeout, js.get_stream(&wanted.name)).await;
    match answer {
        Ok(Ok(found)) => {
            let info = found.cached_info();
            evaluate(
                &wanted,
                &info.config,
                Some((info.state.messages, info.state.bytes)),
            )
        }
        Ok(Err(e)) => match e.kind() {
            GetStreamErrorKind::JetStream(err)
                if err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                missing(&wanted, client.server_info().cluster.is_some())
            }
            _ => Check::fail(
                NATS_STREAM,
                format!("stream {}: {e}", wanted.name),
                "check that this NATS user may use the JetStream API ($JS.API.>)",
            ),
        },
        Err(_) => Check::fail(
            NATS_STREAM,
            format!(
                "stream {}: no answer within {}",
                wanted.name,
                humantime::format_duration(timeout)
            ),
            "check the NATS servers' health (curl http://<server>:8222/healthz)",
        ),
    }
}

/// No stream yet: a warning (the first relay creates it), or a failure when it could not
/// (more replicas than a standalone server holds).
pub(super) fn missing(wanted: &stream::Config, clustered: bool) -> Check {
    if wanted.num_replicas > 1 && !clustered {
        return Check::fail(
            NATS_STREAM,
            format!(
                "stream {} does not exist, and cluster.replicas = {} needs a NATS cluster: this \
                 server is standalone, so the relay cannot create it",
                wanted.name, wanted.num_replicas
            ),
            "set cluster.replicas = 1 for a single NATS server, or point cluster.nats_url at a \
             NATS cluster of at least that many servers (deploy/cluster/)",
        );
    }
    Check::warn(
        NATS_STREAM,
        format!(
            "stream {} does not exist yet; the first relay node to start creates it ({})",
            wanted.name,
            summary(wanted)
        ),
        format!(
            "nothing to do before the first start; to create it now: {}",
            nats_cli("add", wanted)
        ),
    )
}

/// The wanted configuration in one phrase.
fn summary(c: &stream::Config) -> String {
    let [retention, storage, discard, max_age, duplicate_window] = spelled(c);
    format!(
        "subjects {}, {} retention, {} storage, discard {}, max_age {}, duplicate_window {}, {} \
         replica{}",
        c.subjects.join(" "),
        retention,
        storage,
        discard,
        max_age,
        duplicate_window,
        c.num_replicas,
        if c.num_replicas == 1 { "" } else { "s" }
    )
}

/// A `nats stream <verb>` command line that gives the stream `c`'s settings.
fn nats_cli(verb: &str, c: &stream::Config) -> String {
    let [retention, storage, discard, max_age, duplicate_window] = spelled(c);
    format!(
        "nats stream {verb} {} --subjects '{}' --retention {} --storage {} --discard {} \
         --max-age {} --dupe-window {} --replicas {} --defaults",
        c.name,
        c.subjects.join(","),
        retention,
        storage,
        discard,
        max_age,
        duplicate_window,
        c.num_replicas
    )
}

/// `c`'s retention, storage, discard, max_age and duplicate_window as NATS spells them.
fn spelled(c: &stream::Config) -> [String; 5] {
    [
        word(&c.retention),
        word(&c.storage),
        word(&c.discard),
        go_duration(c.max_age),
        go_duration(c.duplicate_window),
    ]
}

/// One difference between the server's stream and the relay's.
struct Finding {
    /// Fail: the relay does not work on this stream; warn: it works, not as configured.
    status: Status,
    text: String,
    /// JetStream cannot change this key on an existing stream (retention, storage).
    fixed: bool,
}

/// Compares the server's stream `found` (with its messages and bytes, when known) with
/// `wanted`: passes when every key the relay sets matches; otherwise the worst finding's
/// status, each finding naming the key, the server's value and the wanted one.
pub(super) fn evaluate(
    wanted: &stream::Config,
    found: &stream::Config,
    state: Option<(u64, u64)>,
) -> Check {
    let findings = compare(wanted, found);
    if findings.is_empty() {
        let mut detail = format!("stream {}: {}", wanted.name, summary(found));
        if let Some((messages, bytes)) = state.filter(|(messages, _)| *messages > 0) {
            detail.push_str(&format!(
                "; {messages} messages, {} (about {} B per message)",
                format_bytes(bytes),
                bytes / messages
            ));
        }
        return Check::pass(NATS_STREAM, detail);
    }
    let status = if findings.iter().any(|f| f.status == Status::Fail) {
        Status::Fail
    } else {
        Status::Warn
    };
    let detail = format!(
        "stream {} differs from the relay's configuration: {}",
        wanted.name,
        findings
            .iter()
            .map(|f| f.text.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
    let fix = if findings.iter().any(|f| f.fixed) {
        format!(
            "JetStream cannot change retention or storage: stop every relay node, delete the \
             stream (nats stream rm {}; resumes from cursors older than the nodes' memory then \
             answer complete:false) and start a node, which creates it as configured",
            wanted.name
        )
    } else {
        format!(
            "{} (or change the relay's [cluster]/[replay] settings to match)",
            nats_cli("edit", wanted).replace(" --defaults", " --force")
        )
    };
    match status {
        Status::Fail => Check::fail(NATS_STREAM, detail, fix),
        _ => Check::warn(NATS_STREAM, detail, fix),
    }
}

/// The stream settings [`compare`] checks one by one: how bad a difference is, the key, why it
/// matters, and whether only a new stream fixes it (JetStream cannot change it in place).
const SETTINGS: [(Status, &str, &str, bool); 6] = [
    (
        Status::Fail,
        "retention",
        " (interest and workqueue remove messages once read: nodes cannot rebuild or resume)",
        true,
    ),
    (
        Status::Warn,
        "storage",
        " (memory storage loses the stream when NATS restarts)",
        true,
    ),
    (
        Status::Warn,
        "max_age",
        " (replay.window, at least 1m)",
        false,
    ),
    (
        Status::Warn,
        "duplicate_window",
        " (cluster.duplicate_window, at most max_age)",
        false,
    ),
    (Status::Warn, "num_replicas", " (cluster.replicas)", false),
    (
        Status::Warn,
        "discard",
        " (discard new refuses publishes once a limit is reached: the slot stops advancing)",
        false,
    ),
];

fn compare(wanted: &stream::Config, found: &stream::Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut differ = |status, key: &str, server: String, relay: String, why: &str, fixed| {
        out.push(Finding {
            status,
            text: format!("{key} = {server} on the server, {relay} wanted{why}"),
            fixed,
        });
    };
    let covered = wanted.subjects.iter().all(|s| found.subjects.contains(s));
    if !covered || found.subjects.len() != wanted.subjects.len() {
        let (status, why) = if covered {
            (Status::Warn, " (other subjects share the stream)")
        } else {
            (
                Status::Fail,
                " (cluster.subject_prefix; publishes outside the stream's subjects are refused)",
            )
        };
        let list = |s: &[String]| format!("[{}]", s.join(", "));
        differ(
            status,
            "subjects",
            list(&found.subjects),
            list(&wanted.subjects),
            why,
            false,
        );
    }
    let (f, w) = (found, wanted);
    let server_max_age = if f.max_age.is_zero() {
        "unlimited".to_string()
    } else {
        go_duration(f.max_age)
    };
    // In the order of SETTINGS: whether it differs, the server's value, the relay's.
    let settings = [
        (
            f.retention != w.retention,
            word(&f.retention),
            word(&w.retention),
        ),
        (f.storage != w.storage, word(&f.storage), word(&w.storage)),
        (
            f.max_age != w.max_age,
            server_max_age,
            go_duration(w.max_age),
        ),
        (
            f.duplicate_window != w.duplicate_window,
            go_duration(f.duplicate_window),
            go_duration(w.duplicate_window),
        ),
        (
            f.num_replicas.max(1) != w.num_replicas,
            f.num_replicas.max(1).to_string(),
            w.num_replicas.to_string(),
        ),
        (f.discard != w.discard, word(&f.discard), word(&w.discard)),
    ];
    for ((differs, server, relay), (status, key, why, fixed)) in settings.into_iter().zip(SETTINGS)
    {
        if differs {
            differ(status, key, server, relay, why, fixed);
        }
    }
    for (key, value) in [
        ("max_bytes", found.max_bytes),
        ("max_msgs", found.max_messages),
        ("max_msgs_per_subject", found.max_messages_per_subject),
    ] {
        if value > 0 {
            differ(
                Status::Warn,
                key,
                value.to_string(),
                "unlimited".into(),
                " (the limit may keep less than replay.window)",
                false,
            );
        }
    }
    out
}

/// A policy as NATS spells it (`limits`, `file`, `old`).
fn word<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// `d` as a Go duration (`5m`, `1h30m`, `24h`, `1.5s`), which the `nats` CLI reads.
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let millis = d.subsec_millis();
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if millis > 0 {
        let fraction = format!("{millis:03}");
        out.push_str(&format!("{s}.{}s", fraction.trim_end_matches('0')));
    } else if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
#[path = "nats_tests.rs"]
mod tests;
