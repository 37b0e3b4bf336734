//! What one worker holds at run time: each provider's current keys (fixed for `local_jwks`,
//! replaced when a fetched set arrives for `remote_jwks`) and a bounded cache of verified tokens,
//! so a repeated token does not pay for signature verification again.

use crate::config::{AuthConfig, JwksSource};
use crate::jwks::Key;
use crate::jwt::Verified;
use std::collections::HashMap;

/// Verified tokens kept per worker.
pub const CACHE_CAPACITY: usize = 4096;
/// A token without `exp` is re-verified at least this often.
pub const CACHE_SECONDS_WITHOUT_EXP: u64 = 300;

pub struct KeyRing {
    sets: Vec<KeySet>,
    cache: HashMap<(usize, [u8; 32]), Cached>,
}

struct KeySet {
    keys: Vec<Key>,
    /// Changes whenever the keys do, so cached verifications by old keys are not reused.
    version: u64,
}

struct Cached {
    verified: Verified,
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
        KeyRing { sets, cache: HashMap::new() }
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

    pub fn cached(&self, provider: usize, digest: &[u8; 32], now: u64) -> Option<&Verified> {
        let version = self.sets.get(provider)?.version;
        let entry = self.cache.get(&(provider, *digest))?;
        (entry.key_version == version && now <= entry.valid_until).then_some(&entry.verified)
    }

    /// Remembers a successful verification until the token expires (plus the clock skew).
    pub fn remember(
        &mut self,
        provider: usize,
        digest: [u8; 32],
        verified: Verified,
        exp_plus_skew: Option<u64>,
        now: u64,
    ) {
        let Some(set) = self.sets.get(provider) else { return };
        if self.cache.len() >= CACHE_CAPACITY {
            // Bounded: drop one entry (the map's order is arbitrary, which suits a cache that
            // an attacker should not be able to steer).
            if let Some(victim) = self.cache.keys().next().copied() {
                self.cache.remove(&victim);
            }
        }
        let valid_until = exp_plus_skew.unwrap_or(now.saturating_add(CACHE_SECONDS_WITHOUT_EXP));
        self.cache.insert((provider, digest), Cached { verified, key_version: set.version, valid_until });
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }
}
