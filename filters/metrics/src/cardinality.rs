//! The per-label cap on distinct values, held across all Envoy worker threads.
//!
//! Each label owns one shared-data key whose value is the newline-separated list of values
//! admitted so far, in admission order. A worker first looks in its own copy; only a value it
//! has not seen costs a shared-data read, and only a genuinely new value under the cap costs a
//! CAS write. The list only grows and never past the cap, so a value once admitted stays
//! admitted, and once a worker has seen the list full its own copy is final.

use gateway_common::shared::{self, SharedStore, Step, UpdateError};
use std::collections::HashMap;

/// Plenty for a handful of workers racing on the rare first sighting of a value.
const MAX_CAS_ATTEMPTS: u32 = 16;
const KEY_PREFIX: &str = "gateway_metrics.label_values.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; the number is this worker's id for the value (0, 1, 2… in the order this
    /// worker learnt them), stable for the worker's lifetime.
    Admitted(u32),
    /// Over the cap (or the store failed): record the value as `other`.
    Overflow,
}

/// One worker's view of one label's admitted values.
pub struct LabelValues {
    key: String,
    max_values: usize,
    /// Admitted value -> its id; `values[id]` is the value.
    admitted: HashMap<String, u32>,
    values: Vec<String>,
    /// The shared list was full when last read: every value not in `admitted` overflows.
    full: bool,
    /// A store failure was logged already; later ones are not (they would repeat per request).
    failure_logged: bool,
}

impl LabelValues {
    pub fn new(label: &str, max_values: u32) -> Self {
        LabelValues {
            key: format!("{KEY_PREFIX}{label}"),
            max_values: max_values as usize,
            admitted: HashMap::new(),
            values: Vec::new(),
            full: false,
            failure_logged: false,
        }
    }

    /// True the first time it is called: lets the caller log the first store failure only.
    pub fn first_failure(&mut self) -> bool {
        !std::mem::replace(&mut self.failure_logged, true)
    }

    /// Creates the label's shared key. Must run while configuring, before any request.
    pub fn create_shared_key(&self, store: &dyn SharedStore) -> Result<(), shared::StoreError> {
        shared::ensure_exists(store, &self.key, b"")
    }

    /// Admits `value` if it is known or the cap still has room. A store failure is returned
    /// as the error; the caller then treats the value as overflow, which keeps the cap
    /// whatever happens.
    pub fn admit(&mut self, value: &str, store: &dyn SharedStore) -> Result<Admission, UpdateError> {
        if let Some(&id) = self.admitted.get(value) {
            return Ok(Admission::Admitted(id));
        }
        if self.full {
            return Ok(Admission::Overflow);
        }
        let max_values = self.max_values;
        let (seen, admission) = shared::update(store, &self.key, MAX_CAS_ATTEMPTS, |current| {
            let list = String::from_utf8_lossy(current);
            let values: Vec<&str> = list.split('\n').filter(|v| !v.is_empty()).collect();
            if values.contains(&value) {
                Step::Keep((owned(&values), true))
            } else if values.len() >= max_values {
                Step::Keep((owned(&values), false))
            } else {
                let mut next = current.to_vec();
                if !next.is_empty() {
                    next.push(b'\n');
                }
                next.extend_from_slice(value.as_bytes());
                let mut seen = owned(&values);
                seen.push(value.to_string());
                Step::Write(next, (seen, true))
            }
        })?;
        self.full = seen.len() >= self.max_values;
        for seen_value in seen {
            self.learn(seen_value);
        }
        match (admission, self.admitted.get(value)) {
            (true, Some(&id)) => Ok(Admission::Admitted(id)),
            _ => Ok(Admission::Overflow),
        }
    }

    /// The value behind an id handed out by [`LabelValues::admit`].
    pub fn value(&self, id: u32) -> Option<&str> {
        self.values.get(id as usize).map(String::as_str)
    }

    fn learn(&mut self, value: String) {
        if !self.admitted.contains_key(&value) {
            let id = self.values.len() as u32;
            self.admitted.insert(value.clone(), id);
            self.values.push(value);
        }
    }
}

