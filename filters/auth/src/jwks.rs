//! Key sets (JWKS, RFC 7517) turned into verification keys, and which key may verify which
//! algorithm.
//!
//! A key is usable for an algorithm only when its type agrees (`RSA` for RS*/PS*, `EC` on the
//! right curve for ES256/ES384, `OKP`/Ed25519 for EdDSA, `oct` for HS*) and, if the key names an
//! `alg`, that is the token's. This is what stops algorithm confusion (an RSA public key used
//! as an HMAC secret). Keys that cannot be used at all (unknown types, RSA under 2048 bits,
//! encryption keys, malformed values) are skipped; a set with no usable key is refused, so
//! garbage never replaces a good key set.

use crate::rsa_key::PreparedRsa;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// RSA moduli below this many bits are refused (RFC 8725 3.5, NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;
/// A key set larger than this is refused before parsing.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// The key's own `alg`, when it names one.
    pub alg: Option<Algorithm>,
    kind: KeyKind,
    pub decoding: DecodingKey,
    /// For RSA keys: the key ready to verify (built once here, not per token).
    pub rsa: Option<PreparedRsa>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Secret,
}

impl std::fmt::Debug for Key {
    // Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("alg", &self.alg).field("kind", &self.kind).finish()
    }
}

impl Key {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        let kind_matches = match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => self.kind == KeyKind::Rsa,
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => self.kind == KeyKind::Rsa,
            Algorithm::ES256 => self.kind == KeyKind::EcP256,
            Algorithm::ES384 => self.kind == KeyKind::EcP384,
            Algorithm::EdDSA => self.kind == KeyKind::Ed25519,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.kind == KeyKind::Secret,
        };
        kind_matches && self.alg.is_none_or(|own| own == alg)
    }
}

/// Parses a JWKS document. Returns the usable keys and, for the log, why others were skipped.
pub fn parse(bytes: &[u8]) -> Result<(Vec<Key>, Vec<String>), String> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!("the key set has {} bytes, more than {MAX_JWKS_BYTES}", bytes.len()));
    }
    let document: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|error| format!("the key set is not JSON: {error}"))?;
    let entries =
        document.get("keys").and_then(serde_json::Value::as_array).ok_or("the key set has no `keys` array")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        match key(entry) {
            Ok(key) => keys.push(key),
            Err(reason) => skipped.push(format!("keys[{index}]: {reason}")),
        }
    }
    if keys.is_empty() {
        return Err(format!("the key set has no usable key ({})", skipped.join("; ")));
    }
    Ok((keys, skipped))
}

fn key(entry: &serde_json::Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|error| format!("not a supported JWK: {error}"))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (`use`: `enc`)".into());
    }
    let alg = match &jwk.common.key_algorithm {
        None => None,
        Some(named) => {
            Some(signature_algorithm(named).ok_or_else(|| format!("`alg` {named:?} is not a signature algorithm"))?)
        }
    };
    let mut prepared = None;
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|_| "the RSA modulus is not base64url")?;
            let bits = modulus.iter().skip_while(|byte| **byte == 0).count() * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!("an RSA key of about {bits} bits (at least {MIN_RSA_BITS} are required)"));
            }
            let exponent = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(rsa.e.trim_end_matches('='))
                .map_err(|_| "the RSA exponent is not base64url")?;
            prepared = Some(PreparedRsa::new(&modulus, &exponent)?);
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKey(_) => KeyKind::Secret,
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|error| format!("unusable key: {error}"))?;
    Ok(Key { kid: jwk.common.key_id.clone(), alg, kind, decoding, rsa: prepared })
}

fn signature_algorithm(named: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match named {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn fixture(name: &str) -> Value {
        let keys: Value = serde_json::from_str(include_str!("../tests/fixtures/test_keys.json")).unwrap();
        keys[name]["jwk"].clone()
    }

    fn parse_keys(keys: Vec<Value>) -> Result<(Vec<Key>, Vec<String>), String> {
        parse(json!({ "keys": keys }).to_string().as_bytes())
    }

    #[test]
    fn usable_keys_are_kept_and_the_others_skipped_with_the_reason() {
        let mut encryption = fixture("ec_p256");
        encryption["use"] = json!("enc");
        let mut secp256k1 = fixture("ec_p256");
        secp256k1["crv"] = json!("secp256k1");
        let (keys, skipped) = parse_keys(vec![
            fixture("rsa"),
            fixture("rsa_1024"),
            encryption,
            fixture("ed25519"),
            secp256k1,
            json!({"kty": "nope"}),
        ])
        .unwrap();
        let kids: Vec<_> = keys.iter().map(|key| key.kid.clone().unwrap_or_default()).collect();
        assert_eq!(kids, ["rsa-1", "ed-1"]);
        assert!(keys[0].rsa.is_some() && keys[1].rsa.is_none(), "RSA keys come prepared");
        assert_eq!(skipped.len(), 4);
        assert!(skipped[0].starts_with("keys[1]: an RSA key of about 1024 bits"), "{skipped:?}");
        assert!(skipped[1].contains("encryption key"));
        assert!(skipped[2].contains("not supported") || skipped[2].contains("JWK"), "{skipped:?}");
    }

    #[test]
    fn a_set_with_nothing_usable_or_no_keys_is_an_error() {
        assert!(parse(b"not json").unwrap_err().contains("not JSON"));
        assert!(parse(b"{}").unwrap_err().contains("no `keys` array"));
        assert!(parse_keys(vec![fixture("rsa_1024")]).unwrap_err().contains("no usable key"));
        let huge = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(parse(&huge).unwrap_err().contains("more than"));
    }

    #[test]
    fn a_key_verifies_only_its_own_family_and_its_own_alg() {
        let (keys, _) = parse_keys(vec![fixture("rsa"), fixture("ec_p256"), fixture("hmac")]).unwrap();
        let (rsa, ec, hmac) = (&keys[0], &keys[1], &keys[2]);
        assert!(rsa.accepts(Algorithm::RS256) && rsa.accepts(Algorithm::PS512));
        assert!(!rsa.accepts(Algorithm::ES256) && !rsa.accepts(Algorithm::HS256), "no algorithm confusion");
        assert!(ec.accepts(Algorithm::ES256) && !ec.accepts(Algorithm::ES384));
        assert!(hmac.accepts(Algorithm::HS512) && !hmac.accepts(Algorithm::RS256));
        let mut pinned = fixture("rsa");
        pinned["alg"] = json!("RS384");
        let (keys, _) = parse_keys(vec![pinned]).unwrap();
        assert!(keys[0].accepts(Algorithm::RS384) && !keys[0].accepts(Algorithm::RS256));
    }
}
