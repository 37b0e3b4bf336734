//! What one worker holds at run time: each provider's current keys (fixed for `local_jwks`,
//! replaced when a fetched set arrives for `remote_jwks`) and a bounded cache of verified tokens,
//! so a repeated token does not pay for signature verification again.

use crate::config::{AuthConfig, JwksSource};
use crate::jwks::Key;
use crate::jwt::Verified;
use std::collections::HashMap;
use std::rc::Rc;

/// Verified tokens kept per worker and provider.
pub const CACHE_CAPACITY: usize = 4096;
/// A token without `exp` is re-verified at least this often.
pub const CACHE_SECONDS_WITHOUT_EXP: u64 = 300;

pub struct KeyRing {
    sets: Vec<KeySet>,
    /// Per provider, keyed by the token itself (std's randomly keyed SipHash, then a full
    /// comparison), so a hit can only ever be the very same token.
    cache: Vec<HashMap<String, Cached>>,
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
        let cache = config.providers.iter().map(|_| HashMap::new()).collect();
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
