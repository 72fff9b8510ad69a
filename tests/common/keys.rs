//! Signing keys generated at test time (ES256 on P-256, RS256 on 2048-bit RSA, EdDSA on
//! Ed25519), as [`SigningKey`]s and as PKCS#8 PEM, plus a JWKS document for a set of them.
//! Also compiled into the library's unit tests (`src/auth/tests.rs`, by `#[path]`): the parent
//! module brings `SigningKey` and `public_jwks` (from `auth::sign`) into scope.

#![allow(dead_code)]

use super::{public_jwks, SigningKey};
use jsonwebtoken::{Algorithm, EncodingKey};

/// A fresh key of `alg`'s type (ES256, RS256 or EdDSA) with this `kid`.
pub fn generate(alg: Algorithm, kid: &str) -> SigningKey {
    let der = private_der(alg);
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(&der),
        Algorithm::RS256 => EncodingKey::from_rsa_der(&der),
        Algorithm::EdDSA => EncodingKey::from_ed_der(&der),
        other => panic!("no test keys for {other:?}"),
    };
    SigningKey::from_key(key, alg, kid)
}

/// A fresh private key of `alg`'s type as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
pub fn generate_pem(alg: Algorithm) -> String {
    let der = match alg {
        Algorithm::RS256 => {
            use rsa::pkcs8::EncodePrivateKey;
            rsa_key().to_pkcs8_der().unwrap().as_bytes().to_vec()
        }
        _ => private_der(alg),
    };
    pem("PRIVATE KEY", &der)
}

/// The JWKS (`{"keys": [...]}`) publishing these keys' public halves.
pub fn jwks_json(keys: &[&SigningKey]) -> serde_json::Value {
    serde_json::to_value(public_jwks(keys).unwrap()).unwrap()
}

/// PKCS#8 DER for EC and Ed25519 keys, PKCS#1 DER for RSA (what `EncodingKey::from_*_der`
/// expects with jsonwebtoken's rust_crypto backend).
fn private_der(alg: Algorithm) -> Vec<u8> {
    match alg {
        Algorithm::ES256 => {
            use p256::pkcs8::EncodePrivateKey;
            let secret = loop {
                if let Ok(k) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
                    break k;
                }
            };
            secret.to_pkcs8_der().unwrap().as_bytes().to_vec()
        }
        Algorithm::RS256 => {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            rsa_key().to_pkcs1_der().unwrap().as_bytes().to_vec()
        }
        Algorithm::EdDSA => {
            // PKCS#8 v1 (RFC 8410 §7), as `openssl genpkey -algorithm ed25519` writes it:
            // jsonwebtoken derives the public key only from this 48-byte form (ed25519-dalek's
            // own encoder writes v2, with the public key).
            let mut der = vec![
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20,
            ];
            der.extend_from_slice(&rand::random::<[u8; 32]>());
            der
        }
        other => panic!("no test keys for {other:?}"),
    }
}

fn rsa_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap()
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
