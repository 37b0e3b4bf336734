//! Where the buckets live: a fixed table of groups in proxy-wasm shared data.
//!
//! The host never deletes a shared-data key, so a key per client would grow without bound
//! under a flood of distinct clients. Instead the table has a fixed number of groups, all
//! created while the filter is configured (before any worker serves a request, which also
//! closes the host's absent-key CAS gap, see `gateway_common::shared`). Each group is one
//! shared-data value holding up to [`WAYS`] entries `(fingerprint, limit, TAT)`:
//!
//! - A bucket's fingerprint is a keyed SipHash of rule name, limit and key. The hash key is
//!   random per Envoy process and shared by its workers, so a client cannot aim its keys at
//!   another client's group or fingerprint.
//! - A bucket lives in exactly one group (chosen by its fingerprint), and a group is read and
//!   written as one value under compare-and-swap, so two workers can never give one bucket
//!   two entries: no lost or double grants.
//! - An entry whose bucket has fully refilled (idle) is dropped when its group is next
//!   written. An idle bucket is indistinguishable from a new one, so dropping it changes no
//!   one's limit.
//! - **Collision policy:** a new bucket takes a free way of its group. If all [`WAYS`] ways
//!   hold buckets that are still refilling, the request is *not* given a fresh bucket by
//!   evicting one of them ([`Outcome::TableFull`]); it is charged to its rule's *overflow
//!   bucket* instead, one more shared-data value per rule ([`overflow_key`]) with the rule's
//!   own limit, shared by every key that finds no slot (and counted in a metric). Active
//!   buckets are therefore never disturbed, a flood of new keys gets one key's worth of
//!   requests rather than unlimited ones, and the memory is `groups × WAYS` entries plus one
//!   per rule, whatever the number of distinct keys. No client key can name the overflow
//!   bucket: it lives under its own shared-data key, outside the hashed groups.

use crate::gcra::{Acquire, Limit};
use gateway_common::shared::Step;
use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// Entries per group.
pub const WAYS: usize = 8;
/// fingerprint (8) + requests (8) + TAT (16), little-endian.
const ENTRY_BYTES: usize = 32;

/// The shared-data key of the hash key all workers use.
pub const SEED_KEY: &str = "gateway_ratelimit.seed";

/// The shared-data key of group `index` in a table of `groups` groups. The size is part of
/// the name, so a configuration with another size starts its own table.
pub fn group_key(groups: u32, index: u32) -> String {
    // Built on every request: pieces that are text already, into a string of the right size
    // (no formatting machinery, and no check of the whole key as UTF-8 afterwards).
    let mut key = String::with_capacity(GROUP_KEY_BYTES);
    let mut digits = itoa::Buffer::new();
    key.push_str("gateway_ratelimit.");
    key.push_str(digits.format(groups));
    key.push('.');
    key.push_str(digits.format(index));
    key
}

/// `gateway_ratelimit.` and two `u32`s with a dot between them fit.
const GROUP_KEY_BYTES: usize = 40;

/// Written after the last group of a table of `groups` groups is created.
pub fn ready_key(groups: u32) -> String {
    format!("gateway_ratelimit.{groups}.ready")
}

/// The shared-data key of rule `rule`'s overflow bucket.
pub fn overflow_key(rule: &str) -> String {
    format!("gateway_ratelimit.overflow.{rule}")
}

/// The overflow bucket's id inside its own value: hashed from the rule and its limit alone (a
/// changed limit starts a fresh bucket, as it does for keyed buckets).
pub fn overflow_id(seed: [u8; 16], rule: &str, limit: &Limit) -> BucketId {
    bucket_id(seed, 1, rule, limit, &[])
}

/// Identifies one bucket: which group it lives in and its fingerprint there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketId {
    pub group: u32,
    pub fingerprint: u64,
}

/// Hashes rule, limit and key parts into a [`BucketId`]. Each part is length-prefixed, so
/// `("ab", "c")` and `("a", "bc")` are different buckets.
pub fn bucket_id(seed: [u8; 16], groups: u32, rule: &str, limit: &Limit, parts: &[&[u8]]) -> BucketId {
    let mut hasher = BucketHasher::new(seed, rule, limit);
    for part in parts {
        hasher.part(part);
    }
    hasher.id(groups)
}

/// [`bucket_id`] fed one key part at a time, so a request's parts need not be collected.
/// Cloned from a rule's prefix (see `limiter::BucketKeys`), so a request hashes only its key.
#[derive(Clone)]
pub struct BucketHasher(SipHasher13);

impl BucketHasher {
    pub fn new(seed: [u8; 16], rule: &str, limit: &Limit) -> BucketHasher {
        let (k0, k1) = split_seed(seed);
        let mut hasher = BucketHasher(SipHasher13::new_with_keys(k0, k1));
        hasher.part(rule.as_bytes());
        hasher.part(&limit.requests.to_le_bytes());
        hasher.part(&limit.period_seconds.to_le_bytes());
        hasher.part(&limit.burst.to_le_bytes());
        hasher
    }

