//! The real `engagement-relay` binary as a child process (crash and signal tests), through the
//! kit's [`RelayProcess`]: `engagement-relay run` on a test database, fast reconnects and status
//! reports, its JSON log collected.

use std::process::Command;
use std::time::Duration;

pub use relay_testkit::RelayProcess;

use super::{TestDb, SECRET};

/// How long a relay child may take to listen, to become ready, or to exit after SIGTERM.
pub const PROCESS_WAIT: Duration = Duration::from_secs(30);

/// Starts `engagement-relay run` on `db` (slot named after the database) with extra `RELAY_*`
/// variables, and waits until it is ready (`/readyz` 200). Fails the test if it is not.
pub async fn start_ready(db: &TestDb, env: &[(&str, &str)]) -> RelayProcess {
    ready(relay_command(db, env)).await
}

/// The command [`start_ready`] runs, not started: for a caller that waits for readiness its own
/// way (over `https://` when the relay serves TLS).
pub fn relay_command(db: &TestDb, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_engagement-relay"));
    relay_args(&mut command, db, env);
    command
}

/// [`start_ready`] under an open-file limit (soft and hard) of `files`, as systemd's
/// `LimitNOFILE=files` would start it.
pub async fn start_ready_with_open_files(
    db: &TestDb,
    env: &[(&str, &str)],
    files: u64,
) -> RelayProcess {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_engagement-relay"));
    relay_args(&mut command, db, env);
    ready(command).await
}

fn relay_args(command: &mut Command, db: &TestDb, env: &[(&str, &str)]) {
    command
        .args(["--database-url", &db.url, "--jwt-secret", SECRET])
        .env("RELAY_DATABASE__SLOT", &db.name)
        .env("RELAY_DATABASE__STATUS_INTERVAL", "200ms")
        .env("RELAY_DATABASE__RECONNECT_MIN", "100ms")
        .env("RELAY_DATABASE__RECONNECT_MAX", "1s")
        .envs(env.iter().copied());
}

async fn ready(command: Command) -> RelayProcess {
    let mut relay = RelayProcess::start(command)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    relay
        .wait_ready(PROCESS_WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    relay
}
