//! Loading the key set: `auth.jwks_file` read from disk, `auth.jwks_url` fetched over HTTP(S)
//! by a background task (reqwest with rustls), both merged into [`Jwks`].
//!
//! Rules (docs/PROTOCOL.md "Credentials"): the URL is fetched at start, then again after the
//! response's `Cache-Control: max-age` ([`refresh_after`]), or early when a token names an
//! unknown `kid` (at most every 30 s, [`Jwks::unknown_kid_at`]). A failed fetch keeps the last
//! good set and is retried after 1 s, doubling up to 30 s. The file is re-read with every
//! refresh; an unreadable file keeps its last good keys too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::jwks::{refresh_after, Jwks, KeySet, DEFAULT_REFRESH, MIN_REFRESH};
use crate::config::AuthConfig;
use crate::metrics::{JWKS_FETCHES, JWKS_KEYS, JWKS_LAST_SUCCESS};

/// Longest wait for one JWKS response (connect, headers and body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS body accepted (Supabase's holds a few keys: well under 16 KiB).
const MAX_BODY: usize = 1 << 20;
/// First retry delay after a failed fetch (doubled up to [`MIN_REFRESH`]).
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Why a key set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `auth.jwks_file` could not be read or is not a JWKS.
    #[error("auth.jwks_file ({path}): {why}")]
    File {
        /// The configured path.
        path: PathBuf,
        /// The I/O or parse error.
        why: String,
    },
    /// `auth.jwks_url` failed (connection, status, size or body).
    #[error("auth.jwks_url ({url}): {why}")]
    Url {
        /// The configured URL.
        url: String,
        /// What went wrong.
        why: String,
    },
}

/// Reads and parses a JWKS file (blocking: for start-up); skipped keys are logged.
///
/// Errors: [`LoadError::File`].
pub fn read_file(path: &Path) -> Result<KeySet, LoadError> {
    parse_file(path, std::fs::read(path))
}

/// [`read_file`] without blocking the runtime thread (for the refresh task).
///
/// Errors: [`LoadError::File`].
pub async fn read_file_async(path: &Path) -> Result<KeySet, LoadError> {
    parse_file(path, tokio::fs::read(path).await)
}

fn parse_file(path: &Path, read: std::io::Result<Vec<u8>>) -> Result<KeySet, LoadError> {
    let fail = |why: String| LoadError::File {
        path: path.to_path_buf(),
        why,
    };
    let bytes = read.map_err(|e| fail(e.to_string()))?;
    let (set, skipped) = KeySet::parse(&bytes).map_err(|e| fail(e.to_string()))?;
    for why in skipped {
        warn!(file = %path.display(), "jwks: skipped {why}");
    }
    Ok(set)
}

