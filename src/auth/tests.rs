//! Unit tests of the verifier: HS256, and the key set with keys generated here.

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

// ---- asymmetric tokens: keys generated here, a key set built from their JWKS ----

#[path = "../../tests/common/keys.rs"]
mod keys;

use std::sync::Arc;

use super::jwks::{Jwks, KeySet};
use super::sign::{public_jwks, SigningKey};

/// A verifier with `secret` (empty: none) and a loaded key set of `published`.
fn jwks_verifier(secret: &str, published: &[&SigningKey]) -> (Verifier, Arc<Jwks>) {
    let jwks = Arc::new(Jwks::new());
    let doc = keys::jwks_json(published).to_string();
    let (set, skipped) = KeySet::parse(doc.as_bytes()).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    jwks.replace(set);
    let config = AuthConfig {
        jwt_secret: Secret::new(secret),
        jwks_file: Some("unused".into()),
        ..AuthConfig::default()
    };
    (Verifier::with_jwks(&config, Some(jwks.clone())), jwks)
}

fn user_claims() -> serde_json::Value {
    serde_json::json!({"sub":Uuid::new_v4(),"role":"authenticated","aud":"authenticated","exp":now_s()+60})
}

#[test]
fn es256_rs256_and_eddsa_tokens_verify_by_kid() {
    let keys = [
        keys::generate(Algorithm::ES256, "ec"),
        keys::generate(Algorithm::RS256, "rsa"),
        keys::generate(Algorithm::EdDSA, "ed"),
    ];
    let (v, _) = jwks_verifier("", &keys.iter().collect::<Vec<_>>());
    for key in &keys {
        let id = Uuid::new_v4();
        let token = key
            .mint(Some(id), Role::Authenticated, Duration::from_secs(60))
            .unwrap();
        let p = v.verify(&token).unwrap();
        assert_eq!(p.user_id, Some(id), "{:?}", key.alg);
    }
}

#[test]
fn both_the_secret_and_the_key_set_may_be_configured() {
    let ed = keys::generate(Algorithm::EdDSA, "ed");
    let (v, _) = jwks_verifier("s", &[&ed]);
    let hs = mint(
        "s",
        Some(Uuid::new_v4()),
        Role::Authenticated,
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(v.verify(&hs).is_ok());
    let asym = ed
        .mint(None, Role::ServiceRole, Duration::from_secs(60))
        .unwrap();
    assert_eq!(v.verify(&asym).unwrap().role, Role::ServiceRole);
}

/// Signs `claims` with `header` (alg and kid as the test says) and key bytes of its choice.
fn forge(header: serde_json::Value, claims: &serde_json::Value, key: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(key),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{signing_input}.{sig}")
}

#[test]
fn algorithm_confusion_is_refused() {
    let ec = keys::generate(Algorithm::ES256, "ec");
    let ed = keys::generate(Algorithm::EdDSA, "ed");
    let jwk = serde_json::to_string(&ec.public_jwk().unwrap()).unwrap();
    // HS256 "signed" with the public key's JWK text, with and without a secret configured.
    let confused = forge(
        serde_json::json!({"alg":"HS256","kid":"ec"}),
        &user_claims(),
        jwk.as_bytes(),
    );
    for secret in ["", "s"] {
        let (v, _) = jwks_verifier(secret, &[&ec, &ed]);
        let err = v.verify(&confused).unwrap_err();
        assert!(
            matches!(err.code(), "unsupported_algorithm" | "invalid_signature"),
            "{secret:?}: {err:?}"
        );
    }
    // An EdDSA-signed token whose header claims ES256 with the Ed25519 key's kid.
    let (v, _) = jwks_verifier("", &[&ec, &ed]);
    let token = ed
        .mint(
            Some(Uuid::new_v4()),
            Role::Authenticated,
            Duration::from_secs(60),
        )
        .unwrap();
    let (_, rest) = token.split_once('.').unwrap();
    use base64::Engine;
    let head =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"ed"}"#);
    let err = v.verify(&format!("{head}.{rest}")).unwrap_err();
    assert_eq!(err.code(), "unsupported_algorithm", "{err:?}");
    // A token signed by another key under a published kid.
    let impostor = keys::generate(Algorithm::EdDSA, "ed");
    let token = impostor
        .mint(
            Some(Uuid::new_v4()),
            Role::Authenticated,
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(v.verify(&token).unwrap_err().code(), "invalid_signature");
}

#[test]
fn unknown_missing_kid_and_no_key_set_are_refused_with_their_codes() {
    let ed = keys::generate(Algorithm::EdDSA, "ed");
    let other = keys::generate(Algorithm::EdDSA, "other");
    let (v, _) = jwks_verifier("", &[&ed]);
    let token = other
        .mint(
            Some(Uuid::new_v4()),
            Role::Authenticated,
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(v.verify(&token).unwrap_err().code(), "unknown_kid");
    // The same token without a `kid` (refused before the signature is looked at).
    use base64::Engine;
    let head = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA"}"#);
    let (_, rest) = token.split_once('.').unwrap();
    let err = v.verify(&format!("{head}.{rest}")).unwrap_err();
    assert_eq!(err.code(), "unknown_kid", "{err:?}");
    // No set loaded yet.
    let config = AuthConfig {
        jwks_url: "http://127.0.0.1:9/jwks.json".into(),
        ..AuthConfig::default()
    };
    let empty = Verifier::with_jwks(&config, Some(Arc::new(Jwks::new())));
    assert_eq!(empty.verify(&token).unwrap_err().code(), "jwks_unavailable");
    // Without any JWKS source, asymmetric tokens are an unsupported algorithm; without a
    // secret, so are HS256 ones.
    assert_eq!(
        verifier("s").verify(&token).unwrap_err().code(),
        "unsupported_algorithm"
    );
    let hs = mint(
        "s",
        Some(Uuid::new_v4()),
        Role::Authenticated,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(v.verify(&hs).unwrap_err().code(), "unsupported_algorithm");
}

#[test]
fn pem_keys_choose_their_algorithm() {
    for alg in [Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA] {
        let key = SigningKey::from_pem(keys::generate_pem(alg).as_bytes(), "k").unwrap();
        assert_eq!(key.alg, alg);
        let (v, _) = jwks_verifier("", &[&key]);
        let token = key
            .mint(
                Some(Uuid::new_v4()),
                Role::Authenticated,
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(v.verify(&token).is_ok(), "{alg:?}");
    }
    assert!(SigningKey::from_pem(b"not a pem", "k").is_err());
}