    pub fn part(&mut self, bytes: &[u8]) {
        self.0.write_u64(bytes.len() as u64);
        self.0.write(bytes);
    }

    pub fn id(self, groups: u32) -> BucketId {
        let hash = self.0.finish();
        // The low bits choose the group; the whole hash is the fingerprint inside it.
        let group = u32::try_from(hash % u64::from(groups.max(1))).unwrap_or(0);
        BucketId { group, fingerprint: hash }
    }
}

fn split_seed(seed: [u8; 16]) -> (u64, u64) {
    let mut low = [0u8; 8];
    let mut high = [0u8; 8];
    low.copy_from_slice(seed.get(..8).unwrap_or(&[0; 8]));
    high.copy_from_slice(seed.get(8..).unwrap_or(&[0; 8]));
    (u64::from_le_bytes(low), u64::from_le_bytes(high))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    fingerprint: u64,
    requests: u64,
    tat: u128,
}

impl Entry {
    fn is_idle(&self, now_nanos: u64) -> bool {
        self.tat <= u128::from(now_nanos) * u128::from(self.requests)
    }
}

/// The decision for one request against one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Acquired(Acquire),
    /// Every way of the bucket's group holds another bucket that is still refilling.
    TableFull,
}

/// The step of the CAS loop for one request: given the group's current bytes, decide and
/// produce the new bytes. Pure, so the loop may call it again after a lost race.
pub fn decide(group: &[u8], id: BucketId, limit: &Limit, now_nanos: u64) -> Step<Outcome> {
    let mut ways = Ways::decode(group);
    let position = ways.entries().iter().position(|entry| entry.fingerprint == id.fingerprint);
    let tat = position.and_then(|index| ways.entries().get(index)).map_or(0, |entry| entry.tat);
    let acquire = limit.acquire(tat, now_nanos);
    if !acquire.allowed {
        // A rejection consumes nothing, so the group is left as it is.
        return Step::Keep(Outcome::Acquired(acquire));
    }
    let mine = Entry { fingerprint: id.fingerprint, requests: limit.requests, tat: acquire.tat };
    match position.and_then(|index| ways.entries_mut().get_mut(index)) {
        Some(entry) => *entry = mine,
        None => {
            ways.drop_idle(now_nanos);
            if !ways.push(mine) {
                return Step::Keep(Outcome::TableFull);
            }
        }
    }
    Step::Write(encode(ways.entries()), Outcome::Acquired(acquire))
}

/// A group's entries, decoded on the stack (a group is read and written on every request).
struct Ways {
    slots: [Entry; WAYS],
    used: usize,
}

impl Ways {
    fn decode(bytes: &[u8]) -> Ways {
        let mut ways = Ways { slots: [Entry { fingerprint: 0, requests: 0, tat: 0 }; WAYS], used: 0 };
        for chunk in bytes.chunks_exact(ENTRY_BYTES).take(WAYS) {
            let mut fingerprint = [0u8; 8];
            let mut requests = [0u8; 8];
            let mut tat = [0u8; 16];
            fingerprint.copy_from_slice(chunk.get(..8).unwrap_or(&[0; 8]));
            requests.copy_from_slice(chunk.get(8..16).unwrap_or(&[0; 8]));
            tat.copy_from_slice(chunk.get(16..32).unwrap_or(&[0; 16]));
            ways.push(Entry {
                fingerprint: u64::from_le_bytes(fingerprint),
                requests: u64::from_le_bytes(requests),
                tat: u128::from_le_bytes(tat),
            });
        }
        ways
    }

    fn entries(&self) -> &[Entry] {
        self.slots.get(..self.used).unwrap_or_default()
    }

    fn entries_mut(&mut self) -> &mut [Entry] {
        self.slots.get_mut(..self.used).unwrap_or_default()
    }

    /// False when every way is taken.
    fn push(&mut self, entry: Entry) -> bool {
        let Some(slot) = self.slots.get_mut(self.used) else { return false };
        *slot = entry;
        self.used += 1;
        true
    }

