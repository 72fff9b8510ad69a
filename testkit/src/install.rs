//! Installing the programs the kit runs (PostgreSQL, nats-server) with `apt-get` when this
//! process is root on Debian, the way `scripts/test` does it; otherwise, the one line to run.
//!
//! [`apt_install`] keeps the machine quiet: packaged services must not be left listening on
//! their default ports (5432, 4222) next to the private servers the kit starts. So while
//! `apt-get install` runs, `/usr/sbin/policy-rc.d` denies service starts (exit 101, honoured by
//! `invoke-rc.d` and `deb-systemd-invoke`) unless the machine already has a policy of its own,
//! and a service that started anyway is stopped afterwards. Blocking (`std::process`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::pgcluster::running_as_root;

/// Debian's hook that `invoke-rc.d` asks before starting a service (exit 101: denied).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
const DENY_ALL: &str =
    "#!/bin/sh\n# engagement-relay: no service starts during apt-get install\nexit 101\n";
const TAIL_LINES: usize = 20;

/// Errors from [`apt_install`].
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Installing needs root; the message is the line to run instead.
    #[error("{packages} not installed and this process is not root; run: {hint}")]
    NotRoot {
        /// The packages, space-separated.
        packages: String,
        /// [`install_hint`] for them, e.g. `sudo apt-get install -y postgresql`.
        hint: String,
    },
    /// No `apt-get` (not Debian or Ubuntu).
    #[error("{packages} not installed and there is no apt-get here; install {packages} with this system's package manager")]
    NoAptGet {
        /// The packages, space-separated.
        packages: String,
    },
    /// A package name `apt-get` would misread (empty, starting with `-`, odd characters).
    #[error("invalid package name {0:?}")]
    InvalidPackage(String),
    /// `apt-get update` or `apt-get install` failed.
    #[error("{what} failed ({status}); last output:\n{output_tail}")]
    Command {
        /// The command, e.g. `apt-get install -y -qq nats-server`.
        what: String,
        /// Its exit status, e.g. `exit status: 100`.
        status: String,
        /// The last ~20 lines of its stderr and stdout.
        output_tail: String,
    },
    /// Writing `policy-rc.d` or starting a command failed.
    #[error(transparent)]
    Io(#[from] crate::IoError),
}

fn io_err(context: impl std::fmt::Display) -> impl FnOnce(io::Error) -> InstallError {
    crate::io_error::io_err(context)
}

/// The line to run to install `packages` by hand (not root):
/// `sudo apt-get install -y <packages…>`.
pub fn install_hint(packages: &[&str]) -> String {
    format!("sudo apt-get install -y {}", packages.join(" "))
}

/// True when [`apt_install`] can work here: this process is root and `apt-get` exists.
pub fn can_apt_install() -> bool {
    running_as_root() && apt_get().is_some()
}

