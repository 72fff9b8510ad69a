//! The in-memory JSON Web Key Set (RFC 7517) that verifies asymmetric tokens, and its cache
//! rules.
//!
//! [`KeySet`] maps a `kid` to one public key and the one algorithm it verifies: `kty: EC` with
//! `crv: P-256` → ES256, `kty: RSA` → RS256 (RFC 7518 §6), `kty: OKP` with `crv: Ed25519` →
//! EdDSA (RFC 8037). Keys without a `kid`, symmetric keys (`kty: oct`: a published key set is
//! public), keys whose `use` is not `sig`, whose `alg` names another algorithm, or that do not
//! parse are skipped, so one odd key never hides the others.
//!
//! [`Jwks`] holds the current set behind a read-write lock of an `Arc` (readers clone the `Arc`
//! and verify without holding the lock) and the throttle of re-fetches on an unknown `kid`;
//! `auth::fetch` fills it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Shortest interval between two re-fetches caused by tokens with an unknown `kid`.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(30);
/// Refresh interval when the response carries no usable `Cache-Control: max-age`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Shortest refresh interval, whatever `max-age` says (`max-age=0`, `no-store`).
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// Longest refresh interval, whatever `max-age` says (a rotation is seen within this).
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);

/// One verification key of the set.
#[derive(Clone)]
pub struct SetKey {
    /// The only algorithm this key verifies (derived from its type, see the module docs).
    pub alg: Algorithm,
    /// The public key.
    pub key: DecodingKey,
}

/// Public keys by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, Arc<SetKey>>,
}

