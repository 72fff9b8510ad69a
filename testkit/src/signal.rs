//! Signals to child processes, sent with `kill(2)` directly (no `kill` subprocess).

use std::io;

use rustix::process::{kill_process, Pid, Signal};

/// Sends SIGTERM (graceful shutdown) to process `pid`, e.g. a `Child::id()`.
///
/// Errors: `pid` is 0 or above `i32::MAX` (`InvalidInput`: it would signal a process group),
/// the process is gone and reaped (`ESRCH`), or may not be signalled (`EPERM`).
pub fn sigterm(pid: u32) -> io::Result<()> {
    send(pid, Signal::TERM)
}

/// Sends SIGINT (Ctrl-C) to process `pid`. Errors as [`sigterm`].
pub fn sigint(pid: u32) -> io::Result<()> {
    send(pid, Signal::INT)
}

/// Sends SIGHUP (reload the TLS certificates) to process `pid`. Errors as [`sigterm`].
pub fn sighup(pid: u32) -> io::Result<()> {
    send(pid, Signal::HUP)
}

fn send(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("pid {pid}")))?;
    kill_process(pid, signal).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_that_would_name_a_group_is_refused() {
        assert_eq!(sigterm(0).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let negative = u32::MAX; // -1 as i32: every process
        assert_eq!(
            sigterm(negative).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
