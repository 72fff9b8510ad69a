//! The `jwks` check: the key sets of `auth.jwks_file` and `auth.jwks_url` load as the relay
//! would load them at start (the file read, the URL fetched once), and hold usable keys.

use super::report::Check;
use super::JWKS;
use crate::auth::fetch::{self, LoadError};
use crate::auth::jwks::KeySet;
use crate::config::AuthConfig;

/// Passes without a JWKS source (HS256 only) or when every configured source loads with at
/// least one usable key (the detail lists each source's `kid`s); warns when the sources load
/// but hold no usable key; fails when one cannot be read or fetched.
pub(super) async fn jwks(auth: &AuthConfig) -> Check {
    if !auth.has_jwks() {
        return Check::pass(
            JWKS,
            "auth.jwks_url and auth.jwks_file are not set: HS256 tokens only",
        );
    }
    let mut loaded: Vec<(String, KeySet)> = Vec::new();
    if let Some(path) = &auth.jwks_file {
        match fetch::read_file_async(path).await {
            Ok(set) => loaded.push((path.display().to_string(), set)),
            Err(e) => return failed(&e),
        }
    }
    if !auth.jwks_url.is_empty() {
        let fetched = match fetch::client() {
            Ok(client) => fetch::fetch_url(&client, &auth.jwks_url).await,
            Err(e) => Err(LoadError::Url {
                url: auth.jwks_url.clone(),
                why: e.to_string(),
            }),
        };
        match fetched {
            Ok((set, _)) => loaded.push((auth.jwks_url.clone(), set)),
            Err(e) => return failed(&e),
        }
    }
    let detail = loaded
        .iter()
        .map(|(source, set)| format!("{source}: kid {}", set.kids().join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    if loaded.iter().all(|(_, set)| set.is_empty()) {
        return Check::warn(
            JWKS,
            format!("no usable key (ES256 on P-256, RS256, EdDSA on Ed25519, each with a kid) in {detail}"),
            "publish the project's signing keys; asymmetric tokens are refused unknown_kid until then",
        );
    }
    Check::pass(JWKS, detail)
}

fn failed(e: &LoadError) -> Check {
    let fix = match e {
        LoadError::File { .. } => {
            "auth.jwks_file must be a readable JSON Web Key Set ({\"keys\": [...]}, RFC 7517)"
        }
        LoadError::Url { .. } => {
            "check that this host reaches auth.jwks_url (Supabase: \
             https://<project-ref>.supabase.co/auth/v1/.well-known/jwks.json); the relay starts \
             anyway and refuses asymmetric tokens jwks_unavailable until it answers"
        }
    };
    Check::fail(JWKS, e.to_string(), fix)
}
