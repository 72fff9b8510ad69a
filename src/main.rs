//! The `engagement-relay` CLI: parse flags, load config, init logging, run, map errors to exit
//! codes (0 ok, 1 runtime failure, 78 bad configuration).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use engagement_relay::auth::fetch::LoadError;
use engagement_relay::auth::sign::{public_jwks, SigningKey};
use engagement_relay::auth::{mint, Role};
use engagement_relay::config::{bytes, Config, LogFormat, Overrides};
use engagement_relay::{db, doctor, start, RelayError};
use relay_testkit::pgcluster;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use dev::DevOptions;

mod dev;

/// jemalloc with background threads: freed memory is purged back to the OS after its decay
/// time (`dirty_decay_ms`/`muzzy_decay_ms`, 10 s each by default), so RSS falls after a burst of
/// sessions ends. The system allocator (glibc) kept what the peak had touched (issue 12).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Streams new engagement_events rows from a PostgreSQL logical replication slot to the
/// WebSocket sessions of their owners.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML); every key is documented in the repository's config.toml.
    #[arg(long, global = true, default_value = "config.toml")]
    config: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Run,
    /// Run on a private PostgreSQL started here, with the seed and demo traffic.
    Dev {
        /// Demo events inserted per second (0 disables).
        #[arg(long, default_value_t = 3.0)]
        demo_rate: f64,
        /// Data directory of the private cluster [env: RELAY_DEV_PGDATA; default:
        /// target/dev-pgdata, or a stable directory under /tmp when the `postgres` OS user
        /// cannot reach it].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Port of the private cluster (default: a free one).
        #[arg(long)]
        pg_port: Option<u16>,
        /// Relay nodes. 1: the relay in this process, as always. More: a private
        /// `nats-server -js` (installed when missing and root) and that many relay processes
        /// in cluster mode on consecutive ports from `server.listen` and `metrics.listen`.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        nodes: u16,
    },
    /// Apply pending migrations (sql/migrations, embedded) to database.url.
    Migrate {
        /// Also run the seed (demo users and weeks of events).
        #[arg(long)]
        seed: bool,
    },
    /// Check that the database, slot and configuration are ready for the relay (the deployment
    /// checklist); exit 0 when every check passes (warnings allowed), 1 when one fails.
    Doctor {
        /// Print one JSON object (`ok`, `checks`, `summary`) instead of the text report.
        #[arg(long)]
        json: bool,
        /// `slot_lag` fails above this many bytes of WAL not yet confirmed by the slot and
        /// warns above half of it (plain bytes or KiB/MiB/GiB/TiB).
        #[arg(long, default_value = "1GiB", value_parser = bytes::parse)]
        max_lag_bytes: u64,
        /// `slot_retained` fails above this many bytes of WAL kept for the slot and warns
        /// above half of it.
        #[arg(long, default_value = "4GiB", value_parser = bytes::parse)]
        max_retained_bytes: u64,
        /// `long_transactions` warns about transactions open longer than this.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        max_xact_age: Duration,
        /// `connectivity` fails when connecting takes longer; also each query's timeout.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        connect_timeout: Duration,
    },
    /// Mint a JWT signed with the configured secret (HS256), or with a private key (`--key`).
    Token {
        /// The user's UUID (`sub`); optional for the service role.
        #[arg(long)]
        sub: Option<uuid::Uuid>,
        /// `authenticated` or `service_role`.
        #[arg(long, default_value = "authenticated")]
        role: String,
        /// Lifetime, e.g. `1h`, `15m`, `30s`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// A PEM private key (PKCS#8) to sign with instead of the secret: EC P-256 → ES256,
        /// RSA → RS256, Ed25519 → EdDSA.
        #[arg(long, requires = "kid")]
        key: Option<std::path::PathBuf>,
        /// The key id written in the token's header (the `kid` the relay's JWKS lists).
        #[arg(long, requires = "key")]
        kid: Option<String>,
        /// With `--key`: print the JWKS (the public key) to publish instead of a token.
        #[arg(long, requires = "key")]
        jwks: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let explicit = std::env::args().any(|a| a == "--config" || a.starts_with("--config="));
    let config = match Config::load(&cli.config, explicit, &cli.overrides) {
        Ok(c) => c,
        Err(e) => return fail(78, &e),
    };
    init_logging(&config);
    let files = engagement_relay::limits::raise_nofile_limit();
    tracing::debug!(files, "open-file limit");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(1, &e),
    };
    let config_file = explicit.then(|| cli.config.clone());
    runtime.block_on(run(
        cli.command.unwrap_or(Command::Run),
        config,
        config_file,
    ))
}

