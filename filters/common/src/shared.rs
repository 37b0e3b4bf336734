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
//! configured ([`ensure_exists`]), and update them only through [`update`] (or
//! [`update_after`]), which always write with a CAS the key held. Envoy 1.40 runs
//! `on_configure` on its main thread before it starts the workers (seen in its log:
//! main-thread configure, then "starting workers", then one configure per worker), so keys
//! created there exist before any request can write them.
//!
//! One more property of that host is used, for speed only: the CAS numbers come from one
//! counter for the whole process, and each write takes the next one. So a worker whose write
//! went through with CAS `c` can guess that the write got `c + 1` (right unless another write
//! in the process came between), and make its next update of the key with that guess instead
//! of reading the key first ([`update_after`]). The host checks the guess: it takes the write
//! only if the key still holds exactly the guessed write; otherwise nothing changes.

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
    decide: impl FnMut(&[u8]) -> Step<T>,
) -> Result<T, UpdateError> {
    read_decide_write(store, key, max_attempts, decide, |_, _| {})
}

/// [`update`], then `written(value, cas read)` after a write that went through.
fn read_decide_write<T>(
    store: &dyn SharedStore,
    key: &str,
    max_attempts: u32,
    mut decide: impl FnMut(&[u8]) -> Step<T>,
    written: impl FnOnce(Vec<u8>, u32),
) -> Result<T, UpdateError> {
    for _ in 0..max_attempts {
        let current = store.get(key).map_err(UpdateError::Store)?.ok_or(UpdateError::Missing)?;
        match decide(&current.value) {
            Step::Keep(outcome) => return Ok(outcome),
            // CAS 0 would mean "unconditional"; the host never hands it out for a stored key.
            Step::Write(value, outcome) => match store.set(key, &value, current.cas) {
                Ok(()) => {
                    written(value, current.cas);
                    return Ok(outcome);
                }
                Err(StoreError::CasMismatch) => continue,
                Err(error) => return Err(UpdateError::Store(error)),
            },
        }
    }
    Err(UpdateError::Contended { attempts: max_attempts })
}

/// How long a remembered write may be guessed on. The guess relies on CAS numbers not coming
/// round again, and the host's 32-bit counter needs over 4 billion writes to do that: hours
/// at any rate Envoy reaches, against this one second.
const GUESS_FOR_NANOS: u64 = 1_000_000_000;

/// After a wrong guess, the next guesses skipped: 1, 2, 4, … up to this, reset by a right one.
/// Where other workers write all the time a guess is rarely right, and each wrong one costs a
/// failed write; so there the guesses cost at most one write in this many updates.
const MAX_GUESSES_SKIPPED: u32 = 64;

/// What one worker last wrote to a key through [`update_after`], and the CAS the host gave
/// that write if no other write in the process came between (see the module note).
#[derive(Debug, Default)]
pub struct LastWrite {
    key: String,
    value: Vec<u8>,
    /// The CAS the key holds if the guess is right; 0 when nothing is remembered.
    cas: u32,
    at_nanos: u64,
    guesses_to_skip: u32,
    skip_after_a_miss: u32,
}

impl LastWrite {
    fn may_guess(&mut self, key: &str, now_nanos: u64) -> bool {
        if self.cas == 0 || !crate::bytes::equal(self.key.as_bytes(), key.as_bytes()) {
            return false;
        }
        if now_nanos.checked_sub(self.at_nanos).is_none_or(|age| age >= GUESS_FOR_NANOS) {
            self.cas = 0;
            return false;
        }
        if self.guesses_to_skip > 0 {
            self.guesses_to_skip -= 1;
            return false;
        }
        true
    }

    fn remember(&mut self, key: &str, value: Vec<u8>, cas_read: u32, now_nanos: u64) {
        if !crate::bytes::equal(self.key.as_bytes(), key.as_bytes()) {
            self.key.clear();
            self.key.push_str(key);
        }
        self.value = value;
        // The host's next CAS after `cas_read`, if no other write came between; it skips 0.
        self.cas = cas_read.wrapping_add(1).max(1);
        self.at_nanos = now_nanos;
    }

