//! A deterministic model check of the shared-data protocol: several "workers" (threads) run
//! the real `limiter::evaluate` against one bucket, and a scheduler lets exactly one host
//! call (get or set) happen at a time, in an order it chooses. Every possible order is
//! explored. In each one the number of admitted requests must be exactly
//! `min(requests, burst)` (no lost and no double grant), and the stored bucket must agree.
//! A worker that sends more than one request guesses, from its last write, what the bucket
//! holds (`shared::update_after`): the orders include every guess that another worker's
//! write made wrong.
//!
//! The same checker run on the naive protocol (create the key on first use) finds the
//! host's absent-key race, which is why the filter creates its table in `on_configure`.

// Test code: a failed unwrap or index is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use gateway_common::shared::{LastWrite, SharedStore, StoreError, Versioned};
use gateway_common::testing::MemoryStore;
use ratelimit_filter::config::RateLimitConfig;
use ratelimit_filter::limiter::{create_table, evaluate, BucketKeys, CheckResult, RequestFacts, Verdict};
use serde_json::json;
use std::sync::{Arc, Condvar, Mutex};

const NOW: u64 = 1_764_000_000_000_000_000;
const SEED: [u8; 16] = [3; 16];

/// Shared data whose host calls each wait for the scheduler's turn.
struct ScheduledStore {
    inner: MemoryStore,
    /// When set, a `get` of a missing key first creates it, in a separate host call, as a
    /// filter that creates keys on first use would.
    create_on_first_use: bool,
    turn: Mutex<Turns>,
    changed: Condvar,
}

struct Turns {
    /// Worker `i` is waiting to make a host call.
    waiting: Vec<bool>,
    finished: Vec<bool>,
    granted: Option<usize>,
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl ScheduledStore {
    fn new(workers: usize, create_on_first_use: bool) -> ScheduledStore {
        ScheduledStore {
            inner: MemoryStore::default(),
            create_on_first_use,
            turn: Mutex::new(Turns { waiting: vec![false; workers], finished: vec![false; workers], granted: None }),
            changed: Condvar::new(),
        }
    }

    /// Blocks until the scheduler grants this worker one host call, runs it, returns.
    fn host_call<T>(&self, call: impl FnOnce(&MemoryStore) -> T) -> T {
        let me = WORKER.with(|worker| worker.get());
        let mut turns = self.turn.lock().unwrap();
        turns.waiting[me] = true;
        self.changed.notify_all();
        while turns.granted != Some(me) {
            turns = self.changed.wait(turns).unwrap();
        }
        let result = call(&self.inner);
        turns.waiting[me] = false;
        turns.granted = None;
        self.changed.notify_all();
        result
    }

    fn finish(&self) {
        let me = WORKER.with(|worker| worker.get());
        self.turn.lock().unwrap().finished[me] = true;
        self.changed.notify_all();
    }

    /// Waits until every worker is blocked on a host call or done; grants one chosen by
    /// `choose(number of candidates)`. Returns false when all are done.
    fn step(&self, choose: &mut dyn FnMut(usize) -> usize) -> bool {
        let mut turns = self.turn.lock().unwrap();
        loop {
            let settled = turns.granted.is_none()
                && turns.waiting.iter().zip(&turns.finished).all(|(waiting, finished)| *waiting || *finished);
            if settled {
                break;
            }
            turns = self.changed.wait(turns).unwrap();
        }
        let candidates: Vec<usize> = (0..turns.waiting.len()).filter(|&i| turns.waiting[i]).collect();
        if candidates.is_empty() {
            return false;
        }
        turns.granted = Some(candidates[choose(candidates.len())]);
        self.changed.notify_all();
        true
    }
}

impl SharedStore for ScheduledStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let found = self.host_call(|store| store.get(key))?;
        if found.is_none() && self.create_on_first_use {
            self.host_call(|store| store.set(key, b"", 0))?;
            return self.host_call(|store| store.get(key));
        }
        Ok(found)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.host_call(|store| store.set(key, value, cas))
    }
}

struct Request;

impl RequestFacts for Request {
    fn header(&mut self, _: &str) -> Option<&[u8]> {
        None
    }
    fn property(&mut self, path: &[&str]) -> Option<&[u8]> {
        (path == ["source", "address"]).then_some(&b"10.0.0.1:5000"[..])
    }
}

fn config(burst: u64) -> Arc<RateLimitConfig> {
    let config = json!({"capacity": 8, "rules": [{
        "name": "per-ip", "key": ["client_ip"], "limit": {"requests": 10, "per": "hour", "burst": burst}
    }]});
    Arc::new(RateLimitConfig::parse(config.to_string().as_bytes()).unwrap())
}