fn owned(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| value.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::testing::MemoryStore;
    use std::collections::HashSet;
    use std::sync::{Arc, Barrier};

    const ADMITTED: fn(Result<Admission, UpdateError>) -> bool = |a| matches!(a, Ok(Admission::Admitted(_)));

    fn registry(store: &MemoryStore, max: u32) -> LabelValues {
        let values = LabelValues::new("consumer", max);
        values.create_shared_key(store).unwrap();
        values
    }

    #[test]
    fn values_under_the_cap_are_admitted_and_the_rest_overflow() {
        let store = MemoryStore::default();
        let mut values = registry(&store, 2);
        assert_eq!(values.admit("alice", &store), Ok(Admission::Admitted(0)));
        assert_eq!(values.admit("bob", &store), Ok(Admission::Admitted(1)));
        assert_eq!(values.admit("carol", &store), Ok(Admission::Overflow));
        assert_eq!(values.admit("alice", &store), Ok(Admission::Admitted(0)));
        assert_eq!((values.value(0), values.value(1), values.value(2)), (Some("alice"), Some("bob"), None));
        assert_eq!(store.get("gateway_metrics.label_values.consumer").unwrap().unwrap().value, b"alice\nbob");
    }

    #[test]
    fn workers_share_one_cap() {
        let store = MemoryStore::default();
        let mut worker_a = registry(&store, 2);
        let mut worker_b = LabelValues::new("consumer", 2);
        assert_eq!(worker_a.admit("alice", &store), Ok(Admission::Admitted(0)));
        // Worker B learns alice (id 0) from the shared list while admitting bob.
        assert_eq!(worker_b.admit("bob", &store), Ok(Admission::Admitted(1)));
        // Worker A never saw bob, yet the shared list is full for it too.
        assert_eq!(worker_a.admit("carol", &store), Ok(Admission::Overflow));
        assert_eq!(worker_a.admit("bob", &store), Ok(Admission::Admitted(1)));
    }

    #[test]
    fn known_values_cost_no_store_access() {
        let store = MemoryStore::default();
        let mut values = registry(&store, 5);
        values.admit("alice", &store).unwrap();
        let empty = MemoryStore::default(); // a store without the key would make any access fail
        assert_eq!(values.admit("alice", &empty), Ok(Admission::Admitted(0)));
    }

    #[test]
    fn a_full_list_is_final_without_further_reads() {
        let store = MemoryStore::default();
        let mut values = registry(&store, 1);
        values.admit("alice", &store).unwrap();
        assert_eq!(values.admit("bob", &store), Ok(Admission::Overflow));
        let empty = MemoryStore::default();
        assert_eq!(values.admit("carol", &empty), Ok(Admission::Overflow));
    }

    #[test]
    fn a_missing_key_is_an_error_not_an_admission() {
        let store = MemoryStore::default();
        let mut values = LabelValues::new("consumer", 5);
        assert_eq!(values.admit("alice", &store), Err(UpdateError::Missing));
    }

    /// Several workers meet many new values at the same moment: the shared list ends with
    /// exactly `max` values, every worker admits exactly those and overflows the rest.
    #[test]
    fn racing_workers_never_exceed_the_cap() {
        const WORKERS: usize = 6;
        const MAX: u32 = 25;
        let store = Arc::new(MemoryStore::default());
        registry(&store, MAX);
        let barrier = Arc::new(Barrier::new(WORKERS));
        let handles: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let store = store.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut values = LabelValues::new("consumer", MAX);
                    barrier.wait();
                    let mut admitted = HashSet::new();
                    // Each worker walks the same 100 values from a different starting point.
                    for i in 0..100 {
                        let value = format!("user{}", (i + worker * 17) % 100);
                        if ADMITTED(values.admit(&value, store.as_ref())) {
                            admitted.insert(value);
                        }
                    }
                    admitted
                })
            })
            .collect();
        let per_worker: Vec<HashSet<String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let final_list: HashSet<String> =
            String::from_utf8(store.get("gateway_metrics.label_values.consumer").unwrap().unwrap().value)
                .unwrap()
                .split('\n')
                .map(str::to_string)
                .collect();
        assert_eq!(final_list.len(), MAX as usize);
        for admitted in per_worker {
            assert!(admitted.is_subset(&final_list));
        }
    }
}
