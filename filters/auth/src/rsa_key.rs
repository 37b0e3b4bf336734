//! RSA public keys prepared once per key set, and the RS256/384/512 signature check.
//!
//! `jsonwebtoken` builds the key from its modulus and exponent again for every token (parsing,
//! checks, Montgomery set-up). Here that happens once, when the key set is installed. The check
//! itself is RSASSA-PKCS1-v1_5 verification (RFC 8017 §8.2.2): `s^e mod n`, then a comparison
//! with the expected encoding of the message's hash. Everything in it is public (the key, the
//! signature, the message), so the exponentiation runs in variable time: plain square and
//! multiply over the public exponent's bits, 17 Montgomery products for e = 65537, where a
//! constant-time windowed exponentiation (what the `rsa` crate does for every operation) costs
//! about twice as many; the products themselves are this crate's (see `montgomery`). Measured
//! in Envoy: docs/benchmark.md. PS256/384/512 (rare in practice) use the `rsa` crate's
//! verification with the same prepared key.

use crate::montgomery::Modulus;
use crypto_bigint::BoxedUint;
use jsonwebtoken::Algorithm;
use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
use rsa::{Pss, PublicKey};

/// DER `DigestInfo` prefixes before the hash (RFC 8017 §9.2, note 1).
const SHA256_PREFIX: [u8; 19] =
    [0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20];
const SHA384_PREFIX: [u8; 19] =
    [0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30];
const SHA512_PREFIX: [u8; 19] =
    [0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40];

#[derive(Clone)]
pub struct PreparedRsa {
    /// The key as the `rsa` crate checked it (size, exponent); used for PSS.
    key: PublicKey,
    modulus: Modulus,
    exponent: u64,
}

impl PreparedRsa {
    /// From the JWK's big-endian modulus and exponent.
    pub fn new(modulus: &[u8], exponent: &[u8]) -> Result<PreparedRsa, String> {
        let n = BoxedUint::from_be_slice_vartime(modulus);
        let e = BoxedUint::from_be_slice_vartime(exponent);
        let key = PublicKey::new(n, e).map_err(|error| format!("unusable RSA key: {error}"))?;
        let exponent = exponent
            .iter()
            .skip_while(|byte| **byte == 0)
            .try_fold(0u64, |value, byte| value.checked_mul(256).map(|value| value | u64::from(*byte)));
        let exponent = exponent.ok_or("the RSA exponent is longer than 64 bits")?;
        let modulus = Modulus::new(modulus).ok_or("the RSA modulus is even")?;
        Ok(PreparedRsa { key, modulus, exponent })
    }

    /// Whether `signature` signs `message` (the token's `header.payload`) under `alg`; false
    /// for algorithms that are not RSA.
    pub fn verifies(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        match alg {
            Algorithm::RS256 => self.pkcs1v15(&SHA256_PREFIX, &Sha256::digest(message), signature),
            Algorithm::RS384 => self.pkcs1v15(&SHA384_PREFIX, &Sha384::digest(message), signature),
            Algorithm::RS512 => self.pkcs1v15(&SHA512_PREFIX, &Sha512::digest(message), signature),
            // RFC 7518 3.5: the salt is as long as the hash (`Pss::new`'s length).
            Algorithm::PS256 => self.key.verify(Pss::<Sha256>::new(), &Sha256::digest(message), signature).is_ok(),
            Algorithm::PS384 => self.key.verify(Pss::<Sha384>::new(), &Sha384::digest(message), signature).is_ok(),
            Algorithm::PS512 => self.key.verify(Pss::<Sha512>::new(), &Sha512::digest(message), signature).is_ok(),
            _ => false,
        }
    }

    /// RFC 8017 §8.2.2: the signature is exactly `k` bytes, below the modulus, and its `e`-th
    /// power is `00 01 FF…FF 00 || DigestInfo prefix || hash` (at least 8 bytes of `FF`).
    fn pkcs1v15(&self, prefix: &[u8], hash: &[u8], signature: &[u8]) -> bool {
        // `k` in RFC 8017.
        let length = self.modulus.length();
        let padding = length.checked_sub(3 + prefix.len() + hash.len());
        if signature.len() != length || padding.is_none_or(|padding| padding < 8) {
            return false;
        }
        // `None` when the signature is not below the modulus.
        let Some(em) = self.modulus.power(signature, self.exponent) else { return false };
        let padding = padding.unwrap_or_default();
        em.starts_with(&[0x00, 0x01])
            && em.iter().skip(2).take(padding).all(|byte| *byte == 0xff)
            && em.get(2 + padding) == Some(&0x00)
            && em.get(3 + padding..) == Some(&[prefix, hash].concat()[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::Value;

    fn fixture_key() -> PreparedRsa {
        let keys: Value = serde_json::from_str(include_str!("../tests/fixtures/test_keys.json")).unwrap();
        let part = |name: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(keys["rsa"]["jwk"][name].as_str().unwrap()).unwrap()
        };
        PreparedRsa::new(&part("n"), &part("e")).unwrap()
    }

    fn sign(alg: jsonwebtoken::Algorithm, message: &str) -> Vec<u8> {
        let keys: Value = serde_json::from_str(include_str!("../tests/fixtures/test_keys.json")).unwrap();
        let pem = keys["rsa"]["private_pem"].as_str().unwrap();
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).unwrap()
    }

    #[test]
    fn verifies_what_the_private_key_signed_and_nothing_else() {
        let key = fixture_key();
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS512] {
            let signature = sign(alg, "header.payload");
            assert!(key.verifies(alg, b"header.payload", &signature), "{alg:?}");
            assert!(!key.verifies(alg, b"header.payloaD", &signature), "{alg:?}: another message");
            let mut flipped = signature.clone();
            flipped[100] ^= 1;
            assert!(!key.verifies(alg, b"header.payload", &flipped), "{alg:?}: a changed signature");
            assert!(!key.verifies(alg, b"header.payload", &signature[1..]), "{alg:?}: a short signature");
        }
        let rs256 = sign(Algorithm::RS256, "m");
        assert!(!key.verifies(Algorithm::RS384, b"m", &rs256), "another hash");
        assert!(!key.verifies(Algorithm::ES256, b"m", &rs256));
        assert!(!key.verifies(Algorithm::RS256, b"m", &[0xff; 256]), "not below the modulus");
        assert!(!key.verifies(Algorithm::RS256, b"m", &[0; 256]));
    }
}
