//! JWT validation and minting: Supabase-issued HS256 tokens → [`Principal`].
//!
//! Claims used (docs/PROTOCOL.md "Credentials"): `sub` (the user's UUID), `role` (`authenticated`,
//! `service_role`; `anon` is refused), `exp` (required), `nbf` (optional), `aud` (must contain
//! `auth.audience` for user tokens; Supabase's service-role keys carry no `aud`).

use std::time::Duration;

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
    /// The signature does not verify with the configured secret.
    #[error("invalid signature")]
    BadSignature,
    /// Signed with an algorithm other than HS256 (including `none`).
    #[error("unsupported algorithm: only HS256 tokens are accepted")]
    Algorithm,
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
            AuthError::Algorithm => "unsupported_algorithm",
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

/// Validates tokens with the configured HS256 secret.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    audience: String,
}

impl Verifier {
    /// A verifier for `auth.jwt_secret`, `auth.audience` and `auth.leeway`.
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        // The audience is checked by role below: service-role keys carry none.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Verifier {
            key: DecodingKey::from_secret(config.jwt_secret.expose().as_bytes()),
            validation,
            audience: config.audience.clone(),
        }
    }

    /// Clock skew tolerated on `exp`, in seconds (`auth.leeway`).
    pub fn leeway_s(&self) -> i64 {
        self.validation.leeway as i64
    }

    /// Validates `token` and returns who it speaks for.
    ///
    /// Errors: every [`AuthError`] but [`AuthError::Missing`].
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        match header_alg(token) {
            Some(alg) if alg == "HS256" => {}
            Some(_) => return Err(AuthError::Algorithm),
            None => {
                return Err(AuthError::Malformed(
                    "not a JWT (header.claims.signature)".into(),
                ))
            }
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| self.map_error(token, e.into_kind()))?
            .claims;
        principal_from(claims, &self.audience)
    }

    fn map_error(&self, token: &str, kind: ErrorKind) -> AuthError {
        match kind {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm => AuthError::Algorithm,
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
            other => AuthError::Malformed(format!("{other:?}")),
        }
    }
}

/// The `alg` of a token's header, read without trusting anything else in it (so `none` and
/// unknown algorithms are reported as such rather than as malformed JSON).
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(String::from)
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
    })
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
    let now = now_s();
    let claims = Claims {
        sub: sub.map(|s| s.to_string()),
        role: Some(role.as_str().to_string()),
        exp: Some(now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))),
        iat: Some(now),
        aud: (role == Role::Authenticated).then(|| Audience::One("authenticated".into())),
        iss: Some("engagement-relay".into()),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn verifier(secret: &str) -> Verifier {
        Verifier::new(&AuthConfig {
            jwt_secret: Secret::new(secret),
            ..AuthConfig::default()
        })
    }

    fn sign(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn a_minted_user_token_verifies() {
        let id = Uuid::new_v4();
        let t = mint("s", Some(id), Role::Authenticated, Duration::from_secs(60)).unwrap();
        let p = verifier("s").verify(&t).unwrap();
        assert_eq!(p.user_id, Some(id));
        assert_eq!(p.role, Role::Authenticated);
    }

    #[test]
    fn a_service_token_needs_no_sub_nor_audience() {
        let t = sign(
            serde_json::json!({"role":"service_role","exp":now_s()+60,"iss":"supabase"}),
            "s",
        );
        let p = verifier("s").verify(&t).unwrap();
        assert_eq!((p.role, p.user_id), (Role::ServiceRole, None));
    }

    #[test]
    fn refusals_carry_their_codes() {
        let v = verifier("s");
        let exp = now_s() + 60;
        let cases = [
            ("not-a-jwt".to_string(), "malformed_token"),
            (
                sign(
                    serde_json::json!({"sub":Uuid::new_v4(),"role":"authenticated","aud":"authenticated","exp":exp}),
                    "other",
                ),
                "invalid_signature",
            ),
            (
                sign(
                    serde_json::json!({"sub":Uuid::new_v4(),"role":"authenticated","aud":"authenticated","exp":now_s()-30}),
                    "s",
                ),
                "token_expired",
            ),
            (
                sign(serde_json::json!({"role":"anon","exp":exp}), "s"),
                "role_not_allowed",
            ),
            (
                sign(
                    serde_json::json!({"role":"authenticated","aud":"authenticated","exp":exp}),
                    "s",
                ),
                "invalid_claims",
            ),
            (
                sign(
                    serde_json::json!({"sub":"bob","role":"authenticated","aud":"authenticated","exp":exp}),
                    "s",
                ),
                "invalid_claims",
            ),
            (
                sign(
                    serde_json::json!({"sub":Uuid::new_v4(),"role":"authenticated","exp":exp}),
                    "s",
                ),
                "invalid_audience",
            ),
            (
                sign(
                    serde_json::json!({"sub":Uuid::new_v4(),"role":"authenticated","aud":"authenticated"}),
                    "s",
                ),
                "invalid_claims",
            ),
        ];
        for (token, code) in cases {
            assert_eq!(v.verify(&token).unwrap_err().code(), code, "{token}");
        }
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(
            serde_json::json!({"sub":Uuid::new_v4(),"role":"authenticated","aud":"authenticated","exp":now_s()+60})
                .to_string(),
        );
        for token in [format!("{head}.{body}."), format!("{head}.{body}")] {
            let err = verifier("s").verify(&token).unwrap_err();
            assert!(err.status() == 401, "{err:?}");
        }
    }

    #[test]
    fn expiry_reports_how_long_ago() {
        let t = sign(
            serde_json::json!({"sub":Uuid::new_v4(),"role":"authenticated","aud":"authenticated","exp":now_s()-42}),
            "s",
        );
        match verifier("s").verify(&t) {
            Err(AuthError::Expired { ago_s }) => assert!((42..45).contains(&ago_s)),
            other => panic!("{other:?}"),
        }
    }
}
