//! `engagement-relay doctor`: the deployment checklist (seed
//! `deployment-procedures-engagement-events.md`, *Pre-Deployment Verification* and
//! *Post-Migration Validation*) as one command that reads, never writes.
//!
//! [`run`] connects to `database.url` over an ordinary SQL connection and returns a [`Report`]
//! of [`Check`]s, in this order (ids in backticks; `<t>` is `schema.table` of each `[[tables]]`
//! entry):
//!
//! * server: `connectivity`, `tls` (encryption, `sslmode`, certificate expiry), `server_version` (≥ 14), `replication_role`, `wal_level`,
//!   `replication_slots`, `wal_senders`, `max_slot_wal_keep_size`, `migrations`;
//! * schema: `publication`, then per table `table:<t>`, `rls:<t>`, `indexes:<t>`, and
//!   `message_queue` (the service-only queue stays out of the stream);
//! * slot: `slot`, `slot_lag`, `slot_retained`;
//! * this host and the configuration: `jwt_secret`, `jwks`, `disk`;
//! * activity: `long_transactions`, `connections`;
//! * cluster mode, only with `cluster.nats_url` set: `nats`, `jetstream`, `nats_stream`.
//!
//! Each check is a query (parameterized) followed by a pure evaluation with its own unit
//! tests. An unreachable database fails `connectivity` and skips every other database check; a
//! query that fails fails its own check with the server's message. Nothing here panics on
//! what the server or the configuration contains.

mod host;
mod keys;
mod nats;
mod report;
mod schema;
mod security;
mod server;
mod slot;
mod tls;

use std::future::Future;
use std::time::Duration;

use tokio_postgres::Client;

use crate::config::Config;
use crate::db::{describe, PgTarget};

pub use report::{format_bytes, Check, Report, Status, Summary};

/// Id of the connection check.
pub const CONNECTIVITY: &str = "connectivity";
/// Id of the TLS check (encrypted, verification mode, certificate expiry).
pub const TLS: &str = "tls";
/// Id of the PostgreSQL version check.
pub const SERVER_VERSION: &str = "server_version";
/// Id of the check that the database user may replicate.
pub const REPLICATION_ROLE: &str = "replication_role";
/// Id of the `wal_level` check.
pub const WAL_LEVEL: &str = "wal_level";
/// Id of the `max_replication_slots` headroom check.
pub const REPLICATION_SLOTS: &str = "replication_slots";
/// Id of the `max_wal_senders` headroom check.
pub const WAL_SENDERS: &str = "wal_senders";
/// Id of the `max_slot_wal_keep_size` check.
pub const MAX_SLOT_WAL_KEEP_SIZE: &str = "max_slot_wal_keep_size";
/// Id of the applied-migrations check.
pub const MIGRATIONS: &str = "migrations";
/// Id of the publication check.
pub const PUBLICATION: &str = "publication";
/// Id of the check that the message queue is not streamed.
pub const MESSAGE_QUEUE: &str = "message_queue";
/// Id of the slot state check.
pub const SLOT: &str = "slot";
/// Id of the slot's confirmed-position lag check.
pub const SLOT_LAG: &str = "slot_lag";
/// Id of the slot's retained-WAL check.
pub const SLOT_RETAINED: &str = "slot_retained";
/// Id of the JWT secret check.
pub const JWT_SECRET: &str = "jwt_secret";
/// Id of the JWKS check (the sources load and hold usable keys).
pub const JWKS: &str = "jwks";
/// Id of the data-directory disk headroom check.
pub const DISK: &str = "disk";
/// Id of the long-running-transactions check.
pub const LONG_TRANSACTIONS: &str = "long_transactions";
/// Id of the connection-count check.
pub const CONNECTIONS: &str = "connections";
/// Id of the NATS reachability check (cluster mode only).
pub const NATS: &str = "nats";
/// Id of the check that JetStream is enabled for the account (cluster mode only).
pub const JETSTREAM: &str = "jetstream";
/// Id of the check of the stream's configuration against the relay's (cluster mode only).
pub const NATS_STREAM: &str = "nats_stream";

/// Id of a per-table check: `<kind>:<schema>.<table>`, `kind` one of `table`, `rls`, `indexes`.
pub fn table_check_id(kind: &str, schema: &str, table: &str) -> String {
    format!("{kind}:{schema}.{table}")
}