    fn drop_idle(&mut self, now_nanos: u64) {
        let mut kept = 0;
        for index in 0..self.used {
            if let Some(entry) = self.slots.get(index).copied().filter(|entry| !entry.is_idle(now_nanos)) {
                if let Some(slot) = self.slots.get_mut(kept) {
                    *slot = entry;
                }
                kept += 1;
            }
        }
        self.used = kept;
    }
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for entry in entries {
        bytes.extend_from_slice(&entry.fingerprint.to_le_bytes());
        bytes.extend_from_slice(&entry.requests.to_le_bytes());
        bytes.extend_from_slice(&entry.tat.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;
    const NOW: u64 = 1_764_000_000 * SECOND;
    const SEED: [u8; 16] = *b"0123456789abcdef";
    const PER_MINUTE: Limit = Limit { requests: 60, period_seconds: 60, burst: 2 };

    fn id(fingerprint: u64) -> BucketId {
        BucketId { group: 0, fingerprint }
    }

    /// Applies one request to `group` in place; returns the outcome.
    fn request(group: &mut Vec<u8>, id: BucketId, at: u64) -> Outcome {
        match decide(group, id, &PER_MINUTE, at) {
            Step::Write(bytes, outcome) => {
                *group = bytes;
                outcome
            }
            Step::Keep(outcome) => outcome,
        }
    }

    fn allowed(outcome: Outcome) -> bool {
        matches!(outcome, Outcome::Acquired(acquire) if acquire.allowed)
    }

    #[test]
    fn group_keys_name_the_table_size_and_the_group() {
        assert_eq!(group_key(4096, 17), "gateway_ratelimit.4096.17");
        let largest = group_key(u32::MAX, u32::MAX - 1);
        assert_eq!(largest, "gateway_ratelimit.4294967295.4294967294");
        assert!(largest.len() <= GROUP_KEY_BYTES);
    }

    #[test]
    fn buckets_in_one_group_are_independent() {
        let mut group = Vec::new();
        for fingerprint in 1..=WAYS as u64 {
            assert!(allowed(request(&mut group, id(fingerprint), NOW)));
            assert!(allowed(request(&mut group, id(fingerprint), NOW)));
            assert!(!allowed(request(&mut group, id(fingerprint), NOW)));
        }
        assert_eq!(Ways::decode(&group).entries().len(), WAYS);
    }

    #[test]
    fn a_full_group_never_evicts_an_active_bucket() {
        let mut group = Vec::new();
        for fingerprint in 1..=WAYS as u64 {
            request(&mut group, id(fingerprint), NOW);
        }
        let before = group.clone();
        assert_eq!(request(&mut group, id(99), NOW), Outcome::TableFull);
        assert_eq!(group, before, "nothing written");
        // Bucket 1 still has exactly one request left.
        assert!(allowed(request(&mut group, id(1), NOW)));
        assert!(!allowed(request(&mut group, id(1), NOW)));
    }

    #[test]
    fn idle_buckets_make_room_and_lose_nothing() {
        let mut group = Vec::new();
        for fingerprint in 1..=WAYS as u64 {
            request(&mut group, id(fingerprint), NOW);
        }
        // One second later every bucket has refilled its single request: all idle.
        let later = NOW + SECOND;
        assert!(allowed(request(&mut group, id(99), later)));
        assert_eq!(Ways::decode(&group).entries().len(), 1, "idle entries dropped on write");
        // A dropped bucket comes back with its full burst, as it had when it was dropped.
        assert!(allowed(request(&mut group, id(1), later)));
        assert!(allowed(request(&mut group, id(1), later)));
        assert!(!allowed(request(&mut group, id(1), later)));
    }

    #[test]
    fn only_refilling_buckets_block_a_newcomer() {
        let mut group = Vec::new();
        for fingerprint in 1..WAYS as u64 {
            request(&mut group, id(fingerprint), NOW);
        }
        // Bucket 8 takes both of its requests: it stays active for two seconds.
        request(&mut group, id(8), NOW);
        request(&mut group, id(8), NOW);
        let later = NOW + SECOND + SECOND / 2;
        assert!(allowed(request(&mut group, id(99), later)), "the seven idle ones made room");
        assert_eq!(Ways::decode(&group).entries().len(), 2);
    }

    #[test]
    fn garbage_in_a_group_is_read_as_entries_or_ignored() {
        // A truncated tail (never written by us) is ignored rather than trusted.
        let mut group = vec![7u8; ENTRY_BYTES + 5];
        assert!(matches!(request(&mut group, id(1), NOW), Outcome::Acquired(_)));
        assert_eq!(group.len() % ENTRY_BYTES, 0);
    }

    #[test]
    fn bucket_ids_separate_rules_limits_and_parts() {
        let groups = 1024;
        let base = bucket_id(SEED, groups, "per-ip", &PER_MINUTE, &[b"1.2.3.4"]);
        assert_eq!(base, bucket_id(SEED, groups, "per-ip", &PER_MINUTE, &[b"1.2.3.4"]));
        assert_ne!(base, bucket_id(SEED, groups, "per-ip2", &PER_MINUTE, &[b"1.2.3.4"]));
        assert_ne!(base, bucket_id(SEED, groups, "per-ip", &Limit { burst: 3, ..PER_MINUTE }, &[b"1.2.3.4"]));
        assert_ne!(base, bucket_id(*b"another seed....", groups, "per-ip", &PER_MINUTE, &[b"1.2.3.4"]));
        let split = |parts: &[&[u8]]| bucket_id(SEED, groups, "r", &PER_MINUTE, parts);
        assert_ne!(split(&[b"ab", b"c"]), split(&[b"a", b"bc"]));
        assert!(base.group < groups);
    }

    #[test]
    fn keys_spread_evenly_over_groups() {
        let groups = 64u32;
        let mut counts = vec![0u32; groups as usize];
        for key in 0..64_000u32 {
            let id = bucket_id(SEED, groups, "r", &PER_MINUTE, &[&key.to_le_bytes()]);
            counts[id.group as usize] += 1;
        }
        // 1000 expected per group; a fair hash stays well within ±15%.
        assert!(counts.iter().all(|&count| (850..=1150).contains(&count)), "{counts:?}");
    }
}