/// Installs Debian `packages` (e.g. `&["nats-server"]`) as root: `apt-get update -qq`, then
/// `DEBIAN_FRONTEND=noninteractive apt-get install -y -qq <packages>` with service starts
/// denied through `/usr/sbin/policy-rc.d` when the machine has none (the file is removed
/// afterwards, also on failure), then stops a packaged service that started anyway (for
/// `postgresql`, every cluster `pg_lsclusters` shows online, via `pg_ctlcluster`). `why` (e.g.
/// `"engagement-relay dev needs the PostgreSQL server"`) is logged with the first step; each
/// step logs one line (tracing, info). An empty list does nothing. Blocks for the whole
/// install (seconds to minutes, network).
///
/// Errors: [`InstallError::InvalidPackage`], [`InstallError::NotRoot`] (its message is the
/// line to run), [`InstallError::NoAptGet`], [`InstallError::Command`] (e.g. no network, an
/// unknown package), [`InstallError::Io`].
pub fn apt_install(packages: &[&str], why: &str) -> Result<(), InstallError> {
    if let Some(bad) = packages.iter().find(|p| !valid_package(p)) {
        return Err(InstallError::InvalidPackage(bad.to_string()));
    }
    if packages.is_empty() {
        return Ok(());
    }
    let list = packages.join(" ");
    if !running_as_root() {
        let hint = install_hint(packages);
        return Err(InstallError::NotRoot {
            packages: list,
            hint,
        });
    }
    let apt = apt_get().ok_or_else(|| InstallError::NoAptGet {
        packages: list.clone(),
    })?;
    tracing::info!("installing {list} ({why}): apt-get install -y {list}");
    let policy = PolicyGuard::deny_service_starts(Path::new(POLICY_RC_D))?;
    tracing::info!("apt-get update");
    let mut update = Command::new(&apt);
    run(update.args(["update", "-qq"]), "apt-get update -qq")?;
    let what = format!("apt-get install -y -qq {list}");
    tracing::info!("{what}");
    let mut install = Command::new(&apt);
    install
        .args(["install", "-y", "-qq"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut install, &what)?;
    drop(policy);
    for package in packages {
        stop_started_service(package);
    }
    tracing::info!("installed {list}");
    Ok(())
}

/// A name (optionally `=version` or `:arch`) that cannot be taken for an option.
fn valid_package(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.:=~".contains(c))
}

/// `apt-get` on `PATH`, else `/usr/bin/apt-get`.
fn apt_get() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).map(|dir| dir.join("apt-get"));
    let mut candidates = on_path.chain([PathBuf::from("/usr/bin/apt-get")]);
    candidates.find(|f| f.is_file())
}

/// `policy-rc.d` written by us, removed on drop; `None` inside when the machine has its own.
struct PolicyGuard(Option<PathBuf>);

impl PolicyGuard {
    /// Creates `path` (mode 0755) denying every service start, unless something (a file, a
    /// dangling symlink) is there already: that is the machine's policy, left alone.
    fn deny_service_starts(path: &Path) -> Result<PolicyGuard, InstallError> {
        let mut options = fs::File::options();
        options.write(true).create_new(true).mode(0o755);
        match options.open(path) {
            Ok(mut file) => {
                let written = file.write_all(DENY_ALL.as_bytes());
                let guard = PolicyGuard(Some(path.to_path_buf()));
                written.map_err(io_err(format!("writing {}", path.display())))?;
                tracing::info!(
                    "denying service starts during the install ({})",
                    path.display()
                );
                Ok(guard)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                tracing::info!("keeping the machine's own {}", path.display());
                Ok(PolicyGuard(None))
            }
            Err(e) => Err(io_err(format!("creating {}", path.display()))(e)),
        }
    }
}

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!("removed {}", path.display()),
                Err(e) => tracing::warn!(error = %e, "removing {} failed", path.display()),
            }
        }
    }
}

/// How a package's service shows up and is stopped.
#[derive(Debug, PartialEq, Eq)]
enum Service<'a> {
    /// PostgreSQL: clusters listed by `pg_lsclusters`, stopped with `pg_ctlcluster`.
    Postgres,
    /// Anything else: a process of this name (`pgrep -x`, e.g. `nats-server`), stopped as the
    /// service (systemd unit or init script) of the same name.
    Unit(&'a str),
}

/// The service `package` may start: `postgresql`/`postgresql-<n>` are PostgreSQL; any other
/// (`nats-server`, `prometheus`, …) is a process and a service of the package's own name.
fn service_of(package: &str) -> Service<'_> {
    let name = package.split(['=', ':']).next().unwrap_or(package);
    let versioned = name.strip_prefix("postgresql-");
    if name == "postgresql" || versioned.is_some_and(|v| v.chars().all(|c| c.is_ascii_digit())) {
        return Service::Postgres;
    }
    Service::Unit(name)
}

/// Stops what `package`'s install started despite the policy (logged; failures are warnings).
fn stop_started_service(package: &str) {
    match service_of(package) {
        Service::Postgres => {
            let out = Command::new("pg_lsclusters").arg("--no-header").output();
            let listing = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            for line in listing.unwrap_or_default().lines() {
                // `<version> <cluster> <port> <status> <owner> <data dir> <log>`
                let fields: Vec<&str> = line.split_whitespace().collect();
                let [version, cluster, _port, status, ..] = fields[..] else {
                    continue;
                };
                if !status.starts_with("online") {
                    continue;
                }
                tracing::info!(
                    "stopping the PostgreSQL cluster {version}/{cluster} the package started"
                );
                let mut ctl = Command::new("pg_ctlcluster");
                if !quiet_ok(ctl.args([version, cluster, "stop"])) {
                    stop_unit("postgresql");
                }
            }
        }
        Service::Unit(unit) => {
            if quiet_ok(Command::new("pgrep").args(["-x", unit])) {
                tracing::info!("stopping the {unit} service the package started");
                stop_unit(unit);
            }
        }
    }
}

