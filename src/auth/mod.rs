//! JWT validation and minting: Supabase-issued tokens → [`Principal`].
//!
//! Accepted algorithms (docs/PROTOCOL.md "Credentials"): HS256 with `auth.jwt_secret` (the
//! legacy project secret), and ES256, RS256 and EdDSA with the key of the header's `kid` in the
//! JWKS of `auth.jwks_url`/`auth.jwks_file` (Supabase's asymmetric signing keys). A token's
//! `alg` must be the one its key type verifies ([`jwks`]), so an HS256 token "signed" with a
//! public key is only ever checked against the secret, and `alg: none` is refused.
//! Header parameters that name keys elsewhere (`jku`, `x5u`, `jwk`) are ignored.
//!
//! Claims used (docs/PROTOCOL.md "Credentials"): `sub` (the user's UUID), `role` (`authenticated`,
//! `service_role`; `anon` is refused), `exp` (required), `nbf` (optional), `aud` (must contain
//! `auth.audience` for user tokens; Supabase's service-role keys carry no `aud`).

pub mod fetch;
pub mod jwks;
pub mod revocations;
pub mod sign;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::AuthConfig;

/// Who a session acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A signed-in user: receives only rows whose owner column is its `sub`.
    Authenticated,
    /// The service role: receives every row.
    ServiceRole,
}

impl Role {
    /// The claim value (`authenticated` or `service_role`), also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Authenticated => "authenticated",
            Role::ServiceRole => "service_role",
        }
    }
}

/// A validated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub` as a UUID; always present for [`Role::Authenticated`], optional for the service role.
    pub user_id: Option<Uuid>,
    /// The role claim.
    pub role: Role,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: i64,
    /// `iat`, seconds since the Unix epoch (`None`: the token has none).
    pub issued_at: Option<i64>,
}

impl Principal {
    /// Whose events it receives: its `sub` for a user, `None` (every owner) for the service
    /// role.
    pub fn owner(&self) -> Option<Uuid> {
        match self.role {
            Role::Authenticated => self.user_id,
            Role::ServiceRole => None,
        }
    }
}

/// Why a token was refused. [`AuthError::code`] is the machine-readable code of the JSON error
/// body, [`AuthError::status`] the HTTP status (401 for a bad token, 403 for a valid token whose
/// role may not subscribe).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the `Authorization` header nor the `access_token` parameter.
    #[error("no token: send `Authorization: Bearer <jwt>` or the `access_token` query parameter")]
    Missing,
    /// Not a JWT, or its header or claims do not parse.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify with the configured secret or the `kid`'s key.
    #[error("invalid signature")]
    BadSignature,
    /// An algorithm the relay does not accept (including `none`), HS256 without
    /// `auth.jwt_secret`, an asymmetric one without a JWKS source, or an `alg` other than the
    /// one the `kid`'s key type verifies.
    #[error("unsupported algorithm: {0}")]
    Algorithm(String),
    /// An asymmetric token whose `kid` is missing or not in the key set (a re-fetch of
    /// `auth.jwks_url` is started, at most every 30 s).
    #[error("unknown key id: {0}")]
    UnknownKid(String),
    /// An asymmetric token while no key set has been loaded yet (`auth.jwks_url` has not
    /// answered since the start).
    #[error("no JWKS loaded yet: auth.jwks_url has not answered; try again shortly")]
    JwksUnavailable,
    /// The token's user has a revocation covering it (`iat` before the revocation's
    /// `issued_before`, or no `iat`): `POST /v1/admin/revocations`.
    #[error(
        "the token was revoked (issued before {issued_before}); sign in again for a new token"
    )]
    Revoked {
        /// The revocation's instant, RFC 3339.
        issued_before: String,
    },
    /// `exp` has passed.
    #[error("Token has expired {ago_s} seconds ago")]
    Expired {
        /// Seconds since expiry (at least 0).
        ago_s: i64,
    },
    /// `nbf` is in the future.
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    /// `aud` does not contain the configured audience.
    #[error("invalid audience: expected `{0}`")]
    Audience(String),
    /// A required claim is missing or invalid (`sub`, `role`, `exp`).
    #[error("invalid claims: {0}")]
    Claims(String),
    /// A valid token whose role may not subscribe (`anon`, or an unknown role).
    #[error("role `{0}` may not subscribe: use a signed-in user's token or the service role")]
    Forbidden(String),
}

impl AuthError {
    /// Error code for JSON bodies and the `relay_auth_failures_total{reason}` label.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::BadSignature => "invalid_signature",
            AuthError::Algorithm(_) => "unsupported_algorithm",
            AuthError::UnknownKid(_) => "unknown_kid",
            AuthError::JwksUnavailable => "jwks_unavailable",
            AuthError::Revoked { .. } => "token_revoked",
            AuthError::Expired { .. } => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::Audience(_) => "invalid_audience",
            AuthError::Claims(_) => "invalid_claims",
            AuthError::Forbidden(_) => "role_not_allowed",
        }
    }

    /// HTTP status of a refused upgrade: 403 for [`AuthError::Forbidden`], else 401.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Forbidden(_) => 403,
            _ => 401,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    /// Required; optional here so a missing `exp` is reported as such, not as bad JSON.
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(a) => a == wanted,
            Audience::Many(list) => list.iter().any(|a| a == wanted),
        }
    }
}