    fn missed(&mut self) {
        self.cas = 0;
        self.skip_after_a_miss = (self.skip_after_a_miss * 2).clamp(1, MAX_GUESSES_SKIPPED);
        self.guesses_to_skip = self.skip_after_a_miss;
    }
}

/// [`update`] that first tries `last`'s guess: when this worker made the last write to `key`
/// less than a second ago, `decide` runs on the value it wrote, and the new value is written
/// with the CAS that write most likely got, without reading the key. The host refuses the
/// write unless the key still holds exactly that write, so the outcome is the same as
/// [`update`]'s either way: a wrong guess costs one failed write, and then the update reads.
/// A `Keep` decided on the remembered value is decided again on a fresh read (without a write,
/// nothing confirms that value was current).
pub fn update_after<T>(
    last: &mut LastWrite,
    store: &dyn SharedStore,
    key: &str,
    now_nanos: u64,
    max_attempts: u32,
    mut decide: impl FnMut(&[u8]) -> Step<T>,
) -> Result<T, UpdateError> {
    if last.may_guess(key, now_nanos) {
        if let Step::Write(value, outcome) = decide(&last.value) {
            match store.set(key, &value, last.cas) {
                Ok(()) => {
                    let guessed = last.cas;
                    last.skip_after_a_miss = 0;
                    last.remember(key, value, guessed, now_nanos);
                    return Ok(outcome);
                }
                Err(StoreError::CasMismatch) => last.missed(),
                Err(error) => return Err(UpdateError::Store(error)),
            }
        }
    }
    read_decide_write(store, key, max_attempts, decide, |value, cas_read| {
        last.remember(key, value, cas_read, now_nanos)
    })
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

    /// The store, counting the host calls made to it.
    #[derive(Default)]
    struct Counted {
        store: MemoryStore,
        gets: std::cell::Cell<u32>,
        sets: std::cell::Cell<u32>,
    }

    impl SharedStore for Counted {
        fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
            self.gets.set(self.gets.get() + 1);
            self.store.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            self.sets.set(self.sets.get() + 1);
            self.store.set(key, value, cas)
        }
    }

    const NOW: u64 = 1_764_000_000_000_000_000;

    fn calls(store: &Counted) -> (u32, u32) {
        (store.gets.replace(0), store.sets.replace(0))
    }

    /// A store with key `k`, after one update by `last` that appended `a`; no calls counted.
    fn written_once() -> (Counted, LastWrite) {
        let store = Counted::default();
        ensure_exists(&store, "k", b"").unwrap();
        let mut last = LastWrite::default();
        update_after(&mut last, &store, "k", NOW, 3, append(b'a')).unwrap();
        calls(&store);
        (store, last)
    }

    /// Appends `byte` to `k` at `now` through `last`; returns the (gets, sets) it made.
    fn append_after(last: &mut LastWrite, store: &Counted, now: u64, byte: u8) -> (u32, u32) {
        update_after(last, store, "k", now, 3, append(byte)).unwrap();
        calls(store)
    }

    fn value(store: &Counted) -> Vec<u8> {
        store.store.get("k").unwrap().unwrap().value
    }

    #[test]
    fn the_last_writer_updates_without_a_read() {
        let store = Counted::default();
        ensure_exists(&store, "k", b"").unwrap();
        calls(&store);
        let mut last = LastWrite::default();
        assert_eq!(append_after(&mut last, &store, NOW, b'a'), (1, 1), "the first update reads");
        for _ in 0..3 {
            assert_eq!(append_after(&mut last, &store, NOW, b'b'), (0, 1), "the guessed CAS was right");
        }
        assert_eq!(value(&store), b"abbb");
    }

    #[test]
    fn another_workers_write_makes_the_guess_fail_and_the_update_read() {
        let (store, mut last) = written_once();
        store.store.set("k", b"x", 0).unwrap();
        assert_eq!(append_after(&mut last, &store, NOW, b'b'), (1, 2), "one refused write, then read and write");
        // After a wrong guess the next update does not guess; the one after does again.
        assert_eq!(append_after(&mut last, &store, NOW, b'c'), (1, 1));
        assert_eq!(append_after(&mut last, &store, NOW, b'd'), (0, 1));
        assert_eq!(value(&store), b"xbcd");
    }

    #[test]
    fn a_write_to_another_key_makes_the_guess_after_next_fail() {
        let (store, mut last) = written_once();
        assert_eq!(append_after(&mut last, &store, NOW, b'b'), (0, 1));
        // Before our next write, so that write gets a CAS one further on than guessed.
        store.store.set("elsewhere", b"x", 0).unwrap();
        assert_eq!(append_after(&mut last, &store, NOW, b'c'), (0, 1), "the key still holds our write");
        assert_eq!(append_after(&mut last, &store, NOW, b'd'), (1, 2), "our write's CAS was not the one guessed");
        assert_eq!(value(&store), b"abcd");
    }

    #[test]
    fn wrong_guesses_in_a_row_are_made_ever_more_rarely() {
        let (store, mut last) = written_once();
        // Another worker appends between every two of ours.
        let mut other = LastWrite::default();
        let mut refused = 0;
        for _ in 0..1000 {
            update_after(&mut other, &store.store, "k", NOW, 3, append(b'o')).unwrap();
            let (gets, sets) = append_after(&mut last, &store, NOW, b'a');
            assert_eq!(gets, 1, "the other worker wrote last");
            refused += sets - 1;
        }
        assert_eq!(value(&store).len(), 2001);
        // 1, 2, 4, ... 64 skipped after each miss: 7 misses to reach 64, then one in 65.
        assert!(refused <= 7 + 1000 / 65, "{refused} refused writes");
    }

    #[test]
    fn a_kept_value_is_decided_again_on_a_fresh_read() {
        let (store, mut last) = written_once();
        store.store.set("k", b"full", 0).unwrap();
        let mut seen = Vec::new();
        let outcome = update_after(&mut last, &store, "k", NOW, 3, |value: &[u8]| {
            seen.push(value.to_vec());
            Step::Keep(value.len())
        });
        assert_eq!(outcome, Ok(4), "decided on what the key holds, not on the remembered write");
        assert_eq!(seen, [b"a".to_vec(), b"full".to_vec()]);
        assert_eq!(calls(&store), (1, 0));
    }

    #[test]
    fn a_write_a_second_old_or_to_another_key_is_not_guessed_on() {
        let (store, mut last) = written_once();
        ensure_exists(&store.store, "j", b"").unwrap();
        update_after(&mut last, &store, "j", NOW, 3, append(b'a')).unwrap();
        assert_eq!(calls(&store), (1, 1), "another key");
        let second = 1_000_000_000;
        assert_eq!(append_after(&mut last, &store, NOW + second, b'b'), (1, 1), "a second later");
        assert_eq!(append_after(&mut last, &store, NOW + second - 1, b'c'), (1, 1), "the clock went back");
        assert_eq!(append_after(&mut last, &store, NOW + second, b'd'), (0, 1));
        assert_eq!(value(&store), b"abcd");
    }

    /// Eight threads, each appending its own byte 200 times through `append_once` (the
    /// `LastWrite` is the thread's own); none may be lost.
    fn assert_no_append_lost(append_once: fn(&MemoryStore, &mut LastWrite, u8)) {
        let store = std::sync::Arc::new(MemoryStore::default());
        ensure_exists(store.as_ref(), "k", b"").unwrap();
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut last = LastWrite::default();
                    for _ in 0..200 {
                        append_once(store.as_ref(), &mut last, t);
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

    #[test]
    fn concurrent_appends_are_never_lost() {
        assert_no_append_lost(|store, _, t| update(store, "k", u32::MAX, append(t)).unwrap());
        assert_no_append_lost(|store, last, t| update_after(last, store, "k", NOW, u32::MAX, append(t)).unwrap());
    }
}
