//! Test doubles with the host's semantics, for native unit tests.

use crate::shared::{SharedStore, StoreError, Versioned};
use std::collections::HashMap;
use std::sync::Mutex;

/// In-memory shared data that behaves like proxy-wasm-cpp-host's: a global CAS counter,
/// CAS checked only for keys that exist, no deletion. Safe to share between threads, so
/// tests can model several Envoy workers.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<(HashMap<String, Versioned>, u32)>,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let state = self.state.lock().map_err(|_| StoreError::Host("poisoned".into()))?;
        Ok(state.0.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut state = self.state.lock().map_err(|_| StoreError::Host("poisoned".into()))?;
        let (map, counter) = &mut *state;
        if let Some(existing) = map.get(key) {
            if cas != 0 && cas != existing.cas {
                return Err(StoreError::CasMismatch);
            }
        }
        *counter = counter.wrapping_add(1).max(1);
        map.insert(key.to_string(), Versioned { value: value.to_vec(), cas: *counter });
        Ok(())
    }
}