/// `systemctl stop <unit>`, else `service <unit> stop`.
fn stop_unit(unit: &str) {
    let stopped = quiet_ok(Command::new("systemctl").args(["stop", unit]))
        || quiet_ok(Command::new("service").args([unit, "stop"]));
    if !stopped {
        tracing::warn!("could not stop the {unit} service (systemctl stop, service stop)");
    }
}

/// Run with all stdio null; true on exit status 0.
fn quiet_ok(cmd: &mut Command) -> bool {
    let cmd = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
}

/// Run to completion with stdin null and output captured; a failure becomes
/// [`InstallError::Command`] with the output's tail.
fn run(cmd: &mut Command, what: &str) -> Result<(), InstallError> {
    let out = cmd.stdin(Stdio::null()).output();
    let out = out.map_err(io_err(format!("running {what}")))?;
    if out.status.success() {
        return Ok(());
    }
    let output = String::from_utf8_lossy(&[out.stderr, out.stdout].concat()).into_owned();
    let lines: Vec<&str> = output.lines().collect();
    Err(InstallError::Command {
        what: what.to_string(),
        status: out.status.to_string(),
        output_tail: lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_hint_is_the_line_to_run() {
        let hint = install_hint(&["postgresql", "nats-server"]);
        assert_eq!(hint, "sudo apt-get install -y postgresql nats-server");
    }

    #[test]
    fn names_apt_get_would_misread_are_refused_before_anything_runs() {
        for bad in ["", "-y", "--purge", "a b", "x;rm", "ü"] {
            let err = apt_install(&["nats-server", bad], "test").unwrap_err();
            assert!(
                matches!(err, InstallError::InvalidPackage(_)),
                "{bad:?}: {err}"
            );
        }
        assert!(apt_install(&[], "nothing").is_ok());
        for good in [
            "nats-server",
            "postgresql-15",
            "libc6:amd64",
            "g++",
            "x=1.0-1~deb12u1",
        ] {
            assert!(valid_package(good), "{good}");
        }
    }

    #[test]
    fn the_policy_denies_starts_and_goes_away_but_a_machine_policy_stays() {
        let dir = std::env::temp_dir().join(format!("relay-policy-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy-rc.d");
        let guard = PolicyGuard::deny_service_starts(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let status = Command::new(&path).status().unwrap();
        assert_eq!(status.code(), Some(101));
        drop(guard);
        assert!(!path.exists(), "ours is removed");

        fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        drop(PolicyGuard::deny_service_starts(&path).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "#!/bin/sh\nexit 0\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn packages_map_to_their_services() {
        assert_eq!(service_of("postgresql"), Service::Postgres);
        assert_eq!(service_of("postgresql-15"), Service::Postgres);
        let nats = Service::Unit("nats-server");
        assert_eq!(service_of("nats-server"), nats);
        assert_eq!(service_of("nats-server=2.9.10-1"), nats);
        assert_eq!(
            service_of("postgresql-client"),
            Service::Unit("postgresql-client")
        );
    }

    /// The real thing, on a package that is installed already (so only `apt-get update` and a
    /// no-op install run, with the policy file written and removed). Needs root, apt-get and the
    /// network: `cargo test -p relay-testkit -- --ignored apt_install_of`.
    #[test]
    #[ignore = "runs apt-get as root"]
    fn apt_install_of_an_installed_package_succeeds_and_leaves_no_policy() {
        let had_policy = Path::new(POLICY_RC_D).exists();
        apt_install(&["nats-server"], "test").unwrap();
        assert_eq!(Path::new(POLICY_RC_D).exists(), had_policy);
    }
}