/// Thresholds of one run (the `doctor` flags).
#[derive(Debug, Clone)]
pub struct Options {
    /// `slot_lag` fails when `pg_current_wal_lsn() − confirmed_flush_lsn` exceeds this many
    /// bytes and warns above half of it (`--max-lag-bytes`, default 1 GiB). A running relay
    /// confirms only what is older than `replay.window`, so about one window of WAL is normal.
    pub max_lag_bytes: u64,
    /// `slot_retained` fails when `pg_current_wal_lsn() − restart_lsn` exceeds this many bytes
    /// and warns above half of it (`--max-retained-bytes`, default 4 GiB).
    pub max_retained_bytes: u64,
    /// `long_transactions` warns about transactions open longer than this
    /// (`--max-xact-age`, default 5 minutes).
    pub max_xact_age: Duration,
    /// How long connecting may take before `connectivity` (and `nats`) fails
    /// (`--connect-timeout`, default 10 s); also each query's `statement_timeout` and each
    /// JetStream request's timeout.
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_lag_bytes: 1 << 30,
            max_retained_bytes: 4 << 30,
            max_xact_age: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Runs every check against `config` and returns the report; never fails: problems are
/// failed checks.
pub async fn run(config: &Config, options: &Options) -> Report {
    let url = config.database.url.expose();
    let (connectivity, connected) = connect(url, options).await;
    let mut db = Db {
        client: connected.as_ref().map(|c| &c.client),
        checks: vec![connectivity],
    };
    match &connected {
        Some(c) => {
            db.one(TLS, |client| async move {
                let facts = tls::query(client).await?;
                let setting = tls::Setting {
                    mode: c.target.tls().mode(),
                    local: host::is_local(url),
                    expires: c.peer.get().and_then(|der| crate::pem::not_after(&der)),
                };
                Ok(tls::evaluate(
                    &facts,
                    &setting,
                    std::time::SystemTime::now(),
                ))
            })
            .await;
            db.checks.push(server::evaluate_version(c.version));
        }
        None => {
            db.checks.push(Check::skip(TLS, NOT_CONNECTED));
            db.checks.push(Check::skip(SERVER_VERSION, NOT_CONNECTED));
        }
    }
    db.one(REPLICATION_ROLE, server::replication_role).await;
    db.one(WAL_LEVEL, server::wal_level).await;
    db.many(&[REPLICATION_SLOTS, WAL_SENDERS], |c| {
        server::headroom(c, &config.database.slot)
    })
    .await;
    // In cluster mode the slot is confirmed on PubAck: no window holds it back.
    let pinned = if config.cluster.enabled() {
        Duration::ZERO
    } else {
        config.replay.window
    };
    db.one(MAX_SLOT_WAL_KEEP_SIZE, |c| {
        server::max_slot_wal_keep_size(c, pinned)
    })
    .await;
    db.one(MIGRATIONS, server::migrations).await;
    db.one(PUBLICATION, |c| schema::publication(c, config))
        .await;
    for (i, t) in config.tables.iter().enumerate() {
        let id = |kind| table_check_id(kind, &t.schema, &t.table);
        db.one(&id("table"), |c| schema::table(c, i, t)).await;
        db.one(&id("rls"), |c| security::rls(c, t)).await;
        db.one(&id("indexes"), |c| security::indexes(c, t)).await;
    }
    db.one(MESSAGE_QUEUE, |c| schema::message_queue(c, config))
        .await;
    db.many(&[SLOT, SLOT_LAG, SLOT_RETAINED], |c| {
        slot::checks(c, &config.database.slot, options)
    })
    .await;
    db.checks.push(host::jwt_secret(config));
    db.checks.push(keys::jwks(&config.auth).await);
    db.one(DISK, |c| host::disk(c, url)).await;
    db.one(LONG_TRANSACTIONS, |c| {
        server::long_transactions(c, options.max_xact_age)
    })
    .await;
    db.one(CONNECTIONS, |c| {
        server::connections(c, config.ingest.pool_size.get())
    })
    .await;
    if config.cluster.enabled() {
        let cluster = nats::checks(config, options.connect_timeout).await;
        db.checks.extend(cluster);
    }
    Report { checks: db.checks }
}

const NOT_CONNECTED: &str = "not checked: no database connection (see connectivity)";

/// The checks gathered so far and the connection they query, if any.
struct Db<'a> {
    client: Option<&'a Client>,
    checks: Vec<Check>,
}

