//! RSA public keys prepared once per key set. `jsonwebtoken` builds the key from its modulus
//! and exponent again for every token (parsing, checks, Montgomery set-up); here that happens
//! when the key set is installed, and each token costs only the signature check itself, done
//! by the `rsa` crate (0.10, on `crypto-bigint`). Used for RS256/384/512 and PS256/384/512.

use jsonwebtoken::Algorithm;
use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
use rsa::{BoxedUint, Pkcs1v15Sign, Pss, PublicKey};

#[derive(Clone)]
pub struct PreparedRsa(PublicKey);

impl PreparedRsa {
    /// From the JWK's big-endian modulus and exponent.
    pub fn new(modulus: &[u8], exponent: &[u8]) -> Result<PreparedRsa, String> {
        let key = PublicKey::new(BoxedUint::from_be_slice_vartime(modulus), BoxedUint::from_be_slice_vartime(exponent));
        key.map(PreparedRsa).map_err(|error| format!("unusable RSA key: {error}"))
    }

    /// Whether `signature` signs `message` (the token's `header.payload`) under `alg`; false
    /// for algorithms that are not RSA.
    pub fn verifies(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        let key = &self.0;
        let checked = match alg {
            Algorithm::RS256 => key.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message), signature),
            Algorithm::RS384 => key.verify(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(message), signature),
            Algorithm::RS512 => key.verify(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(message), signature),
            // RFC 7518 3.5: the salt is as long as the hash (`Pss::new`'s length).
            Algorithm::PS256 => key.verify(Pss::<Sha256>::new(), &Sha256::digest(message), signature),
            Algorithm::PS384 => key.verify(Pss::<Sha384>::new(), &Sha384::digest(message), signature),
            Algorithm::PS512 => key.verify(Pss::<Sha512>::new(), &Sha512::digest(message), signature),
            _ => return false,
        };
        checked.is_ok()
    }
}
