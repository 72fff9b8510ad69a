//! Minting with a private key (`engagement-relay token --key <pem> --kid <id>`), for tests and
//! demos of asymmetric tokens; the relay itself never signs.

use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use uuid::Uuid;

use super::{minted_claims, Role};

/// A private key read from PEM, the algorithm it signs and its key id.
pub struct SigningKey {
    /// ES256 for an EC P-256 key, RS256 for RSA, EdDSA for Ed25519.
    pub alg: Algorithm,
    /// The `kid` written in each token's header.
    pub kid: String,
    key: EncodingKey,
}

impl SigningKey {
    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`; RSA keys may also be
    /// PKCS#1, `BEGIN RSA PRIVATE KEY`): Ed25519 → EdDSA, EC P-256 → ES256, RSA → RS256.
    ///
    /// Errors: a one-line reason when the PEM is no such key (other curves included).
    pub fn from_pem(pem: &[u8], kid: &str) -> Result<Self, String> {
        let candidates = [
            (Algorithm::EdDSA, EncodingKey::from_ed_pem(pem)),
            (Algorithm::ES256, EncodingKey::from_ec_pem(pem)),
            (Algorithm::RS256, EncodingKey::from_rsa_pem(pem)),
        ];
        for (alg, key) in candidates {
            let Ok(key) = key else { continue };
            // Deriving the public key proves the key fits the algorithm (a P-384 key does not).
            Jwk::from_encoding_key(&key, alg).map_err(|e| format!("{alg:?} key: {e}"))?;
            return Ok(SigningKey::from_key(key, alg, kid));
        }
        Err("not a PEM Ed25519, EC P-256 or RSA private key (PKCS#8 expected)".into())
    }

    /// Wraps an already decoded key (`alg` must fit it; [`SigningKey::mint`] fails otherwise).
    pub fn from_key(key: EncodingKey, alg: Algorithm, kid: &str) -> Self {
        SigningKey {
            alg,
            kid: kid.to_string(),
            key,
        }
    }

    /// A token with the claims of [`super::mint`], signed with this key, `kid` in its header.
    ///
    /// Errors: only if signing fails (a key that does not fit `alg`).
    pub fn mint(
        &self,
        sub: Option<Uuid>,
        role: Role,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &minted_claims(sub, role, ttl), &self.key)
    }

    /// The public JWK (RFC 7517 §4: `kty`, `kid`, `alg`, `use: sig` and the public parameters)
    /// to publish for this key.
    ///
    /// Errors: a key that does not fit `alg`.
    pub fn public_jwk(&self) -> Result<Jwk, jsonwebtoken::errors::Error> {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg)?;
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(jwk)
    }
}

/// A JWKS document holding the public keys of `keys` (for `token --jwks` and tests).
///
/// Errors: a key that does not fit its algorithm.
pub fn public_jwks(keys: &[&SigningKey]) -> Result<JwkSet, jsonwebtoken::errors::Error> {
    Ok(JwkSet {
        keys: keys
            .iter()
            .map(|k| k.public_jwk())
            .collect::<Result<_, _>>()?,
    })
}