async fn run(command: Command, config: Config, config_file: Option<PathBuf>) -> ExitCode {
    match command {
        Command::Run => {
            if let Err(e) = config.require_token_keys() {
                return fail(78, &e);
            }
            let relay = match start(config).await {
                Ok(r) => r,
                // A certificate, key or JWKS file that cannot be used is bad configuration.
                Err(
                    e @ (RelayError::Config(_)
                    | RelayError::Tls(_)
                    | RelayError::Jwks(LoadError::File { .. })),
                ) => return fail(78, &e),
                Err(e) => return fail(1, &e),
            };
            let stop = relay.shutdown_token();
            tokio::spawn(async move {
                engagement_relay::shutdown_signal().await;
                stop.cancel();
            });
            match relay.wait().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, &e),
            }
        }
        Command::Dev {
            demo_rate,
            data_dir,
            pg_port,
            nodes,
        } => {
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                engagement_relay::shutdown_signal().await;
                stop.cancel();
            });
            let data_dir = match data_dir {
                Some(dir) => dir,
                None => match std::env::current_dir()
                    .map_err(|e| e.to_string())
                    .and_then(|cwd| pgcluster::dev_data_dir(&cwd).map_err(|e| e.to_string()))
                {
                    Ok(dir) => dir,
                    Err(e) => return fail(1, &e),
                },
            };
            let opts = DevOptions {
                data_dir,
                pg_port,
                demo_rate,
                nodes: usize::from(nodes),
                config_file,
            };
            match dev::run(config, opts, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, &format!("{e:#}")),
            }
        }
        Command::Migrate { seed } => match migrate(&config, seed).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, &format!("{e:#}")),
        },
        Command::Doctor {
            json,
            max_lag_bytes,
            max_retained_bytes,
            max_xact_age,
            connect_timeout,
        } => {
            let options = doctor::Options {
                max_lag_bytes,
                max_retained_bytes,
                max_xact_age,
                connect_timeout,
            };
            let report = doctor::run(&config, &options).await;
            if json {
                println!("{:#}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Token {
            sub,
            role,
            ttl,
            key,
            kid,
            jwks,
        } => {
            let signer = match (key, kid) {
                (Some(path), Some(kid)) => match read_signing_key(&path, &kid) {
                    Ok(k) => Some(k),
                    Err(e) => return fail(2, &e),
                },
                _ => None,
            };
            if signer.is_none() {
                if let Err(e) = config.require_jwt_secret() {
                    return fail(78, &e);
                }
            }
            if let (true, Some(signer)) = (jwks, &signer) {
                return match public_jwks(&[signer]).map(|set| serde_json::to_string_pretty(&set)) {
                    Ok(Ok(json)) => {
                        println!("{json}");
                        ExitCode::SUCCESS
                    }
                    Ok(Err(e)) => fail(1, &e),
                    Err(e) => fail(1, &e),
                };
            }
            let role = match role.as_str() {
                "authenticated" => Role::Authenticated,
                "service_role" => Role::ServiceRole,
                other => {
                    return fail(
                        2,
                        &format!("--role: `{other}` is not authenticated or service_role"),
                    )
                }
            };
            if role == Role::Authenticated && sub.is_none() {
                return fail(2, &"--sub: required for role authenticated");
            }
            let minted = match &signer {
                Some(signer) => signer.mint(sub, role, ttl),
                None => mint(config.auth.jwt_secret.expose(), sub, role, ttl),
            };
            match minted {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, &e),
            }
        }
    }
}

/// The `--key` file as a signing key with `--kid`; errors name the flag.
fn read_signing_key(path: &std::path::Path, kid: &str) -> Result<SigningKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("--key {}: {e}", path.display()))?;
    SigningKey::from_pem(&pem, kid).map_err(|e| format!("--key {}: {e}", path.display()))
}

async fn migrate(config: &Config, seed: bool) -> anyhow::Result<()> {
    let mut client = db::connect(config.database.url.expose())
        .await
        .map_err(|e| match e {
            db::ConnectError::Settings(e) => anyhow::anyhow!("{e}"),
            e => anyhow::anyhow!("database.url: {e}"),
        })?;
    let applied = db::migrate::migrate(&mut client).await?;
    if applied.is_empty() {
        println!("migrations: up to date");
    } else {
        println!("migrations: applied {}", applied.join(", "));
    }
    if seed {
        db::migrate::seed(&mut client).await?;
        println!("seed: applied");
    }
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // pgwire-replication reports every ended replication connection at ERROR; the relay logs
    // each one itself at the level it deserves (a cluster standby finding the slot busy every
    // `cluster.takeover_interval` is routine, at DEBUG).
    let filter = match "pgwire_replication::client::tokio_client=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("engagement-relay: {e}");
    ExitCode::from(code)
}