/// Validates tokens: HS256 with the secret, ES256/RS256/EdDSA with the key set by `kid`.
/// Cheap to clone (the key set is shared); verification is synchronous and never waits for the
/// network.
#[derive(Clone)]
pub struct Verifier {
    /// `auth.jwt_secret`, when set.
    secret: Option<DecodingKey>,
    /// The key set, when `auth.jwks_url` or `auth.jwks_file` is set.
    jwks: Option<Arc<jwks::Jwks>>,
    /// Validation rules for HS256, ES256, RS256 and EdDSA (one algorithm each).
    validations: [(Algorithm, Validation); 4],
    audience: String,
    leeway_s: u64,
    /// Revocations in force (shared with whoever fills them).
    revocations: Arc<revocations::Revocations>,
}

impl Verifier {
    /// A verifier for `auth.jwt_secret`, `auth.audience` and `auth.leeway`, without a key set
    /// (asymmetric tokens are refused `unsupported_algorithm`).
    pub fn new(config: &AuthConfig) -> Self {
        Verifier::with_jwks(config, None)
    }

    /// A verifier that also accepts asymmetric tokens whose `kid` is in `jwks` (filled by
    /// [`fetch::start`]).
    pub fn with_jwks(config: &AuthConfig, jwks: Option<Arc<jwks::Jwks>>) -> Self {
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = config.leeway.as_secs();
            v.validate_nbf = true;
            // The audience is checked by role below: service-role keys carry none.
            v.validate_aud = false;
            v.set_required_spec_claims(&["exp"]);
            (alg, v)
        };
        Verifier {
            secret: (!config.jwt_secret.is_empty())
                .then(|| DecodingKey::from_secret(config.jwt_secret.expose().as_bytes())),
            jwks,
            validations: [
                validation(Algorithm::HS256),
                validation(Algorithm::ES256),
                validation(Algorithm::RS256),
                validation(Algorithm::EdDSA),
            ],
            audience: config.audience.clone(),
            leeway_s: config.leeway.as_secs(),
            revocations: Arc::default(),
        }
    }

    /// The revocations this verifier refuses tokens by.
    pub fn revocations(&self) -> &Arc<revocations::Revocations> {
        &self.revocations
    }

    /// Clock skew tolerated on `exp`, in seconds (`auth.leeway`).
    pub fn leeway_s(&self) -> i64 {
        i64::try_from(self.leeway_s).unwrap_or(i64::MAX)
    }

    /// Validates `token` and returns who it speaks for.
    ///
    /// Errors: every [`AuthError`] but [`AuthError::Missing`]; [`AuthError::Revoked`] for a
    /// token a revocation covers.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let Some(header) = read_header(token) else {
            return Err(AuthError::Malformed(
                "not a JWT (header.claims.signature)".into(),
            ));
        };
        let alg = match header.alg.as_deref() {
            Some("HS256") => Algorithm::HS256,
            Some("ES256") => Algorithm::ES256,
            Some("RS256") => Algorithm::RS256,
            Some("EdDSA") => Algorithm::EdDSA,
            Some(other) => return Err(AuthError::Algorithm(format!("`{other}` is not accepted"))),
            None => return Err(AuthError::Algorithm("the header has no `alg`".into())),
        };
        let owned;
        let key = if alg == Algorithm::HS256 {
            self.secret.as_ref().ok_or_else(|| {
                AuthError::Algorithm("HS256 needs auth.jwt_secret, which is not set".into())
            })?
        } else {
            owned = self.set_key(alg, header.kid.as_deref())?;
            &owned.key
        };
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or_else(|| AuthError::Algorithm(format!("{alg:?}")))?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| map_error(token, e.into_kind()))?
            .claims;
        let principal = principal_from(claims, &self.audience)?;
        if let Some(user) = principal.user_id {
            if let Some(r) = self.revocations.refuses(user, principal.issued_at) {
                let at = chrono::DateTime::from_timestamp_micros(r.issued_before_us)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                    .unwrap_or_default();
                return Err(AuthError::Revoked { issued_before: at });
            }
        }
        Ok(principal)
    }

    /// The key set's key for `kid`, checked against the token's `alg`.
    fn set_key(&self, alg: Algorithm, kid: Option<&str>) -> Result<Arc<jwks::SetKey>, AuthError> {
        let Some(store) = &self.jwks else {
            return Err(AuthError::Algorithm(format!(
                "{alg:?} needs auth.jwks_url or auth.jwks_file, which are not set"
            )));
        };
        let kid = kid.ok_or_else(|| AuthError::UnknownKid("the header has no `kid`".into()))?;
        let set = store.current().ok_or(AuthError::JwksUnavailable)?;
        let Some(key) = set.get(kid) else {
            store.unknown_kid_at(Instant::now());
            return Err(AuthError::UnknownKid(format!("`{kid}` is not in the JWKS")));
        };
        if key.alg != alg {
            return Err(AuthError::Algorithm(format!(
                "key `{kid}` verifies {:?}, not {alg:?}",
                key.alg
            )));
        }
        Ok(Arc::clone(key))
    }
}

