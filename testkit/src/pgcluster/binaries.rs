//! Finding the PostgreSQL server binaries and running them: as the `postgres` OS
//! user (via `runuser`) when the relay runs as root, with output captured for errors.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::{env, fs};

use super::{io_err, Cluster, ClusterError};

const TAIL_LINES: usize = 20;

impl Cluster {
    /// A command for a server binary; as root wrapped in `runuser -u postgres --`.
    pub(super) fn pg(&self, program: &str) -> Command {
        let exe = self.bin_dir.join(program);
        let mut cmd = Command::new(if self.as_root {
            OsStr::new("runuser")
        } else {
            exe.as_os_str()
        });
        if self.as_root {
            cmd.args(["-u", "postgres", "--"]).arg(&exe);
        }
        // The caller's cwd may be unreadable for `postgres` (e.g. /root/repo).
        cmd.current_dir("/").env_remove("PGDATA");
        cmd
    }

    /// Run to completion with stdin null and output captured; a failure becomes
    /// [`ClusterError::Command`] with the output (and server log) tail.
    pub(super) fn run(
        &self,
        cmd: &mut Command,
        what: &str,
        with_log: bool,
    ) -> Result<(), ClusterError> {
        let out = cmd.stdin(Stdio::null()).output();
        let out = out.map_err(io_err(format!("running {what}")))?;
        if out.status.success() {
            return Ok(());
        }
        let mut log_tail = String::new();
        if with_log {
            let log = fs::read(&self.log_file).unwrap_or_default();
            let log = tail(&String::from_utf8_lossy(&log));
            log_tail = format!("--- {} ---\n{log}\n", self.log_file.display());
        }
        let output = [out.stderr, out.stdout].concat();
        let output = tail(&String::from_utf8_lossy(&output));
        log_tail.push_str(&format!("--- {what} output ---\n{output}"));
        let (what, status) = (what.to_string(), out.status.to_string());
        Err(ClusterError::Command {
            what,
            status,
            log_tail,
        })
    }
}

/// Find the directory holding `initdb`, `pg_ctl` and `postgres`, trying in order:
/// 1. `$RELAY_PG_BINDIR` (when set it must be valid; nothing else is tried);
/// 2. the highest version under `/usr/lib/postgresql/<version>/bin` (Debian);
/// 3. `pg_config --bindir`;
/// 4. the directory of `initdb` on `PATH`, symlinks resolved.
///
/// Errors: [`ClusterError::BinariesNotFound`], saying how to install them.
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    find_bin_dir_in(
        env::var_os("RELAY_PG_BINDIR"),
        Path::new("/usr/lib/postgresql"),
    )
}

fn find_bin_dir_in(overridden: Option<OsString>, debian: &Path) -> Result<PathBuf, ClusterError> {
    let has_bins = |dir: &PathBuf| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    if let Some(dir) = overridden.map(PathBuf::from) {
        let searched = format!("RELAY_PG_BINDIR={}", dir.display());
        return Some(dir)
            .filter(has_bins)
            .ok_or(ClusterError::BinariesNotFound { searched });
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    for entry in fs::read_dir(debian).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(version) = name.split('.').map(str::parse).collect() {
            versions.push((version, entry.path().join("bin")));
        }
    }
    versions.sort();
    let mut candidates: Vec<PathBuf> = versions.into_iter().rev().map(|(_, bin)| bin).collect();
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        candidates.extend(Some(PathBuf::from(dir)).filter(|_| out.status.success()));
    }
    for dir in env::split_paths(&env::var_os("PATH").unwrap_or_default()) {
        let real = fs::canonicalize(dir.join("initdb"));
        candidates.extend(real.ok().and_then(|p| Some(p.parent()?.to_path_buf())));
    }
    candidates.into_iter().find(has_bins).ok_or_else(|| {
        let debian = debian.display();
        let searched = format!("RELAY_PG_BINDIR (unset), {debian}/*/bin, pg_config --bindir, PATH");
        ClusterError::BinariesNotFound { searched }
    })
}

/// Run with all stdio null; true on exit status 0.
pub(super) fn quiet_ok(cmd: &mut Command) -> bool {
    let cmd = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
}

/// `test <flag> <path>` as the `postgres` user (root only).
pub(super) fn postgres_can(flag: &str, path: &Path) -> bool {
    quiet_ok(
        Command::new("runuser")
            .args(["-u", "postgres", "--", "test", flag])
            .arg(path),
    )
}

/// True when this process runs as root, so server binaries run as the `postgres` OS user
/// (initdb and pg_ctl refuse root).
pub fn running_as_root() -> bool {
    euid() == Some(0)
}

/// Effective uid: the 2nd number on `/proc/self/status`'s `Uid:` line, else `id -u`.
pub(super) fn euid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let from_proc = status.lines().find_map(|l| l.strip_prefix("Uid:"));
    if let Some(uid) = from_proc.and_then(|ids| ids.split_whitespace().nth(1)) {
        return uid.parse().ok();
    }
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The last [`TAIL_LINES`] lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_error_says_what_to_install() {
        let none = Path::new("/nonexistent");
        let err = find_bin_dir_in(Some("/nonexistent".into()), none).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("apt-get install -y postgresql"), "{msg}");
        assert!(msg.contains("RELAY_PG_BINDIR=/nonexistent"), "{msg}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: Vec<String> = (1..=30).map(|i| i.to_string()).collect();
        assert_eq!(tail(&text.join("\n")).lines().next(), Some("11"));
    }
}
