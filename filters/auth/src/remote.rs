//! Remote key sets, fetched once for all of Envoy's workers.
//!
//! Every worker's root context ticks. On a tick it picks up the key set stored in shared data
//! (parsing it only when its CAS number changed) and decides whether a fetch is due: no set
//! yet, the set is past 80% of `cache_duration` (refreshed before it expires), or a token named
//! an unknown `kid` and `refetch_cooldown` has passed since the last fetch an unknown `kid`
//! caused (scheduled fetches do not count: a key rotated in just after one is fetched at once).
//! A due fetch is made by whichever worker first takes the provider's *lease* (a
//! compare-and-swap on a shared-data value), so there is exactly one fetch in flight per key
//! set, whatever the number of workers.
//!
//! A request whose token names an unknown `kid` is *held* (paused) while a fetch that may
//! bring the key is in flight or can start now, and decided again when it ends; see
//! [`can_hold`]. Made-up `kid`s therefore cause at most one fetch per cooldown, and outside a
//! fetch they are refused at once.
//!
//! A fetched answer replaces the stored set only if it is a 200 whose body is a usable key set
//! (see `jwks::parse`); anything else is logged and the last good set stays, for up to
//! `cache_duration + max_staleness` after it was fetched. Past that, the provider has no keys
//! and its tokens are refused (401) until a fetch succeeds.

use crate::config::RemoteJwks;
use gateway_common::shared::{update, SharedStore, Step, UpdateError};

/// Ticks of the root contexts that run the fetches.
pub const TICK_MILLIS: u64 = 500;
/// While requests are held for a fetch, the root context ticks this often instead, so a due
/// fetch starts at once and held requests are answered as soon as it ends.
pub const HELD_TICK_MILLIS: u64 = 20;
/// While a provider has no keys at all, fetches are retried this often.
pub const RETRY_WITHOUT_KEYS_MILLIS: u64 = 1_000;

/// Shared-data key of the stored set: `fetched_at_ms` (8 bytes, LE) then the JWKS body.
pub fn set_key(remote: &RemoteJwks) -> String {
    format!("gateway_auth.jwks.{}.{}{}", remote.cluster, remote.authority, remote.path)
}