fn map_error(token: &str, kind: ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => {
            AuthError::Algorithm("the key does not verify this algorithm".into())
        }
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::ExpiredSignature => {
            // The signature verified before expiry was checked, so the claims are genuine.
            let exp = jsonwebtoken::dangerous::insecure_decode::<Claims>(token)
                .ok()
                .and_then(|d| d.claims.exp)
                .unwrap_or_else(now_s);
            AuthError::Expired {
                ago_s: (now_s() - exp).max(0),
            }
        }
        ErrorKind::MissingRequiredClaim(c) => AuthError::Claims(format!("missing `{c}`")),
        ErrorKind::InvalidClaimFormat(c) => AuthError::Claims(format!("invalid `{c}`")),
        ErrorKind::Json(e) => AuthError::Malformed(format!("claims: {e}")),
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEddsaKey => {
            AuthError::BadSignature
        }
        other => AuthError::Malformed(format!("{other:?}")),
    }
}

/// The parts of a token's header read before choosing a key.
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

/// The `alg` and `kid` of a token's header, read without trusting anything else in it (so
/// `none` and unknown algorithms are reported as such rather than as malformed JSON). `None`
/// when the first segment is not base64url JSON.
fn read_header(token: &str) -> Option<RawHeader> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let text = |name: &str| value.get(name).and_then(|v| v.as_str()).map(String::from);
    Some(RawHeader {
        alg: text("alg"),
        kid: text("kid"),
    })
}

fn principal_from(claims: Claims, audience: &str) -> Result<Principal, AuthError> {
    let role = match claims.role.as_deref() {
        Some("authenticated") => Role::Authenticated,
        Some("service_role") => Role::ServiceRole,
        Some(other) => return Err(AuthError::Forbidden(other.to_string())),
        None => return Err(AuthError::Claims("missing `role`".into())),
    };
    let user_id = match (&claims.sub, role) {
        (Some(sub), _) => match Uuid::parse_str(sub) {
            Ok(id) => Some(id),
            Err(_) if role == Role::ServiceRole => None,
            Err(_) => return Err(AuthError::Claims("`sub` is not a UUID".into())),
        },
        (None, Role::ServiceRole) => None,
        (None, Role::Authenticated) => return Err(AuthError::Claims("missing `sub`".into())),
    };
    if role == Role::Authenticated && !audience.is_empty() {
        let ok = claims.aud.as_ref().is_some_and(|a| a.contains(audience));
        if !ok {
            return Err(AuthError::Audience(audience.to_string()));
        }
    }
    let expires_at = claims
        .exp
        .ok_or_else(|| AuthError::Claims("missing `exp`".into()))?;
    Ok(Principal {
        user_id,
        role,
        expires_at,
        issued_at: claims.iat,
    })
}

/// Who signed what, for the audit log: a token's `sub` claim (any string, a service key's
/// too) and its header's `kid`. Read without verifying: call it only on a token
/// [`Verifier::verify`] accepted.
pub fn token_identity(token: &str) -> (Option<String>, Option<String>) {
    let kid = read_header(token).and_then(|h| h.kid);
    let sub = jsonwebtoken::dangerous::insecure_decode::<Claims>(token)
        .ok()
        .and_then(|d| d.claims.sub);
    (sub, kid)
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Mints an HS256 token as Supabase would issue it: `sub` (when given), `role`, `aud`
/// `authenticated` for users, `iat`, `exp` = now + `ttl`, `iss` `engagement-relay`.
///
/// Errors: only if signing fails (it does not for HS256 with any secret).
pub fn mint(
    secret: &str,
    sub: Option<Uuid>,
    role: Role,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &minted_claims(sub, role, ttl),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// The claims of a minted token (see [`mint`]).
fn minted_claims(sub: Option<Uuid>, role: Role, ttl: Duration) -> Claims {
    let now = now_s();
    Claims {
        sub: sub.map(|s| s.to_string()),
        role: Some(role.as_str().to_string()),
        exp: Some(now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))),
        iat: Some(now),
        aud: (role == Role::Authenticated).then(|| Audience::One("authenticated".into())),
        iss: Some("engagement-relay".into()),
    }
}

#[cfg(test)]
mod tests;