/// Why a JWKS document was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON object with a `keys` array.
    #[error("not a JWKS (a JSON object with a `keys` array): {0}")]
    Shape(String),
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`); unusable keys are skipped and described in
    /// the second value (one line each, for the log).
    ///
    /// Errors: [`JwksError::Shape`] when the document is not a JWKS at all.
    pub fn parse(json: &[u8]) -> Result<(KeySet, Vec<String>), JwksError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(json).map_err(|e| JwksError::Shape(e.to_string()))?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, value) in doc.keys.into_iter().enumerate() {
            match serde_json::from_value::<Jwk>(value) {
                Ok(jwk) => match set_key(&jwk) {
                    Ok((kid, key)) => {
                        set.keys.insert(kid, key);
                    }
                    Err(why) => skipped.push(format!("key {i}: {why}")),
                },
                Err(e) => skipped.push(format!("key {i}: {e}")),
            }
        }
        Ok((set, skipped))
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&Arc<SetKey>> {
        self.keys.get(kid)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `kid`s, sorted (for logs).
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// This set plus `other`'s keys (`other` wins on a shared `kid`).
    pub fn merged(&self, other: &KeySet) -> KeySet {
        let mut keys = self.keys.clone();
        keys.extend(other.keys.iter().map(|(k, v)| (k.clone(), Arc::clone(v))));
        KeySet { keys }
    }
}

/// The `kid` and verification key of one JWK, or why it is skipped.
fn set_key(jwk: &Jwk) -> Result<(String, Arc<SetKey>), String> {
    let kid = jwk.common.key_id.clone().ok_or("no `kid`")?;
    if let Some(usage) = &jwk.common.public_key_use {
        if *usage != PublicKeyUse::Signature {
            return Err(format!("`{kid}`: `use` is not `sig`"));
        }
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!(
                "`{kid}`: symmetric keys are not accepted from a JWKS"
            ))
        }
        _ => return Err(format!("`{kid}`: unsupported key type or curve")),
    };
    if let Some(declared) = jwk.common.key_algorithm {
        let matches = matches!(
            (declared, alg),
            (KeyAlgorithm::ES256, Algorithm::ES256)
                | (KeyAlgorithm::RS256, Algorithm::RS256)
                | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
        );
        if !matches {
            return Err(format!(
                "`{kid}`: `alg` {declared:?} is not the key type's {alg:?}"
            ));
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("`{kid}`: {e}"))?;
    Ok((kid, Arc::new(SetKey { alg, key })))
}

/// The current key set of a relay, shared by every [`super::Verifier`] clone and the fetch
/// task.
#[derive(Default)]
pub struct Jwks {
    /// `None` until a set has been loaded once (tokens are then refused `jwks_unavailable`).
    current: RwLock<Option<Arc<KeySet>>>,
    /// When an unknown `kid` last caused a re-fetch.
    last_refetch: Mutex<Option<Instant>>,
    /// Wakes the fetch task early (an unknown `kid`).
    wake: tokio::sync::Notify,
}

impl Jwks {
    /// An empty store: nothing loaded yet.
    pub fn new() -> Self {
        Jwks::default()
    }

    /// The current set, or `None` if none has ever been loaded. Cheap: clones an `Arc`.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `set` the current set (atomically for readers).
    pub fn replace(&self, set: KeySet) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(set));
    }

    /// A token named a `kid` the set lacks at `now`: wakes the fetch task unless it was woken
    /// for this reason less than [`UNKNOWN_KID_REFETCH`] ago. Returns whether it was woken.
    pub fn unknown_kid_at(&self, now: Instant) -> bool {
        let mut last = self
            .last_refetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| now.saturating_duration_since(t) < UNKNOWN_KID_REFETCH) {
            return false;
        }
        *last = Some(now);
        drop(last);
        self.wake.notify_one();
        true
    }

    /// Resolves when [`Jwks::unknown_kid_at`] asks for a re-fetch (or one is pending).
    pub async fn refetch_requested(&self) {
        self.wake.notified().await;
    }
}

/// The `max-age` of a `Cache-Control` header value (RFC 9111 §5.2.2.1), in seconds;
/// `no-store` and `no-cache` count as 0. `None` when neither appears or the number is invalid.
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut found = None;
    for directive in cache_control.split(',') {
        let directive = directive.trim();
        let (name, value) = match directive.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (directive, None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if name.eq_ignore_ascii_case("max-age") {
            found = value
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
        }
    }
    found
}

/// How long to keep a fetched set before fetching again: `max-age` clamped to
/// [`MIN_REFRESH`]..=[`MAX_REFRESH`], or [`DEFAULT_REFRESH`] without one.
pub fn refresh_after(cache_control: Option<&str>) -> Duration {
    cache_control
        .and_then(max_age)
        .map_or(DEFAULT_REFRESH, |age| age.clamp(MIN_REFRESH, MAX_REFRESH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_the_directives() {
        let cases = [
            ("max-age=600", Some(600)),
            ("public, max-age=600, s-maxage=1200", Some(600)),
            ("PUBLIC, Max-Age=\"42\"", Some(42)),
            ("public, max-age=abc", None),
            ("public", None),
            ("", None),
            ("max-age=600, no-store", Some(0)),
            ("no-cache", Some(0)),
            ("max-age=-5", None),
        ];
        for (header, want) in cases {
            assert_eq!(max_age(header), want.map(Duration::from_secs), "{header}");
        }
    }

    #[test]
    fn refresh_is_clamped() {
        assert_eq!(refresh_after(None), DEFAULT_REFRESH);
        assert_eq!(refresh_after(Some("public")), DEFAULT_REFRESH);
        assert_eq!(refresh_after(Some("max-age=600")), Duration::from_secs(600));
        assert_eq!(refresh_after(Some("max-age=1")), MIN_REFRESH);
        assert_eq!(refresh_after(Some("no-store")), MIN_REFRESH);
        assert_eq!(refresh_after(Some("max-age=999999")), MAX_REFRESH);
    }

    #[test]
    fn unknown_kid_refetches_at_most_every_30_seconds() {
        let jwks = Jwks::new();
        let t0 = Instant::now();
        assert!(jwks.unknown_kid_at(t0));
        assert!(!jwks.unknown_kid_at(t0));
        assert!(!jwks.unknown_kid_at(t0 + Duration::from_secs(29)));
        assert!(jwks.unknown_kid_at(t0 + Duration::from_secs(30)));
        assert!(!jwks.unknown_kid_at(t0 + Duration::from_secs(45)));
        assert!(jwks.unknown_kid_at(t0 + Duration::from_secs(61)));
        // A clock that goes backwards does not unlock a re-fetch.
        assert!(!jwks.unknown_kid_at(t0));
    }

    #[test]
    fn odd_keys_are_skipped_not_fatal() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "wrong-alg", "alg": "ES256",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "XYZ", "kid": "alien"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "use": "sig", "alg": "EdDSA",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]});
        let (set, skipped) = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.kids(), ["ed"]);
        assert_eq!(set.get("ed").unwrap().alg, Algorithm::EdDSA);
        assert_eq!(skipped.len(), 5, "{skipped:?}");
    }

    #[test]
    fn a_document_without_keys_is_refused() {
        for doc in ["", "[]", "{}", "{\"keys\": 3}", "not json"] {
            assert!(KeySet::parse(doc.as_bytes()).is_err(), "{doc}");
        }
    }

    #[test]
    fn the_store_starts_empty_and_swaps() {
        let jwks = Jwks::new();
        assert!(jwks.current().is_none());
        jwks.replace(KeySet::default());
        let first = jwks.current().unwrap();
        assert!(first.is_empty());
        let (set, _) = KeySet::parse(
            br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
        )
        .unwrap();
        jwks.replace(set);
        assert_eq!(jwks.current().unwrap().len(), 1);
        assert!(first.is_empty(), "a reader keeps the set it took");
    }
}
