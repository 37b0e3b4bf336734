//! Proxy-wasm shared data (one key/value store for all Envoy worker threads of a VM id),
//! seen through a small trait so the logic on top of it is testable natively.
//!
//! Host semantics this module is written against (proxy-wasm-cpp-host `SharedData`):
//! - every successful write gives the key a new, never-reused CAS number;
//! - a write with `cas != 0` fails with `CasMismatch` unless the key's CAS still equals it;
//! - **the CAS is ignored when the key does not exist yet**, so two workers that both saw
//!   "absent" can both "create" it and the later write silently wins;
//! - keys are never deleted.
//!
//! Hence the rule used by every filter: create the keys a filter needs while it is being
//! configured ([`ensure_exists`]), and update them only through [`update`], which always
//! writes with the CAS it read. Envoy 1.40 runs `on_configure` on its main thread before it
//! starts the workers (seen in its log: main-thread configure, then "starting workers", then
//! one configure per worker), so keys created there exist before any request can write them.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The key changed since it was read.
    CasMismatch,
    /// Any other host failure, with the host's status for the log.
    Host(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::CasMismatch => f.write_str("compare-and-swap mismatch"),
            StoreError::Host(status) => write!(f, "shared data host call failed: {status}"),
        }
    }
}

/// A value as read from the store, with the CAS number to write it back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub cas: u32,
}

pub trait SharedStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// `cas == 0` writes unconditionally.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// Creates `key` holding `initial` unless it already exists. Call it only while configuring,
/// before requests can update the key (see the module note on absent keys).
pub fn ensure_exists(store: &dyn SharedStore, key: &str, initial: &[u8]) -> Result<(), StoreError> {
    match store.get(key)? {
        Some(_) => Ok(()),
        None => store.set(key, initial, 0),
    }
}

/// What an [`update`] step decided after seeing the current value.
pub enum Step<T> {
    /// Write this value (with the CAS that was read), then return the outcome.
    Write(Vec<u8>, T),
    /// Leave the value as it is and return the outcome.
    Keep(T),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError {
    /// The key was never created (a filter bug or a different VM id); nothing was written.
    Missing,
    /// Every attempt lost the race to another worker.
    Contended {
        attempts: u32,
    },
    Store(StoreError),
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::Missing => f.write_str("shared data key does not exist"),
            UpdateError::Contended { attempts } => {
                write!(f, "shared data still contended after {attempts} attempts")
            }
            UpdateError::Store(error) => error.fmt(f),
        }
    }
}

/// Read, decide, write-with-CAS; on `CasMismatch` start again from a fresh read, at most
/// `max_attempts` times. `decide` must be a pure function of the value it is given.
pub fn update<T>(
    store: &dyn SharedStore,
    key: &str,
    max_attempts: u32,
    mut decide: impl FnMut(&[u8]) -> Step<T>,
) -> Result<T, UpdateError> {
    for _ in 0..max_attempts {
        let current = store.get(key).map_err(UpdateError::Store)?.ok_or(UpdateError::Missing)?;
        match decide(&current.value) {
            Step::Keep(outcome) => return Ok(outcome),
            // CAS 0 would mean "unconditional"; the host never hands it out for a stored key.
            Step::Write(value, outcome) => match store.set(key, &value, current.cas) {
                Ok(()) => return Ok(outcome),
                Err(StoreError::CasMismatch) => continue,
                Err(error) => return Err(UpdateError::Store(error)),
            },
        }
    }
    Err(UpdateError::Contended { attempts: max_attempts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryStore;

    fn append(byte: u8) -> impl FnMut(&[u8]) -> Step<()> {
        move |value: &[u8]| {
            let mut next = value.to_vec();
            next.push(byte);
            Step::Write(next, ())
        }
    }

    #[test]
    fn update_of_a_missing_key_writes_nothing() {
        let store = MemoryStore::default();
        assert_eq!(update(&store, "k", 3, append(1)), Err(UpdateError::Missing));
        assert_eq!(store.get("k").unwrap(), None);
    }

    #[test]
    fn ensure_exists_keeps_an_existing_value() {
        let store = MemoryStore::default();
        ensure_exists(&store, "k", b"a").unwrap();
        update(&store, "k", 3, append(b'b')).unwrap();
        ensure_exists(&store, "k", b"").unwrap();
        assert_eq!(store.get("k").unwrap().unwrap().value, b"ab");
    }

    #[test]
    fn keep_does_not_write() {
        let store = MemoryStore::default();
        ensure_exists(&store, "k", b"x").unwrap();
        let cas_before = store.get("k").unwrap().unwrap().cas;
        assert_eq!(update(&store, "k", 1, |_| Step::Keep(7)), Ok(7));
        assert_eq!(store.get("k").unwrap().unwrap().cas, cas_before);
    }

    #[test]
    fn a_lost_race_is_retried_from_a_fresh_read() {
        let store = MemoryStore::default();
        ensure_exists(&store, "k", b"").unwrap();
        let mut interfered = false;
        update(&store, "k", 2, |value: &[u8]| {
            if !interfered {
                interfered = true;
                // Another worker writes between our read and our write.
                store.set("k", b"z", 0).unwrap();
            }
            let mut next = value.to_vec();
            next.push(b'a');
            Step::Write(next, ())
        })
        .unwrap();
        assert_eq!(store.get("k").unwrap().unwrap().value, b"za");
    }

    #[test]
    fn contention_is_bounded() {
        let store = MemoryStore::default();
        ensure_exists(&store, "k", b"").unwrap();
        let result = update(&store, "k", 4, |_: &[u8]| {
            store.set("k", b"other", 0).unwrap();
            Step::Write(b"mine".to_vec(), ())
        });
        assert_eq!(result, Err(UpdateError::Contended { attempts: 4 }));
    }

    #[test]
    fn concurrent_appends_are_never_lost() {
        let store = std::sync::Arc::new(MemoryStore::default());
        ensure_exists(store.as_ref(), "k", b"").unwrap();
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        update(store.as_ref(), "k", u32::MAX, append(t)).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let value = store.get("k").unwrap().unwrap().value;
        assert_eq!(value.len(), 8 * 200);
        for t in 0..8u8 {
            assert_eq!(value.iter().filter(|&&b| b == t).count(), 200);
        }
    }
}
