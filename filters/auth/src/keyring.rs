//! What one worker holds at run time: each provider's current keys (fixed for `local_jwks`,
//! replaced when a fetched set arrives for `remote_jwks`) and a bounded cache of verified tokens,
//! so a repeated token does not pay for signature verification again.

use crate::config::{AuthConfig, JwksSource};
use crate::jwks::Key;
use crate::jwt::Verified;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;

/// Verified tokens kept per worker and provider.
pub const CACHE_CAPACITY: usize = 4096;
/// A token without `exp` is re-verified at least this often.
pub const CACHE_SECONDS_WITHOUT_EXP: u64 = 300;

pub struct KeyRing {
    sets: Vec<KeySet>,
    /// Per provider, keyed by the token itself (hashed by [`SignatureTail`], then compared in
    /// full), so a hit can only ever be the very same token.
    cache: Vec<HashMap<String, Cached, SignatureTail>>,
}

/// Bytes of the token's end that the cache hashes: the end of its signature.
const HASHED_TAIL: usize = 32;

/// Hashes only the last [`HASHED_TAIL`] bytes of a token (std's randomly keyed SipHash over
/// them). A token is several hundred bytes, and hashing it whole took 9% of a request's time
/// through all four stages (measured natively); its end is signature, which differs between
/// any two tokens an issuer signed. Tokens that share a tail only share a bucket: lookups
/// still compare the whole token, and only verified tokens are stored, so forged tokens with
/// a common tail cannot fill one bucket.
#[derive(Default, Clone)]
struct SignatureTail(RandomState);

struct TailHasher<H>(H);

impl BuildHasher for SignatureTail {
    type Hasher = TailHasher<<RandomState as BuildHasher>::Hasher>;

    fn build_hasher(&self) -> Self::Hasher {
        TailHasher(self.0.build_hasher())
    }
}

impl<H: Hasher> Hasher for TailHasher<H> {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes.get(bytes.len().saturating_sub(HASHED_TAIL)..).unwrap_or(bytes));
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

struct KeySet {
    keys: Vec<Key>,
    /// Changes whenever the keys do, so cached verifications by old keys are not reused.
    version: u64,
}

struct Cached {
    verified: Rc<Verified>,
    key_version: u64,
    valid_until: u64,
}

impl KeyRing {
    pub fn new(config: &AuthConfig) -> KeyRing {
        let sets = config
            .providers
            .iter()
            .map(|provider| KeySet {
                keys: match &provider.jwks {
                    JwksSource::Local(keys) => keys.clone(),
                    JwksSource::Remote(_) => Vec::new(),
                },
                version: 0,
            })
            .collect();
        let cache = config.providers.iter().map(|_| HashMap::default()).collect();
        KeyRing { sets, cache }
    }

    pub fn keys(&self, provider: usize) -> &[Key] {
        self.sets.get(provider).map_or(&[], |set| set.keys.as_slice())
    }

    pub fn has_keys(&self, provider: usize) -> bool {
        !self.keys(provider).is_empty()
    }

    /// Installs a new key set for `provider` (an empty one once the last good set is too stale).
    pub fn replace(&mut self, provider: usize, keys: Vec<Key>) {
        if let Some(set) = self.sets.get_mut(provider) {
            set.keys = keys;
            set.version += 1;
        }
    }

    pub fn cached(&self, provider: usize, token: &str, now: u64) -> Option<Rc<Verified>> {
        let version = self.sets.get(provider)?.version;
        let entry = self.cache.get(provider)?.get(token)?;
        (entry.key_version == version && now <= entry.valid_until).then(|| Rc::clone(&entry.verified))
    }

    /// Remembers a successful verification until the token expires (plus the clock skew).
    pub fn remember(
        &mut self,
        provider: usize,
        token: String,
        verified: Rc<Verified>,
        exp_plus_skew: Option<u64>,
        now: u64,
    ) {
        let (Some(set), Some(cache)) = (self.sets.get(provider), self.cache.get_mut(provider)) else { return };
        if cache.len() >= CACHE_CAPACITY {
            // Bounded: drop one entry (the map's order is arbitrary, which suits a cache that
            // an attacker should not be able to steer).
            if let Some(victim) = cache.keys().next().cloned() {
                cache.remove(&victim);
            }
        }
        let valid_until = exp_plus_skew.unwrap_or(now.saturating_add(CACHE_SECONDS_WITHOUT_EXP));
        cache.insert(token, Cached { verified, key_version: set.version, valid_until });
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.iter().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ring() -> KeyRing {
        let jwks = json!({"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]}).to_string();
        let config = json!({
            "providers": {"idp": {"algorithms": ["HS256"], "local_jwks": {"inline_string": jwks}}},
            "rules": [{}]
        });
        KeyRing::new(&AuthConfig::parse(config.to_string().as_bytes()).unwrap())
    }

    fn verified(sub: &str) -> Rc<Verified> {
        Rc::new(Verified { claims: json!({ "sub": sub }), payload: String::new() })
    }

    #[test]
    fn a_verified_token_is_reused_until_it_expires() {
        let mut ring = ring();
        assert!(ring.has_keys(0) && !ring.has_keys(1));
        ring.remember(0, "t".into(), verified("ada"), Some(100), 10);
        assert_eq!(ring.cached(0, "t", 100).unwrap().claims["sub"], "ada");
        assert!(ring.cached(0, "t", 101).is_none(), "expired");
        assert!(ring.cached(0, "other", 50).is_none());
        ring.remember(0, "u".into(), verified("grace"), None, 10);
        assert!(ring.cached(0, "u", 10 + CACHE_SECONDS_WITHOUT_EXP).is_some());
        assert!(ring.cached(0, "u", 11 + CACHE_SECONDS_WITHOUT_EXP).is_none(), "re-verified at least this often");
    }

    #[test]
    fn new_keys_invalidate_what_the_old_ones_verified() {
        let mut ring = ring();
        ring.remember(0, "t".into(), verified("ada"), Some(100), 10);
        ring.replace(0, Vec::new());
        assert!(ring.cached(0, "t", 20).is_none());
        assert!(!ring.has_keys(0));
    }

    #[test]
    fn tokens_that_end_alike_are_still_told_apart() {
        let mut ring = ring();
        let tail = "s".repeat(HASHED_TAIL);
        ring.remember(0, format!("a.{tail}"), verified("ada"), Some(100), 10);
        ring.remember(0, format!("b.{tail}"), verified("grace"), Some(100), 10);
        assert_eq!(ring.cached(0, &format!("a.{tail}"), 20).unwrap().claims["sub"], "ada");
        assert_eq!(ring.cached(0, &format!("b.{tail}"), 20).unwrap().claims["sub"], "grace");
        assert!(ring.cached(0, &format!("c.{tail}"), 20).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut ring = ring();
        for n in 0..CACHE_CAPACITY + 10 {
            ring.remember(0, format!("t{n}"), verified("x"), Some(100), 10);
        }
        assert_eq!(ring.cached_tokens(), CACHE_CAPACITY);
        assert!(ring.cached(0, &format!("t{}", CACHE_CAPACITY + 9), 20).is_some(), "the newest is kept");
    }
}
