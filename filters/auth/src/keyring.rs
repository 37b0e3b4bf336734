//! What one worker holds at run time: each provider's current keys (fixed for `local_jwks`,
//! replaced when a fetched set arrives for `remote_jwks`) and a bounded cache of verified tokens,
//! so a repeated token does not pay for signature verification again.

use crate::config::{AuthConfig, JwksSource};
use crate::jwks::Key;
use crate::jwt::Verified;
use gateway_common::bytes;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;

/// Verified tokens kept per worker and provider.
pub const CACHE_CAPACITY: usize = 4096;
/// A token without `exp` is re-verified at least this often.
pub const CACHE_SECONDS_WITHOUT_EXP: u64 = 300;

pub struct KeyRing {
    sets: Vec<KeySet>,
    /// Per provider: verified tokens, found by a hash of the token's end ([`HASHED_TAIL`]) and
    /// then compared in full, so a hit can only ever be the very same token.
    cache: Vec<HashTable<Cached>>,
    /// std's randomly keyed SipHash, so nobody outside can aim tokens at one bucket.
    tail_hasher: RandomState,
}

/// Bytes of the token's end that the cache hashes: the end of its signature.
///
/// A token is several hundred bytes, and hashing it whole took 9% of a request's time through
/// all four stages (measured natively); its end is signature, which differs between any two
/// tokens an issuer signed. Tokens that share a tail only share a bucket: lookups still compare
/// the whole token, and only verified tokens are stored, so forged tokens with a common tail
/// cannot fill one bucket.
const HASHED_TAIL: usize = 32;

fn tail_hash(hasher: &RandomState, bytes: &[u8]) -> u64 {
    hasher.hash_one(bytes.get(bytes.len().saturating_sub(HASHED_TAIL)..).unwrap_or(bytes))
}

struct KeySet {
    keys: Vec<Key>,
    /// Changes whenever the keys do, so cached verifications by old keys are not reused.
    version: u64,
}

struct Cached {
    token: Box<str>,
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
        let cache = config.providers.iter().map(|_| HashTable::new()).collect();
        KeyRing { sets, cache, tail_hasher: RandomState::new() }
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

    /// The verification of `token` (as the request carries it: bytes, not yet known to be
    /// text) if this worker verified the very same token and it is still valid at `now`.
    pub fn cached(&self, provider: usize, token: &[u8], now: u64) -> Option<Rc<Verified>> {
        let version = self.sets.get(provider)?.version;
        let hash = tail_hash(&self.tail_hasher, token);
        let entry = self.cache.get(provider)?.find(hash, |entry| bytes::equal(entry.token.as_bytes(), token))?;
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
        let hasher = &self.tail_hasher;
        if cache.len() >= CACHE_CAPACITY {
            // Bounded: drop one entry (the table's order is arbitrary, which suits a cache that
            // an attacker should not be able to steer).
            let victim =
                cache.iter().next().map(|entry| (tail_hash(hasher, entry.token.as_bytes()), entry.token.as_ptr()));
            if let Some((hash, address)) = victim {
                if let Ok(entry) = cache.find_entry(hash, |entry| entry.token.as_ptr() == address) {
                    entry.remove();
                }
            }
        }
        let valid_until = exp_plus_skew.unwrap_or(now.saturating_add(CACHE_SECONDS_WITHOUT_EXP));
        let hash = tail_hash(hasher, token.as_bytes());
        let cached = Cached { token: token.into_boxed_str(), verified, key_version: set.version, valid_until };
        match cache.entry(
            hash,
            |entry| bytes::equal(entry.token.as_bytes(), cached.token.as_bytes()),
            |entry| tail_hash(hasher, entry.token.as_bytes()),
        ) {
            Entry::Occupied(mut entry) => *entry.get_mut() = cached,
            Entry::Vacant(entry) => {
                entry.insert(cached);
            }
        }
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.iter().map(HashTable::len).sum()
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
        Rc::new(Verified {
            claims: json!({ "sub": sub }),
            payload: String::new(),
            consumer: None,
            claim_headers: vec![],
        })
    }

    #[test]
    fn a_verified_token_is_reused_until_it_expires() {
        let mut ring = ring();
        assert!(ring.has_keys(0) && !ring.has_keys(1));
        ring.remember(0, "t".into(), verified("ada"), Some(100), 10);
        assert_eq!(ring.cached(0, b"t", 100).unwrap().claims["sub"], "ada");
        assert!(ring.cached(0, b"t", 101).is_none(), "expired");
        assert!(ring.cached(0, b"other", 50).is_none());
        ring.remember(0, "u".into(), verified("grace"), None, 10);
        assert!(ring.cached(0, b"u", 10 + CACHE_SECONDS_WITHOUT_EXP).is_some());
        assert!(ring.cached(0, b"u", 11 + CACHE_SECONDS_WITHOUT_EXP).is_none(), "re-verified at least this often");
    }

    #[test]
    fn new_keys_invalidate_what_the_old_ones_verified() {
        let mut ring = ring();
        ring.remember(0, "t".into(), verified("ada"), Some(100), 10);
        ring.replace(0, Vec::new());
        assert!(ring.cached(0, b"t", 20).is_none());
        assert!(!ring.has_keys(0));
    }

    #[test]
    fn tokens_that_end_alike_are_still_told_apart() {
        let mut ring = ring();
        let tail = "s".repeat(HASHED_TAIL);
        ring.remember(0, format!("a.{tail}"), verified("ada"), Some(100), 10);
        ring.remember(0, format!("b.{tail}"), verified("grace"), Some(100), 10);
        assert_eq!(ring.cached(0, format!("a.{tail}").as_bytes(), 20).unwrap().claims["sub"], "ada");
        assert_eq!(ring.cached(0, format!("b.{tail}").as_bytes(), 20).unwrap().claims["sub"], "grace");
        assert!(ring.cached(0, format!("c.{tail}").as_bytes(), 20).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut ring = ring();
        for n in 0..CACHE_CAPACITY + 10 {
            ring.remember(0, format!("t{n}"), verified("x"), Some(100), 10);
        }
        assert_eq!(ring.cached_tokens(), CACHE_CAPACITY);
        assert!(ring.cached(0, format!("t{}", CACHE_CAPACITY + 9).as_bytes(), 20).is_some(), "the newest is kept");
    }

    #[test]
    fn a_token_verified_again_replaces_its_entry() {
        let mut ring = ring();
        ring.remember(0, "t".into(), verified("ada"), Some(100), 10);
        ring.remember(0, "t".into(), verified("ada"), Some(200), 150);
        assert_eq!(ring.cached_tokens(), 1);
        assert!(ring.cached(0, b"t", 180).is_some());
    }
}