/// Runs `workers` concurrent workers, each sending `requests` requests one after the other,
/// under one schedule. `choices` is the schedule so far (extended with 0 where it runs out);
/// returns the admitted count and, per choice point, how many candidates there were.
fn run_schedule(
    burst: u64,
    workers: usize,
    requests: usize,
    precreate: bool,
    choices: &[usize],
) -> (usize, Vec<usize>, Arc<ScheduledStore>) {
    let config = config(burst);
    let store = Arc::new(ScheduledStore::new(workers, !precreate));
    if precreate {
        create_table(&store.inner, &config, SEED).unwrap();
    }
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            let (config, store) = (config.clone(), store.clone());
            std::thread::spawn(move || {
                WORKER.with(|cell| cell.set(worker));
                let keys = BucketKeys::new(SEED, &config);
                let mut last_writes = [LastWrite::default()];
                let mut admitted = 0;
                for _ in 0..requests {
                    let decision = evaluate(&config, &mut Request, store.as_ref(), &keys, &mut last_writes, NOW);
                    assert!(
                        !matches!(decision.checks.first().map(|c| c.result), Some(CheckResult::Failed(_))),
                        "{decision:?}"
                    );
                    admitted += usize::from(decision.verdict == Verdict::Allow);
                }
                store.finish();
                admitted
            })
        })
        .collect();
    let mut widths = Vec::new();
    let mut position = 0;
    while store.step(&mut |candidates| {
        widths.push(candidates);
        let choice = choices.get(position).copied().unwrap_or(0);
        position += 1;
        choice
    }) {}
    let admitted = handles.into_iter().map(|handle| handle.join().unwrap()).sum();
    (admitted, widths, store)
}

/// Explores every schedule depth-first; calls `check` with each outcome. Returns how many
/// schedules were run.
fn explore(
    burst: u64,
    workers: usize,
    requests: usize,
    precreate: bool,
    mut check: impl FnMut(usize, &ScheduledStore),
) -> usize {
    let mut choices: Vec<usize> = Vec::new();
    let mut schedules = 0;
    loop {
        let (admitted, widths, store) = run_schedule(burst, workers, requests, precreate, &choices);
        schedules += 1;
        check(admitted, &store);
        // Next schedule: bump the last choice point that has an untried candidate.
        let mut taken: Vec<usize> = (0..widths.len()).map(|i| choices.get(i).copied().unwrap_or(0)).collect();
        loop {
            match taken.pop() {
                None => return schedules,
                Some(choice) if choice + 1 < widths[taken.len()] => {
                    taken.push(choice + 1);
                    break;
                }
                Some(_) => {}
            }
        }
        choices = taken;
    }
}

/// The bucket's stored TAT must account for exactly the admitted requests.
fn stored_requests(store: &ScheduledStore) -> u64 {
    let config = config(1);
    let group = store.inner.get(&ratelimit_filter::table::group_key(config.groups, 0)).unwrap().unwrap().value;
    if group.is_empty() {
        return 0;
    }
    let tat = u128::from_le_bytes(group[16..32].try_into().unwrap());
    let now_ticks = u128::from(NOW) * 10;
    let interval = 3_600u128 * 1_000_000_000;
    ((tat - now_ticks) / interval) as u64
}

#[test]
fn every_interleaving_grants_exactly_the_burst() {
    // Four workers means 310,872 schedules (five minutes); three show every kind of race.
    for (workers, burst) in [(2, 1), (3, 1), (3, 2), (3, 3)] {
        let expected = workers.min(burst as usize);
        let schedules = explore(burst, workers, 1, true, |admitted, store| {
            assert_eq!(admitted, expected, "{workers} workers, burst {burst}");
            assert_eq!(stored_requests(store), expected as u64, "stored state matches the grants");
        });
        // Sanity: the checker really interleaved (2 host calls each, plus retries).
        assert!(schedules > workers, "{workers} workers: only {schedules} schedules");
        println!("{workers} workers, burst {burst}: {schedules} schedules, always {expected} admitted");
    }
}

#[test]
fn every_interleaving_of_guessed_writes_grants_exactly_the_burst() {
    // Each worker's second request guesses the bucket from its first write, without a read;
    // in some orders the other worker wrote in between and the host refuses the guess.
    for (workers, requests, burst) in [(2, 2, 1), (2, 2, 2), (2, 2, 3), (2, 2, 4), (2, 3, 4)] {
        let expected = (workers * requests).min(burst as usize);
        let schedules = explore(burst, workers, requests, true, |admitted, store| {
            assert_eq!(admitted, expected, "{workers} workers x {requests} requests, burst {burst}");
            assert_eq!(stored_requests(store), expected as u64, "stored state matches the grants");
        });
        println!(
            "{workers} workers x {requests} requests, burst {burst}: {schedules} schedules, always {expected} admitted"
        );
    }
}

#[test]
fn the_checker_finds_the_absent_key_race_of_create_on_first_use() {
    let mut double_grants = 0;
    let schedules = explore(1, 2, 1, false, |admitted, _| {
        assert!(admitted >= 1);
        if admitted > 1 {
            double_grants += 1;
        }
    });
    println!("create on first use: {double_grants} of {schedules} schedules admit 2 with burst 1");
    assert!(double_grants > 0, "the race exists when keys are created lazily");
}
