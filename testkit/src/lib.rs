//! Test and dev kit for engagement-relay, kept out of the production library.
//!
//! * [`pgcluster`]: private PostgreSQL clusters (`initdb` + `pg_ctl`) for `engagement-relay dev`,
//!   the integration tests and the soak harness.
//! * [`pgoutput_writer`]: byte-exact pgoutput messages without a server (decoder tests, benches).
//! * [`RelayProcess`] (feature `process`): the relay binary as a child process, started on
//!   port-0 listeners, waited for (`/readyz`), terminated with SIGTERM.
//! * [`free_port`]: a loopback port that stays bound until it is handed on; [`refusing_port`]:
//!   one that stays bound and refuses connections.
//! * [`tls`] (feature `tls`): a test CA (rcgen), server certificates for `localhost` it signs
//!   (for the listeners and TLS-only clusters), and rustls client configurations trusting it.
//! * [`demo`]: the demo traffic's event shapes and the `dev` JWT secret.
//! * [`nats`]: private `nats-server`s with JetStream, alone or as a routed cluster.
//! * [`install`]: `apt-get install` as root on Debian, with packaged services kept stopped.
//!
//! It does not depend on the `engagement_relay` library (the `engagement-relay` binary depends on
//! it for `dev`), so it knows the relay only by its command line, environment and log.

#![warn(missing_docs)]

pub mod demo;
pub mod install;
mod io_error;
pub mod nats;
mod net;
pub mod pgcluster;
pub mod pgoutput_writer;
#[cfg(feature = "process")]
mod process;
mod signal;
#[cfg(feature = "tls")]
pub mod tls;

pub use io_error::IoError;
pub use net::{free_port, refusing_port, reserve_port, PortGuard, RefusingPort};
#[cfg(feature = "process")]
pub use process::{RelayLog, RelayProcess, RelayProcessError, StartOptions};
pub use signal::{sighup, sigint, sigterm};
