//! `[auth]`: how tokens are verified — the HS256 secret, a JWKS (RFC 7517) fetched from a URL or
//! read from a file, the audience and the clock leeway.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Secret};

/// `[auth]` section.
///
/// At least one of `jwt_secret` (HS256 tokens) and `jwks_url`/`jwks_file` (ES256, RS256 and
/// EdDSA tokens, chosen by `kid`) must be set ([`super::Config::require_token_keys`]); all may
/// be set at once, as during Supabase's migration from the legacy secret to signing keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret that signs the tokens: the Supabase project's legacy JWT secret. Optional
    /// once a JWKS source is set; unset, HS256 tokens are refused (`unsupported_algorithm`).
    pub jwt_secret: Secret,
    /// URL (`https://` or `http://`) of a JSON Web Key Set with the public keys of asymmetric
    /// tokens, e.g. Supabase's `https://<project>.supabase.co/auth/v1/.well-known/jwks.json`.
    /// Fetched in the background, cached for the response's `Cache-Control: max-age` (between
    /// 30 s and 1 h; 5 min without one), re-fetched at most every 30 s on an unknown `kid`; the
    /// last good set is kept while the URL fails. Empty (the default): unset.
    pub jwks_url: String,
    /// A local JWKS JSON file (same shape as `jwks_url`'s body), read at start (an unreadable
    /// or invalid file stops the relay) and again with each refresh. Unset by default.
    pub jwks_file: Option<PathBuf>,
    /// Audience required of user tokens (`aud`, default `authenticated`, as Supabase issues).
    /// An empty string disables the audience check.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in whole seconds (default `0s`).
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The longest life (`exp` − `iat`) of a token the issuer hands out (default `7d`:
    /// Supabase's longest JWT expiry). A revocation is kept this long after its
    /// `issued_before`, by when every token it covers has expired (`auth.max_token_lifetime`).
    #[serde(with = "humantime_serde")]
    pub max_token_lifetime: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: Secret::default(),
            jwks_url: String::new(),
            jwks_file: None,
            audience: "authenticated".into(),
            leeway: Duration::ZERO,
            max_token_lifetime: Duration::from_secs(7 * 86_400),
        }
    }
}

impl AuthConfig {
    /// True when a JWKS source (`jwks_url` or `jwks_file`) is configured.
    pub fn has_jwks(&self) -> bool {
        !self.jwks_url.is_empty() || self.jwks_file.is_some()
    }

    /// Checks `jwks_url` (an absolute `https` URL, or `http` to a loopback host) and
    /// `jwks_file` (not empty).
    ///
    /// Errors: one line naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.jwks_url.is_empty() {
            match reqwest::Url::parse(&self.jwks_url) {
                Ok(url) if url.scheme() == "https" && url.has_host() => {}
                // Over plain HTTP anyone on the path could publish keys of their own (and mint
                // service_role tokens): only a loopback endpoint (a sidecar, a test) is allowed.
                Ok(url) if url.scheme() == "http" => {
                    let host = url.host_str().unwrap_or("");
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let loopback = host.eq_ignore_ascii_case("localhost")
                        || host
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback());
                    if !loopback {
                        return Err(ConfigError(
                            "auth.jwks_url: http:// is accepted for a loopback host only (anyone on the path could publish keys); use https://".into(),
                        ));
                    }
                }
                Ok(_) => {
                    return Err(ConfigError(
                        "auth.jwks_url: must be an http:// or https:// URL".into(),
                    ))
                }
                Err(e) => {
                    return Err(ConfigError(format!(
                        "auth.jwks_url: is not a valid URL: {e}"
                    )))
                }
            }
        }
        if self
            .jwks_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError(
                "auth.jwks_file: must be a path (leave it out to unset)".into(),
            ));
        }
        Ok(())
    }
}
