//! Finding the `nats-server` binary, and the two monitoring endpoints the harness reads
//! (`/healthz`, `/jsz`) over a plain HTTP/1.0 GET on a std `TcpStream`.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::{env, fs};

use super::NatsError;

/// Where Debian's `nats-server` package puts the binary, then a common manual install.
const FALLBACKS: [&str; 2] = ["/usr/sbin/nats-server", "/usr/bin/nats-server"];
/// Longest wait for one monitoring request (connect, then the whole answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// An answer larger than this is cut (`/jsz` without details is well under 4 KiB).
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// Finds the `nats-server` binary, trying in order:
/// 1. `$RELAY_NATS_SERVER` (when set it must name an executable file; nothing else is tried);
/// 2. `nats-server` in a directory of `PATH`;
/// 3. `/usr/sbin/nats-server` (Debian's package; not on a non-root user's `PATH`), then
///    `/usr/bin/nats-server`.
///
/// Errors: [`NatsError::BinaryNotFound`], saying what was searched and how to install it.
pub fn find_nats_server() -> Result<PathBuf, NatsError> {
    find_in(
        env::var_os("RELAY_NATS_SERVER"),
        env::var_os("PATH").unwrap_or_default(),
        &FALLBACKS.map(Path::new),
    )
}

fn find_in(
    overridden: Option<OsString>,
    path: OsString,
    fallbacks: &[&Path],
) -> Result<PathBuf, NatsError> {
    if let Some(file) = overridden.map(PathBuf::from) {
        let searched = format!("RELAY_NATS_SERVER={}", file.display());
        return Some(file)
            .filter(|f| is_executable(f))
            .ok_or(NatsError::BinaryNotFound { searched });
    }
    let on_path = env::split_paths(&path).map(|dir| dir.join("nats-server"));
    let others = fallbacks.iter().map(|f| f.to_path_buf());
    on_path
        .chain(others)
        .find(|f| is_executable(f))
        .ok_or_else(|| {
            let listed: Vec<String> = fallbacks.iter().map(|f| f.display().to_string()).collect();
            let searched = format!("RELAY_NATS_SERVER (unset), PATH, {}", listed.join(", "));
            NatsError::BinaryNotFound { searched }
        })
}

/// A regular file (symlinks followed) with an execute bit.
fn is_executable(file: &Path) -> bool {
    fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `GET http://127.0.0.1:<port><path>` over HTTP/1.0: the status code and the body.
/// Errors: connect, write or read failure or timeout ([`REQUEST_TIMEOUT`] each), or an answer
/// that is not HTTP (`InvalidData`).
pub(super) fn get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    // HTTP/1.0: the server closes the connection after the answer.
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER_BYTES).read_to_end(&mut answer)?;
    parse_answer(&String::from_utf8_lossy(&answer))
}

/// `HTTP/1.x <code> …\r\n<headers>\r\n\r\n<body>` → `(code, body)`.
fn parse_answer(answer: &str) -> io::Result<(u16, String)> {
    let not_http = || io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer");
    let status_line = answer.lines().next().ok_or_else(not_http)?;
    let mut words = status_line.split_whitespace();
    let code = match (words.next(), words.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code.parse().ok(),
        _ => None,
    };
    let code = code.ok_or_else(not_http)?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((code, body.to_string()))
}

/// The JetStream meta leader's server name from a `/jsz` body
/// (`{"meta_cluster": {"leader": "n1", …}, …}`); `None` when there is none (yet), the server is
/// not clustered, or the body is not JSON.
pub(super) fn meta_leader(jsz: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(jsz).ok()?;
    let leader = value.get("meta_cluster")?.get("leader")?.as_str()?;
    Some(leader.to_string()).filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_install_it() {
        let none = find_in(None, OsString::new(), &[Path::new("/nonexistent")]).unwrap_err();
        let msg = none.to_string();
        assert!(msg.contains("apt-get install -y nats-server"), "{msg}");
        let bad = find_in(Some("/nonexistent/nats".into()), OsString::new(), &[]).unwrap_err();
        assert!(bad
            .to_string()
            .contains("RELAY_NATS_SERVER=/nonexistent/nats"));
    }

    #[test]
    fn the_override_wins_and_must_be_executable() {
        let sh = find_in(Some("/bin/sh".into()), OsString::new(), &[]).unwrap();
        assert_eq!(sh, PathBuf::from("/bin/sh"));
        let plain = env::temp_dir().join(format!("relay-not-exec-{}", std::process::id()));
        fs::write(&plain, "").unwrap();
        fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
        let not_exec = find_in(Some(plain.clone().into()), OsString::new(), &[]);
        fs::remove_file(plain).unwrap();
        assert!(not_exec.is_err());
    }

    #[test]
    fn answers_are_parsed_and_garbage_is_refused() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}";
        assert_eq!(
            parse_answer(ok).unwrap(),
            (200, "{\"status\":\"ok\"}".into())
        );
        let unavailable = "HTTP/1.0 503 Service Unavailable\r\n\r\n";
        assert_eq!(parse_answer(unavailable).unwrap().0, 503);
        for garbage in ["", "hello", "HTTP/1.1 abc", "SSH-2.0-x 200"] {
            assert!(parse_answer(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn the_meta_leader_is_read_from_jsz() {
        let jsz = r#"{"meta_cluster":{"name":"relay-test","leader":"n2","cluster_size":3}}"#;
        assert_eq!(meta_leader(jsz).as_deref(), Some("n2"));
        assert_eq!(meta_leader(r#"{"meta_cluster":{"leader":""}}"#), None);
        assert_eq!(meta_leader(r#"{"streams":0}"#), None);
        assert_eq!(meta_leader("not json"), None);
    }
}