impl<'a> Db<'a> {
    /// Runs a check that yields one result; a failed query fails it.
    async fn one<F, Fut>(&mut self, id: &str, check: F)
    where
        F: FnOnce(&'a Client) -> Fut,
        Fut: Future<Output = Result<Check, tokio_postgres::Error>>,
    {
        self.many(&[id], |c| async move { check(c).await.map(|c| vec![c]) })
            .await
    }

    /// Runs a query that yields the checks `ids`; without a connection each is skipped, and a
    /// failed query fails each with the server's message.
    async fn many<F, Fut>(&mut self, ids: &[&str], check: F)
    where
        F: FnOnce(&'a Client) -> Fut,
        Fut: Future<Output = Result<Vec<Check>, tokio_postgres::Error>>,
    {
        let Some(client) = self.client else {
            self.checks
                .extend(ids.iter().map(|id| Check::skip(*id, NOT_CONNECTED)));
            return;
        };
        match check(client).await {
            Ok(checks) => self.checks.extend(checks),
            Err(e) => self.checks.extend(ids.iter().map(|id| {
                Check::fail(
                    *id,
                    format!("query failed: {}", describe(&e)),
                    "check the database user's privileges and the server log",
                )
            })),
        }
    }
}

/// doctor's connection: the client, `server_version_num` (e.g. 150008), the parsed
/// `database.url` and the certificate the server presented.
struct Connected {
    client: Client,
    version: i32,
    target: PgTarget,
    peer: crate::db::tls::PeerCertificate,
}

/// Connects within `options.connect_timeout`; returns the `connectivity` check and, on
/// success, the connection.
async fn connect(url: &str, options: &Options) -> (Check, Option<Connected>) {
    let target = host::describe_target(url);
    let fix = "check database.url (RELAY_DATABASE_URL): host, port, user, password and \
               database; its TLS parameters (sslmode, sslrootcert, sslcert, sslkey); and that \
               the server is running and accepts connections from here (listen_addresses, \
               pg_hba.conf)";
    let parsed = match PgTarget::parse(url) {
        Ok(parsed) => parsed,
        Err(e) => return (Check::fail(CONNECTIVITY, e.to_string(), fix), None),
    };
    let attempt = tokio::time::timeout(options.connect_timeout, parsed.connect_observed()).await;
    let (client, peer) = match attempt {
        Ok(Ok(connected)) => connected,
        Ok(Err(e)) => {
            let detail = format!("cannot connect to {target}: {e}");
            return (Check::fail(CONNECTIVITY, detail, fix), None);
        }
        Err(_) => {
            let detail = format!(
                "cannot connect to {target}: no answer within {}",
                humantime::format_duration(options.connect_timeout)
            );
            return (Check::fail(CONNECTIVITY, detail, fix), None);
        }
    };
    // Constant SQL: the session identifies itself and no query can hang the run.
    let millis = options.connect_timeout.as_millis().max(1);
    let setup = format!(
        "SET application_name = 'engagement-relay doctor'; SET statement_timeout = {millis}"
    );
    if let Err(e) = client.batch_execute(&setup).await {
        let detail = format!("connected to {target}, but: {}", describe(&e));
        return (Check::fail(CONNECTIVITY, detail, fix), None);
    }
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, current_database()::text, \
             current_user::text, coalesce(host(inet_server_addr()), 'unix socket'), \
             coalesce(inet_server_port(), 0)",
            &[],
        )
        .await;
    match row {
        Ok(row) => {
            let (version, database, user, addr, port): (i32, String, String, String, i32) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            let server = if port > 0 {
                format!("{addr}:{port}")
            } else {
                addr
            };
            let detail = format!("connected to database {database} as {user} (server {server})");
            let connected = Connected {
                client,
                version,
                target: parsed,
                peer,
            };
            (Check::pass(CONNECTIVITY, detail), Some(connected))
        }
        Err(e) => {
            let detail = format!("connected to {target}, but: {}", describe(&e));
            (Check::fail(CONNECTIVITY, detail, fix), None)
        }
    }
}

/// `name` as an SQL identifier for a fix line: bare when plain lower case, else double-quoted.
pub(crate) fn ident(name: &str) -> String {
    const RESERVED: [&str; 14] = [
        "all",
        "check",
        "column",
        "default",
        "from",
        "group",
        "order",
        "select",
        "table",
        "to",
        "user",
        "where",
        "timestamp",
        "window",
    ];
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain && !RESERVED.contains(&name) {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `schema.table` as SQL for a fix line.
pub(crate) fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

/// `text` as an SQL string literal for a fix line.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fix_lines_quote_what_needs_quoting() {
        assert_eq!(ident("engagement_events"), "engagement_events");
        assert_eq!(ident("Events"), "\"Events\"");
        assert_eq!(ident("user"), "\"user\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ident(""), "\"\"");
        assert_eq!(qualified("public", "t"), "public.t");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn per_table_ids_name_the_table() {
        assert_eq!(
            table_check_id("rls", "public", "engagement_events"),
            "rls:public.engagement_events"
        );
    }
}
