//! Physical backups for restore tests: a scratch directory the server's OS user may write (for a
//! WAL archive and restored data dirs), `pg_basebackup` of a running cluster, and the recovery
//! settings of a point-in-time restore (`recovery.signal` with `restore_command` and a target
//! in `postgresql.conf`, PostgreSQL 12 and later; "Archive Recovery" in the PostgreSQL docs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::binaries::quiet_ok;
use super::datadir::make_temp_root;
use super::{io_err, Cluster, ClusterError};

/// A new directory under `/tmp` (as root) or `$TMPDIR`, owned by the `postgres` OS user when
/// root (the server and `pg_basebackup` run as that user). Removed with everything in it on
/// drop, so stop clusters living in it first.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates the directory. Errors: [`ClusterError::Io`], or [`ClusterError::Command`] when
    /// `chown` fails.
    pub fn new() -> Result<ScratchDir, ClusterError> {
        let scratch = ScratchDir {
            path: make_temp_root(super::running_as_root())?,
        };
        chown_to_postgres(&scratch.path)?;
        Ok(scratch)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `<scratch>/<name>` (as root owned by `postgres`) and returns it: a WAL archive
    /// the server's `archive_command` copies into, say.
    pub fn mkdir(&self, name: &str) -> Result<PathBuf, ClusterError> {
        let dir = self.path.join(name);
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        chown_to_postgres(&dir)?;
        Ok(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            tracing::warn!(error = %e, dir = %self.path.display(), "removing scratch dir failed");
        }
    }
}

/// As root, `chown postgres: <path>` (the server and its tools run as that user); nothing
/// otherwise. Errors: [`ClusterError::Command`].
pub(super) fn chown_to_postgres(path: &Path) -> Result<(), ClusterError> {
    if !super::running_as_root() {
        return Ok(());
    }
    if quiet_ok(Command::new("chown").arg("postgres:").arg(path)) {
        Ok(())
    } else {
        Err(ClusterError::Command {
            what: format!("chown postgres: {}", path.display()),
            status: "failed".into(),
            log_tail: String::new(),
        })
    }
}

impl Cluster {
    /// `pg_basebackup -D <into> -X stream -c fast` of this running server over TCP, as the
    /// `postgres` OS user when root (a physical replication connection: initdb's pg_hba.conf
    /// trusts it from 127.0.0.1). `into` must be missing or empty and its parent writable by
    /// that user (a [`ScratchDir`]). Replication slots are not copied (`pg_replslot` is
    /// excluded from base backups). Errors: [`ClusterError::Command`] with its output.
    pub fn base_backup(&self, into: &Path) -> Result<(), ClusterError> {
        let mut cmd = self.pg("pg_basebackup");
        cmd.arg("-D")
            .arg(into)
            .args(["-X", "stream", "-c", "fast", "--no-sync", "-h", super::HOST])
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        self.run(&mut cmd, "pg_basebackup", false)
    }
}

/// Turns the base backup in `data_dir` into a point-in-time restore, as PostgreSQL 12 and
/// later want it: appends `restore_command = 'cp <archive>/%f %p'`,
/// `recovery_target_name = '<restore_point>'` (made with `pg_create_restore_point`) and
/// `recovery_target_action = 'promote'` to `postgresql.conf` and creates `recovery.signal`.
/// Started, the server replays the archive up to the restore point and promotes itself onto a
/// new timeline. Errors: [`ClusterError::Io`].
pub fn configure_recovery(
    data_dir: &Path,
    archive: &Path,
    restore_point: &str,
) -> Result<(), ClusterError> {
    let conf = data_dir.join("postgresql.conf");
    let mut text =
        fs::read_to_string(&conf).map_err(io_err(format!("reading {}", conf.display())))?;
    text.push_str(&format!(
        "\n# point-in-time restore\nrestore_command = 'cp {}/%f %p'\n\
         recovery_target_name = '{restore_point}'\nrecovery_target_action = 'promote'\n",
        archive.display()
    ));
    fs::write(&conf, text).map_err(io_err(format!("writing {}", conf.display())))?;
    let signal = data_dir.join("recovery.signal");
    fs::write(&signal, "").map_err(io_err(format!("writing {}", signal.display())))?;
    chown_to_postgres(&signal)
}