/// Fetches and parses the JWKS at `url`; returns the set and how long to keep it.
///
/// Errors: [`LoadError::Url`] for a transport error, a non-2xx status, a body over 1 MiB or a
/// document that is not a JWKS.
pub async fn fetch_url(
    client: &reqwest::Client,
    url: &str,
) -> Result<(KeySet, Duration), LoadError> {
    let fail = |why: String| LoadError::Url {
        url: url.to_string(),
        why,
    };
    let mut response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("HTTP {}", response.status())));
    }
    let ttl = refresh_after(
        response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
    );
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(fail("body larger than 1 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    let (set, skipped) = KeySet::parse(&body).map_err(|e| fail(e.to_string()))?;
    for why in skipped {
        warn!(url, "jwks: skipped {why}");
    }
    Ok((set, ttl))
}

/// The HTTP client JWKS fetches use: rustls with Mozilla's roots, a 10 s timeout, redirects to
/// https only (at most 5), the relay's `User-Agent`.
///
/// Errors: reqwest's, when its TLS backend cannot be initialised.
pub fn client() -> reqwest::Result<reqwest::Client> {
    // Redirects are followed to https only (a redirect to http would hand the key set to
    // anyone on the path), at most 5.
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("more than 5 redirects")
        } else if attempt.url().scheme() != "https" {
            attempt.error("redirect to a URL that is not https")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .redirect(redirects)
        .timeout(FETCH_TIMEOUT)
        .user_agent(concat!("engagement-relay/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Loads `auth.jwks_file` into `jwks` now (so a bad file stops the start) and, when
/// `auth.jwks_url` is set, spawns the task that keeps the set fresh until `shutdown`.
///
/// Errors: [`LoadError::File`] for an unreadable or invalid file; the URL is never waited for
/// (tokens are refused `jwks_unavailable` until its first answer when there is no file).
pub fn start(
    config: &AuthConfig,
    jwks: Arc<Jwks>,
    shutdown: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, LoadError> {
    let file = config.jwks_file.clone();
    let file_set = match &file {
        Some(path) => {
            let set = read_file(path)?;
            info!(file = %path.display(), kids = ?set.kids(), "jwks: loaded");
            publish(&jwks, set.clone());
            Some(set)
        }
        None => None,
    };
    let source = match (config.jwks_url.is_empty(), &file) {
        (true, None) => return Ok(None),
        // A file alone is re-read every DEFAULT_REFRESH and on an unknown kid, so a key
        // withdrawn from it is refused without a restart.
        (true, Some(_)) => None,
        (false, _) => {
            let client = client().map_err(|e| LoadError::Url {
                url: config.jwks_url.clone(),
                why: e.to_string(),
            })?;
            Some((client, config.jwks_url.clone()))
        }
    };
    let task = Refresher {
        source,
        file,
        file_set,
        url_set: None,
        jwks,
    };
    Ok(Some(tokio::spawn(task.run(shutdown))))
}

/// The background task's state: the last good set of each source.
struct Refresher {
    /// `auth.jwks_url` and the client fetching it, when set.
    source: Option<(reqwest::Client, String)>,
    file: Option<PathBuf>,
    file_set: Option<KeySet>,
    url_set: Option<KeySet>,
    jwks: Arc<Jwks>,
}

impl Refresher {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut retry = FIRST_RETRY;
        loop {
            let wait = match &self.source {
                None => DEFAULT_REFRESH,
                Some((client, url)) => match fetch_url(client, url).await {
                    Ok((set, ttl)) => {
                        metrics::counter!(JWKS_FETCHES, "result" => "ok").increment(1);
                        metrics::gauge!(JWKS_LAST_SUCCESS).set(unix_now());
                        info!(url = %url, kids = ?set.kids(), refresh_s = ttl.as_secs(), "jwks: fetched");
                        self.url_set = Some(set);
                        retry = FIRST_RETRY;
                        ttl
                    }
                    Err(e) => {
                        metrics::counter!(JWKS_FETCHES, "result" => "error").increment(1);
                        warn!(
                            "jwks: {e}; keeping the last good key set, retrying in {}s",
                            retry.as_secs()
                        );
                        let wait = retry;
                        retry = (retry * 2).min(MIN_REFRESH);
                        wait
                    }
                },
            };
            if let Some(path) = &self.file {
                match read_file_async(path).await {
                    Ok(set) => self.file_set = Some(set),
                    Err(e) => warn!("jwks: {e}; keeping its last good keys"),
                }
            }
            self.publish();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.jwks.refetch_requested() => {}
            }
        }
    }

    /// Merges the sources' last good sets into the store (nothing before the first success).
    fn publish(&self) {
        let set = match (&self.file_set, &self.url_set) {
            (None, None) => return,
            (Some(f), None) => f.clone(),
            (None, Some(u)) => u.clone(),
            (Some(f), Some(u)) => f.merged(u),
        };
        publish(&self.jwks, set);
    }
}

/// Makes `set` current and exports its size ([`JWKS_KEYS`]).
fn publish(jwks: &Jwks, set: KeySet) {
    metrics::gauge!(JWKS_KEYS).set(set.len() as f64);
    jwks.replace(set);
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