/// Shared-data key of the fetch lease: `lease_until_ms`, `last_started_ms`,
/// `last_kid_started_ms` (8 bytes each, LE).
pub fn lease_key(remote: &RemoteJwks) -> String {
    format!("gateway_auth.jwks_lease.{}.{}{}", remote.cluster, remote.authority, remote.path)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lease {
    pub until_ms: u64,
    pub last_started_ms: u64,
    /// When the last fetch caused by an unknown `kid` started (for `refetch_cooldown`).
    pub last_kid_started_ms: u64,
}

impl Lease {
    pub fn decode(bytes: &[u8]) -> Lease {
        Lease {
            until_ms: read_u64(bytes, 0),
            last_started_ms: read_u64(bytes, 8),
            last_kid_started_ms: read_u64(bytes, 16),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.until_ms.to_le_bytes().to_vec();
        bytes.extend_from_slice(&self.last_started_ms.to_le_bytes());
        bytes.extend_from_slice(&self.last_kid_started_ms.to_le_bytes());
        bytes
    }

    /// A fetch is in flight (or its worker died less than the lease's margin ago).
    pub fn is_held(&self, now_ms: u64) -> bool {
        self.until_ms > now_ms
    }
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut array = [0u8; 8];
    if let Some(slice) = bytes.get(at..at + 8) {
        array.copy_from_slice(slice);
    }
    u64::from_le_bytes(array)
}

/// The stored set: when it was fetched and its body (`None` when nothing was fetched yet).
pub fn decode_set(bytes: &[u8]) -> Option<(u64, &[u8])> {
    (bytes.len() > 8).then(|| (read_u64(bytes, 0), bytes.get(8..).unwrap_or_default()))
}

pub fn encode_set(fetched_at_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut bytes = fetched_at_ms.to_le_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whether a fetch is due, from what this worker sees.
pub fn fetch_due(
    remote: &RemoteJwks,
    now_ms: u64,
    fetched_at_ms: Option<u64>,
    unknown_kid_seen: bool,
    lease: Lease,
) -> bool {
    let since_last_start = now_ms.saturating_sub(lease.last_started_ms);
    let cooldown = millis(remote.refetch_cooldown);
    match fetched_at_ms {
        None => since_last_start >= RETRY_WITHOUT_KEYS_MILLIS,
        Some(fetched_at) => {
            let age = now_ms.saturating_sub(fetched_at);
            let refresh_at = millis(remote.cache_duration) / 5 * 4;
            // A failed refresh is retried after the cooldown, not on every tick.
            let refresh_due = age >= refresh_at && since_last_start >= cooldown;
            let kid_due = unknown_kid_seen && now_ms.saturating_sub(lease.last_kid_started_ms) >= cooldown;
            refresh_due || kid_due
        }
    }
}

/// Whether a request that needs this provider's keys anew (an unknown `kid`, or no keys yet)
/// may be held for a fetch: one is in flight, or one is due now (the caller starts it at
/// once). Otherwise waiting would not bring a new set before the cooldown, so it is decided
/// with the keys there are.
pub fn can_hold(remote: &RemoteJwks, now_ms: u64, fetched_at_ms: Option<u64>, lease: Lease) -> bool {
    lease.is_held(now_ms) || fetch_due(remote, now_ms, fetched_at_ms, true, lease)
}

/// How long a held request waits at most: the fetch's timeout, the lease's margin for a
/// worker that died mid-fetch, and one tick to notice.
pub fn hold_deadline(remote: &RemoteJwks, now_ms: u64) -> u64 {
    now_ms.saturating_add(millis(remote.timeout)).saturating_add(LEASE_MARGIN_MILLIS).saturating_add(TICK_MILLIS)
}

/// How long past its call's timeout a lease is kept for a worker that never released it.
const LEASE_MARGIN_MILLIS: u64 = 1_000;

/// Whether the stored set is too old to use any more.
pub fn too_stale(remote: &RemoteJwks, now_ms: u64, fetched_at_ms: u64) -> bool {
    now_ms.saturating_sub(fetched_at_ms) > millis(remote.cache_duration).saturating_add(millis(remote.max_staleness))
}

/// Takes the lease if nobody holds it; true when this caller must fetch.
/// `for_unknown_kid` starts the `refetch_cooldown` that such fetches keep between them.
pub fn take_lease(
    store: &dyn SharedStore,
    remote: &RemoteJwks,
    now_ms: u64,
    for_unknown_kid: bool,
) -> Result<bool, UpdateError> {
    update(store, &lease_key(remote), 8, |bytes| {
        let lease = Lease::decode(bytes);
        if lease.is_held(now_ms) {
            return Step::Keep(false);
        }
        // Held for the call's timeout and a margin; a worker that dies mid-fetch frees it then.
        let held = Lease {
            until_ms: now_ms + millis(remote.timeout) + LEASE_MARGIN_MILLIS,
            last_started_ms: now_ms,
            last_kid_started_ms: if for_unknown_kid { now_ms } else { lease.last_kid_started_ms },
        };
        Step::Write(held.encode(), true)
    })
}

/// Frees the lease after a fetch ended, keeping when it started (for the cooldown).
pub fn release_lease(store: &dyn SharedStore, remote: &RemoteJwks) -> Result<(), UpdateError> {
    update(store, &lease_key(remote), 8, |bytes| {
        let lease = Lease::decode(bytes);
        Step::Write(Lease { until_ms: 0, ..lease }.encode(), ())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::shared::ensure_exists;
    use gateway_common::testing::MemoryStore;
    use std::time::Duration;

    const T0: u64 = 1_764_000_000_000;

    fn remote() -> RemoteJwks {
        RemoteJwks {
            cluster: "idp".into(),
            authority: "idp.test".into(),
            path: "/jwks".into(),
            timeout: Duration::from_secs(1),
            cache_duration: Duration::from_secs(300),
            max_staleness: Duration::from_secs(600),
            refetch_cooldown: Duration::from_secs(10),
        }
    }

    #[test]
    fn one_worker_of_many_takes_the_lease() {
        let store = MemoryStore::default();
        let remote = remote();
        ensure_exists(&store, &lease_key(&remote), b"").unwrap();
        let takers = (0..8).filter(|_| take_lease(&store, &remote, T0, false).unwrap()).count();
        assert_eq!(takers, 1);
        // Released: the next due fetch can take it again.
        release_lease(&store, &remote).unwrap();
        assert!(take_lease(&store, &remote, T0 + 5, false).unwrap());
        // A holder that never released frees it after timeout + 1 s.
        assert!(!take_lease(&store, &remote, T0 + 1_000, false).unwrap());
        assert!(take_lease(&store, &remote, T0 + 5 + 2_000, false).unwrap());
    }

    #[test]
    fn concurrent_workers_fetch_once() {
        let store = std::sync::Arc::new(MemoryStore::default());
        let remote = remote();
        ensure_exists(store.as_ref(), &lease_key(&remote), b"").unwrap();
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (store, remote) = (store.clone(), remote.clone());
                std::thread::spawn(move || take_lease(store.as_ref(), &remote, T0, false).unwrap())
            })
            .collect();
        let fetches = threads.into_iter().map(|t| t.join().unwrap()).filter(|taken| *taken).count();
        assert_eq!(fetches, 1);
    }

    #[test]
    fn when_a_fetch_is_due() {
        let remote = remote();
        let never = Lease::default();
        let started = |at| Lease { until_ms: 0, last_started_ms: at, last_kid_started_ms: at };
        // No set yet: at once, then at most once a second.
        assert!(fetch_due(&remote, T0, None, false, never));
        assert!(!fetch_due(&remote, T0 + 999, None, false, started(T0)));
        assert!(fetch_due(&remote, T0 + 1_000, None, false, started(T0)));
        // A fresh set: not until 80% of cache_duration (240 s).
        assert!(!fetch_due(&remote, T0 + 239_999, Some(T0), false, started(T0)));
        assert!(fetch_due(&remote, T0 + 240_000, Some(T0), false, started(T0)));
        // An unknown kid: after the cooldown since the last fetch started.
        assert!(!fetch_due(&remote, T0 + 9_999, Some(T0), true, started(T0)));
        assert!(fetch_due(&remote, T0 + 10_000, Some(T0), true, started(T0)));
        // A failed refresh is not retried on every tick.
        assert!(!fetch_due(&remote, T0 + 245_000, Some(T0), false, started(T0 + 240_000)));
    }

    /// A key rotated in just after a scheduled fetch is fetched at once: only fetches caused
    /// by unknown kids keep the cooldown between them.
    #[test]
    fn only_unknown_kid_fetches_start_the_cooldown() {
        let remote = remote();
        let store = MemoryStore::default();
        ensure_exists(&store, &lease_key(&remote), b"").unwrap();
        let lease = |store: &MemoryStore| Lease::decode(&store.get(&lease_key(&remote)).unwrap().unwrap().value);
        // The scheduled (or first) fetch at T0.
        assert!(take_lease(&store, &remote, T0, false).unwrap());
        release_lease(&store, &remote).unwrap();
        // One second later a token names a new kid: due now, and a request may wait for it.
        assert!(fetch_due(&remote, T0 + 1_000, Some(T0), true, lease(&store)));
        assert!(can_hold(&remote, T0 + 1_000, Some(T0), lease(&store)));
        assert!(take_lease(&store, &remote, T0 + 1_000, true).unwrap());
        // While it is in flight, other requests with unknown kids wait for it.
        assert!(can_hold(&remote, T0 + 1_200, Some(T0), lease(&store)));
        assert!(!take_lease(&store, &remote, T0 + 1_200, true).unwrap(), "single flight");
        release_lease(&store, &remote).unwrap();
        // After it ended, made-up kids neither fetch nor wait until the cooldown has passed.
        assert!(!fetch_due(&remote, T0 + 10_999, Some(T0 + 1_000), true, lease(&store)));
        assert!(!can_hold(&remote, T0 + 10_999, Some(T0 + 1_000), lease(&store)));
        assert!(fetch_due(&remote, T0 + 11_000, Some(T0 + 1_000), true, lease(&store)));
        // Held requests wait at most the fetch's timeout, the lease margin and one tick.
        assert_eq!(hold_deadline(&remote, T0), T0 + 1_000 + 1_000 + TICK_MILLIS);
    }

    #[test]
    fn staleness() {
        let remote = remote();
        assert!(!too_stale(&remote, T0 + 900_000, T0));
        assert!(too_stale(&remote, T0 + 900_001, T0));
    }

    #[test]
    fn stored_sets_round_trip() {
        assert_eq!(decode_set(b""), None);
        let bytes = encode_set(T0, b"{\"keys\":[]}");
        assert_eq!(decode_set(&bytes), Some((T0, &b"{\"keys\":[]}"[..])));
        let lease = Lease { until_ms: 7, last_started_ms: 9, last_kid_started_ms: 11 };
        assert_eq!(Lease::decode(&lease.encode()), lease);
        assert_eq!(Lease::decode(b""), Lease::default());
    }
}
