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
    let mut command = Command::new(env!("CARGO_BIN_EXE_engagement-relay"));
    command
        .args(["--database-url", &db.url, "--jwt-secret", SECRET])
        .env("RELAY_DATABASE__SLOT", &db.name)
        .env("RELAY_DATABASE__STATUS_INTERVAL", "200ms")
        .env("RELAY_DATABASE__RECONNECT_MIN", "100ms")
        .env("RELAY_DATABASE__RECONNECT_MAX", "1s")
        .envs(env.iter().copied());
    let mut relay = RelayProcess::start(command)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    relay
        .wait_ready(PROCESS_WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    relay
}
