//! One request against the configured rules: which rules apply, the key each builds, and the
//! bucket update in shared data. No proxy-wasm import: the request is seen through
//! [`RequestFacts`] and the store through `SharedStore`, so all of it runs in native tests.

use crate::config::{FailurePolicy, HeaderCondition, KeyPart, Match, RateLimitConfig, Rule, Scope};
use crate::gcra::{Acquire, Limit};
use crate::table::{self, BucketHasher, BucketId, Outcome};
use gateway_common::client_ip::from_source_address;
use gateway_common::path_match::strip_query;
use gateway_common::request::{ROUTE_NAME, SOURCE_ADDRESS};
use gateway_common::shared::{update, update_after, LastWrite, SharedStore, UpdateError};
use std::borrow::Cow;

/// Compare-and-swap attempts per bucket update. Every lost attempt means another worker's
/// update went through, so with a handful of workers a few attempts always suffice; the bound
/// only guards against a pathological storm.
pub const MAX_CAS_ATTEMPTS: u32 = 32;

/// What the filter can learn about the request: each fact is read only when a rule needs it
/// (the view behind it reads each from the host at most once per request).
pub use gateway_common::request::RequestFacts;

/// The result of one applicable rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    Allowed(Acquire),
    /// Over the limit; the request is rejected.
    Rejected(Acquire),
    /// Over the limit in shadow mode; the request goes on.
    ShadowRejected(Acquire),
    /// The bucket could not be used; the failure policy applied.
    Failed(Failure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The bucket's table group holds only other, still-refilling buckets.
    TableFull,
    /// Every compare-and-swap attempt lost to another worker.
    Contended,
    /// The shared-data host call failed (or the table is missing).
    Store,
    /// The rate limit service did not answer within the timeout.
    ServiceTimeout,
    /// The call failed: no such cluster, no healthy instance, or a non-OK gRPC status.
    ServiceError,
    /// The service answered something that is not a `RateLimitResponse` for this request.
    ServiceBadAnswer,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::TableFull => "table_full",
            Failure::Contended => "contended",
            Failure::Store => "store_error",
            Failure::ServiceTimeout => "service_timeout",
            Failure::ServiceError => "service_error",
            Failure::ServiceBadAnswer => "service_bad_answer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// Index into `RateLimitConfig::rules`.
    pub rule: usize,
    pub result: CheckResult,
    /// The key's table group was full of other active buckets, so the request was charged to
    /// the rule's overflow bucket instead (see [`table::overflow_key`]).
    pub overflowed: bool,
    /// A global rule's limit, as the rate limit service reported it (none for local rules,
    /// whose limit is in the config, or when the service has no limit for the descriptor).
    pub quota: Option<Quota>,
}

/// A limit as the rate limit service states it: `limit` requests per `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub window_seconds: u64,
}

/// One matching global rule's descriptor for the rate limit service: `("rule", name)`, then
/// one entry per key part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalDescriptor {
    /// Index into `RateLimitConfig::rules`.
    pub rule: usize,
    pub entries: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request through.
    Allow,
    /// 429 on behalf of rule `rule` (an index into `RateLimitConfig::rules`).
    Reject { rule: usize, retry_after_seconds: u64 },
    /// 503: a bucket failed and the policy is `fail_closed`.
    Unavailable { rule: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Every rule that was charged or consulted, in order. Rules after a rejecting one are
    /// not consulted, so a rejected request is never charged to them.
    pub checks: Vec<Check>,
    /// The global rules that apply, when the local rules let the request through: the rate
    /// limit service decides them (see `crate::global`).
    pub global: Vec<GlobalDescriptor>,
}

/// The table's hash key, and each local rule's hasher with the rule's name and limit already
/// hashed into it: made once per configuration, so a request hashes only its own key parts.
pub struct BucketKeys {
    seed: [u8; 16],
    /// Per rule (`None` for a global rule).
    prefixes: Vec<Option<BucketHasher>>,
}

impl BucketKeys {
    pub fn new(seed: [u8; 16], config: &RateLimitConfig) -> BucketKeys {
        let prefixes = config
            .rules
            .iter()
            .map(|rule| match &rule.scope {
                Scope::Local { limit, .. } => Some(BucketHasher::new(seed, &rule.name, limit)),
                Scope::Global => None,
            })
            .collect();
        BucketKeys { seed, prefixes }
    }
}

/// Evaluates `config`'s local rules in order for one request at `now_nanos`, and lists the
/// global rules that apply (local rules come first: a flood is shed before the network hop).
/// `keys` must have been made from `config`; `last_writes` holds this worker's last bucket
/// write per rule (see [`update_after`]: one shared-data read fewer while this worker is the
/// only one writing), and may be shorter than the rules.
pub fn evaluate(
    config: &RateLimitConfig,
    facts: &mut dyn RequestFacts,
    store: &dyn SharedStore,
    keys: &BucketKeys,
    last_writes: &mut [LastWrite],
    now_nanos: u64,
) -> Decision {
    let mut checks = Vec::new();
    let mut global = Vec::new();
    for (index, rule) in config.rules.iter().enumerate() {
        if !matches(&rule.matcher, facts) {
            continue;
        }
        let Scope::Local { limit, .. } = &rule.scope else {
            if let Some(entries) = descriptor_entries(rule, config, facts) {
                global.push(GlobalDescriptor { rule: index, entries });
            }
            continue;
        };
        // A rule whose key cannot be built (its header is absent) does not apply, as with
        // Envoy's rate limit descriptors; pair such rules with a client_ip rule.
        let Some(prefix) = keys.prefixes.get(index).and_then(Option::as_ref) else { continue };
        let Some(id) = bucket(prefix.clone(), rule, config, facts) else {
            continue;
        };
        let mut last_write = last_writes.get_mut(index);
        let mut charge = |key: &str, id: BucketId| {
            let decide = |group: &[u8]| table::decide(group, id, limit, now_nanos);
            let outcome = match last_write.as_deref_mut() {
                Some(last) => update_after(last, store, key, now_nanos, MAX_CAS_ATTEMPTS, decide),
                None => update(store, key, MAX_CAS_ATTEMPTS, decide),
            };
            check_result(outcome, rule)
        };
        let mut result = charge(&table::group_key(config.groups, id.group), id);
        let overflowed = result == CheckResult::Failed(Failure::TableFull);
        if overflowed {
            // Neither unlimited nor refused: every key without a slot shares one bucket of
            // the rule's own limit, so a flood of new keys gets one key's worth of requests.
            let (key, id) = overflow_bucket(keys, rule, limit);
            result = charge(&key, id);
        }
        checks.push(Check { rule: index, result, overflowed, quota: None });
        match result {
            CheckResult::Rejected(acquire) => {
                let verdict = Verdict::Reject { rule: index, retry_after_seconds: acquire.retry_after_seconds };
                return Decision { verdict, checks, global: Vec::new() };
            }
            CheckResult::Failed(_) if rule.failure_policy == FailurePolicy::FailClosed && !rule.shadow => {
                return Decision { verdict: Verdict::Unavailable { rule: index }, checks, global: Vec::new() }
            }
            _ => {}
        }
    }
    Decision { verdict: Verdict::Allow, checks, global }
}

/// The rule's overflow bucket: out of line, as only a full table group needs it.
#[cold]
fn overflow_bucket(keys: &BucketKeys, rule: &Rule, limit: &Limit) -> (String, BucketId) {
    (table::overflow_key(&rule.name), table::overflow_id(keys.seed, &rule.name, limit))
}

/// What one bucket update means for `rule`.
fn check_result(outcome: Result<Outcome, UpdateError>, rule: &Rule) -> CheckResult {
    match outcome {
        Ok(Outcome::Acquired(acquire)) if acquire.allowed => CheckResult::Allowed(acquire),
        Ok(Outcome::Acquired(acquire)) if rule.shadow => CheckResult::ShadowRejected(acquire),
        Ok(Outcome::Acquired(acquire)) => CheckResult::Rejected(acquire),
        Ok(Outcome::TableFull) => CheckResult::Failed(Failure::TableFull),
        Err(UpdateError::Contended { .. }) => CheckResult::Failed(Failure::Contended),
        Err(UpdateError::Missing | UpdateError::Store(_)) => CheckResult::Failed(Failure::Store),
    }
}

fn matches(matcher: &Match, facts: &mut dyn RequestFacts) -> bool {
    if !matcher.request.matches(facts) {
        return false;
    }
    matcher.headers.iter().all(|header| {
        let value = facts.header(&header.name);
        match &header.condition {
            HeaderCondition::Present => value.is_some(),
            HeaderCondition::Absent => value.is_none(),
            HeaderCondition::Equals(expected) => value == Some(expected.as_bytes()),
        }
    })
}

/// The rule's bucket for this request (`hasher` holds the rule's prefix), or `None` when one
/// of its key parts is missing.
fn bucket(
    mut hasher: BucketHasher,
    rule: &Rule,
    config: &RateLimitConfig,
    facts: &mut dyn RequestFacts,
) -> Option<BucketId> {
    for part in &rule.key {
        let bytes = match part {
            KeyPart::ClientIp(mask) => {
                Cow::Owned(facts.property(&SOURCE_ADDRESS).and_then(from_source_address).map(|ip| mask.key(ip))?)
            }
            KeyPart::Consumer => Cow::Borrowed(facts.header(&config.consumer_header)?),
            KeyPart::Path => Cow::Borrowed(path_key(facts.header(":path")?)),
            KeyPart::Route => Cow::Borrowed(facts.property(&ROUTE_NAME)?),
            KeyPart::Header(name) => Cow::Borrowed(facts.header(name)?),
            KeyPart::Fixed(text) => Cow::Borrowed(text.as_bytes()),
        };
        hasher.part(&bytes);
    }
    Some(hasher.id(config.groups))
}

/// A global rule's descriptor entries for this request, or `None` when a key part is missing.
/// The entry keys are the names Envoy's own rate limit actions use where one exists
/// (`masked_remote_address`, `generic_key`), so Envoy's ratelimit filter can send the same
/// descriptors; the value of `masked_remote_address` is `network/prefix`, as Envoy writes it.
#[inline(never)] // Only global rules need it; local rules should not carry its code.
fn descriptor_entries(
    rule: &Rule,
    config: &RateLimitConfig,
    facts: &mut dyn RequestFacts,
) -> Option<Vec<(String, String)>> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut entries = Vec::with_capacity(rule.key.len() + 1);
    entries.push(("rule".to_string(), rule.name.clone()));
    for part in &rule.key {
        let entry = match part {
            KeyPart::ClientIp(mask) => {
                let ip = facts.property(&SOURCE_ADDRESS).and_then(from_source_address)?;
                ("masked_remote_address".to_string(), mask.network(ip))
            }
            KeyPart::Consumer => ("consumer".to_string(), text(facts.header(&config.consumer_header)?)),
            KeyPart::Path => ("path".to_string(), text(path_key(facts.header(":path")?))),
            KeyPart::Route => ("route".to_string(), text(facts.property(&ROUTE_NAME)?)),
            KeyPart::Header(name) => (name.clone(), text(facts.header(name)?)),
            KeyPart::Fixed(value) => ("generic_key".to_string(), value.clone()),
        };
        entries.push(entry);
    }
    Some(entries)
}

/// The `path` key part: the path without its query string or trailing slashes, so `/p/` is
/// not a fresh bucket once `/p` is spent. Other spellings (`//p`, `/./p`, `/%70`) are made one
/// by Envoy's path normalization, which the shipped configs turn on (`normalize_path`,
/// `merge_slashes`): the filter sees the path Envoy routes.
fn path_key(path: &[u8]) -> &[u8] {
    let path = std::str::from_utf8(path).map_or(path, |text| strip_query(text).as_bytes());
    let mut end = path.len();
    while end > 1 && path.get(end - 1) == Some(&b'/') {
        end -= 1;
    }
    path.get(..end).unwrap_or(path)
}

/// Creates the table's groups, each rule's overflow bucket and the shared hash key. Call from
/// `on_configure`: Envoy runs it on its main thread before the workers start, so every group
/// exists before a request can update it (the host ignores the CAS for keys that do not exist
/// yet).
pub fn create_table(
    store: &dyn SharedStore,
    config: &RateLimitConfig,
    fresh_seed: [u8; 16],
) -> Result<[u8; 16], String> {
    use gateway_common::shared::ensure_exists;
    ensure_exists(store, table::SEED_KEY, &fresh_seed).map_err(|e| e.to_string())?;
    let seed = read_seed(store)?;
    for rule in &config.rules {
        ensure_exists(store, &table::overflow_key(&rule.name), b"").map_err(|e| e.to_string())?;
    }
    let groups = config.groups;
    let ready = table::ready_key(groups);
    if store.get(&ready).map_err(|e| e.to_string())?.is_none() {
        for index in 0..groups {
            ensure_exists(store, &table::group_key(groups, index), b"").map_err(|e| e.to_string())?;
        }
        store.set(&ready, b"1", 0).map_err(|e| e.to_string())?;
    }
    Ok(seed)
}

fn read_seed(store: &dyn SharedStore) -> Result<[u8; 16], String> {
    let stored = store.get(table::SEED_KEY).map_err(|e| e.to_string())?.ok_or("the hash key is missing")?;
    stored.value.as_slice().try_into().map_err(|_| format!("the hash key has {} bytes, not 16", stored.value.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::shared::{StoreError, Versioned};
    use gateway_common::testing::MemoryStore;
    use serde_json::json;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;

    const SECOND: u64 = 1_000_000_000;
    const NOW: u64 = 1_764_000_000 * SECOND;
    const SEED: [u8; 16] = [7; 16];

    #[derive(Default, Clone)]
    struct Request {
        headers: HashMap<String, Vec<u8>>,
        route: Option<Vec<u8>>,
        peer: Option<Vec<u8>>,
        reads: Vec<String>,
    }

    impl Request {
        fn get(path: &str) -> Request {
            Request::default().header(":method", "GET").header(":path", path).peer("10.0.0.1:40000")
        }
        fn header(mut self, name: &str, value: &str) -> Request {
            self.headers.insert(name.into(), value.as_bytes().to_vec());
            self
        }
        fn peer(mut self, peer: &str) -> Request {
            self.peer = Some(peer.as_bytes().to_vec());
            self
        }
        fn route(mut self, route: &str) -> Request {
            self.route = Some(route.as_bytes().to_vec());
            self
        }
    }

    impl RequestFacts for Request {
        fn header(&mut self, name: &str) -> Option<&[u8]> {
            self.reads.push(name.to_string());
            self.headers.get(name).map(Vec::as_slice)
        }
        fn property(&mut self, path: &'static [&'static str]) -> Option<&[u8]> {
            if path == ROUTE_NAME {
                self.reads.push("route".into());
                self.route.as_deref()
            } else if path == SOURCE_ADDRESS {
                self.reads.push("peer".into());
                self.peer.as_deref()
            } else {
                None
            }
        }
    }

    /// One worker: the compiled config, its bucket keys and its last writes, over a store
    /// that other workers may share.
    struct Gateway {
        config: RateLimitConfig,
        keys: BucketKeys,
        store: Arc<MemoryStore>,
        last_writes: RefCell<Vec<LastWrite>>,
    }

    impl Gateway {
        fn new(config: serde_json::Value) -> Gateway {
            let config = RateLimitConfig::parse(config.to_string().as_bytes()).unwrap();
            let store = Arc::new(MemoryStore::default());
            create_table(store.as_ref(), &config, SEED).unwrap();
            let last_writes = RefCell::new(config.rules.iter().map(|_| LastWrite::default()).collect());
            Gateway { keys: BucketKeys::new(SEED, &config), config, store, last_writes }
        }
        /// Another worker of the same VM: the same table, its own last writes.
        fn another_worker(&self) -> Gateway {
            Gateway {
                config: self.config.clone(),
                keys: BucketKeys::new(SEED, &self.config),
                store: Arc::clone(&self.store),
                last_writes: RefCell::new(self.config.rules.iter().map(|_| LastWrite::default()).collect()),
            }
        }
        fn send(&self, request: &Request, at: u64) -> Decision {
            let mut last_writes = self.last_writes.borrow_mut();
            evaluate(&self.config, &mut request.clone(), self.store.as_ref(), &self.keys, &mut last_writes, at)
        }
        /// How many of `count` identical requests at `at` are let through.
        fn allowed(&self, request: &Request, at: u64, count: usize) -> usize {
            (0..count).filter(|_| self.send(request, at).verdict == Verdict::Allow).count()
        }
    }

    fn rule(name: &str, key: serde_json::Value, requests: u64, burst: u64) -> serde_json::Value {
        json!({"name": name, "key": key, "limit": {"requests": requests, "per": "minute", "burst": burst}})
    }

    #[test]
    fn a_rules_prefix_hashed_once_gives_the_bucket_hashing_it_all_gives() {
        let config = RateLimitConfig::parse(
            json!({"rules": [rule("per-tenant", json!([{"header": "x-tenant"}, {"fixed": "all"}]), 60, 5)]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let Scope::Local { limit } = &config.rules[0].scope else { panic!("a local rule") };
        let keys = BucketKeys::new(SEED, &config);
        let prefix = keys.prefixes[0].clone().unwrap();
        let id = bucket(prefix, &config.rules[0], &config, &mut Request::get("/").header("x-tenant", "acme"));
        let whole = table::bucket_id(SEED, config.groups, "per-tenant", limit, &[b"acme", b"all"]);
        assert_eq!(id, Some(whole), "tables made before keep their buckets");
    }

    #[test]
    fn global_rules_are_listed_after_the_local_ones_with_envoys_descriptor_keys() {
        let gateway = Gateway::new(json!({
            "rate_limit_service": {"cluster": "ratelimit", "domain": "gateway"},
            "rules": [
                {"name": "shared", "global": true,
                 "key": [{"client_ip": {"v4_prefix_mask_len": 24}}, "consumer", "path", "route", {"header": "x-tenant"}, {"fixed": "all"}]},
                rule("local", json!(["client_ip"]), 60, 2),
                {"name": "needs-plan", "global": true, "key": [{"header": "x-plan"}]},
            ]
        }));
        let request = Request::get("/orders/7/?page=2")
            .peer("198.51.100.7:4000")
            .header("x-gateway-consumer", "ada")
            .header("x-tenant", "acme")
            .route("orders");
        let decision = gateway.send(&request, NOW);
        assert_eq!(decision.verdict, Verdict::Allow);
        assert_eq!(decision.checks.len(), 1, "only the local rule is decided here");
        let pairs = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
        };
        assert_eq!(
            decision.global,
            [GlobalDescriptor {
                rule: 0,
                entries: pairs(&[
                    ("rule", "shared"),
                    ("masked_remote_address", "198.51.100.0/24"),
                    ("consumer", "ada"),
                    ("path", "/orders/7"),
                    ("route", "orders"),
                    ("x-tenant", "acme"),
                    ("generic_key", "all"),
                ]),
            }],
            "a rule whose header is absent does not apply"
        );
        let ipv6 = gateway.send(
            &Request::get("/")
                .peer("[2001:db8::7]:1")
                .header("x-gateway-consumer", "ada")
                .header("x-tenant", "acme")
                .route("orders"),
            NOW,
        );
        assert_eq!(ipv6.global[0].entries[1], ("masked_remote_address".into(), "2001:db8::/64".into()));

        // Once the local rule rejects, the service is not asked.
        gateway.send(&request, NOW);
        let rejected = gateway.send(&request, NOW);
        assert!(matches!(rejected.verdict, Verdict::Reject { rule: 1, .. }));
        assert!(rejected.global.is_empty());
    }

    #[test]
    fn each_key_gets_its_own_bucket() {
        let gateway = Gateway::new(json!({"rules": [rule("per-ip", json!(["client_ip"]), 60, 3)]}));
        let alice = Request::get("/").peer("10.0.0.1:1111");
        let alice_other_port = Request::get("/").peer("10.0.0.1:2222");
        let bob = Request::get("/").peer("[2001:db8::1]:443");
        assert_eq!(gateway.allowed(&alice, NOW, 2), 2);
        assert_eq!(gateway.allowed(&alice_other_port, NOW, 5), 1, "same IP, same bucket");
        assert_eq!(gateway.allowed(&bob, NOW, 5), 3);
        // Bob's whole /64 is one client: a new address in it cannot mint a fresh bucket.
        assert_eq!(gateway.allowed(&Request::get("/").peer("[2001:db8::2:3]:443"), NOW, 5), 0);
        assert_eq!(gateway.allowed(&Request::get("/").peer("[2001:db8:0:1::1]:443"), NOW, 5), 3, "next /64");
    }

    /// Each worker guesses that its own last write is still the bucket's state; another
    /// worker's write in between makes the guess fail at the host, and the update reads.
    #[test]
    fn workers_taking_turns_on_one_bucket_share_its_limit_exactly() {
        let first = Gateway::new(json!({"rules": [
            rule("all", json!([{"fixed": "all"}]), 10, 10),
            rule("per-ip", json!(["client_ip"]), 60, 1000),
        ]}));
        let second = first.another_worker();
        let request = Request::get("/");
        let turns = [&first, &first, &second, &first, &second, &second, &second, &first];
        let allowed: usize = turns.iter().cycle().take(16).map(|worker| worker.allowed(&request, NOW, 1)).sum();
        assert_eq!(allowed, 10);
        assert_eq!(first.allowed(&request, NOW + 6 * SECOND, 3), 1, "one request refilled, whoever asks");
        assert_eq!(second.allowed(&request, NOW + 6 * SECOND, 3), 0);
    }

    #[test]
    fn client_ip_masks_choose_the_network_that_is_one_key() {
        let gateway = Gateway::new(json!({"rules": [rule(
            "per-net", json!([{"client_ip": {"v4_prefix_mask_len": 24, "v6_prefix_mask_len": 128}}]), 60, 2
        )]}));
        assert_eq!(gateway.allowed(&Request::get("/").peer("198.51.100.7:1"), NOW, 1), 1);
        assert_eq!(gateway.allowed(&Request::get("/").peer("198.51.100.200:1"), NOW, 5), 1, "same /24");
        assert_eq!(gateway.allowed(&Request::get("/").peer("198.51.101.7:1"), NOW, 5), 2);
        assert_eq!(gateway.allowed(&Request::get("/").peer("[2001:db8::1]:1"), NOW, 5), 2);
        assert_eq!(gateway.allowed(&Request::get("/").peer("[2001:db8::2]:1"), NOW, 5), 2, "/128: every address");
    }

    #[test]
    fn a_rejection_names_the_rule_and_the_wait() {
        let gateway = Gateway::new(json!({"rules": [rule("per-ip", json!(["client_ip"]), 1, 1)]}));
        let request = Request::get("/");
        assert_eq!(gateway.send(&request, NOW).verdict, Verdict::Allow);
        let decision = gateway.send(&request, NOW + SECOND);
        assert_eq!(decision.verdict, Verdict::Reject { rule: 0, retry_after_seconds: 59 });
        assert!(matches!(
            decision.checks[..],
            [Check { rule: 0, result: CheckResult::Rejected(_), overflowed: false, quota: None }]
        ));
        assert_eq!(gateway.send(&request, NOW + 60 * SECOND).verdict, Verdict::Allow);
    }

    #[test]
    fn every_applicable_rule_is_its_own_limit() {
        let gateway = Gateway::new(json!({"rules": [
            rule("per-consumer", json!(["consumer"]), 60, 3),
            rule("global", json!([{"fixed": "all"}]), 60, 4),
        ]}));
        let alice = Request::get("/").header("x-gateway-consumer", "alice");
        let bob = Request::get("/").header("x-gateway-consumer", "bob");
        assert_eq!(gateway.allowed(&alice, NOW, 5), 3);
        // Alice's two rejections stopped at her own rule, so the global limit has one left.
        let decision = gateway.send(&bob, NOW);
        assert_eq!(decision.verdict, Verdict::Allow);
        assert_eq!(decision.checks.len(), 2);
        assert_eq!(gateway.send(&bob, NOW).verdict, Verdict::Reject { rule: 1, retry_after_seconds: 1 });
    }

    #[test]
    fn a_rule_whose_key_part_is_missing_does_not_apply() {
        let gateway = Gateway::new(json!({"rules": [rule("per-key", json!([{"header": "x-api-key"}]), 60, 1)]}));
        let anonymous = Request::get("/");
        assert_eq!(gateway.allowed(&anonymous, NOW, 5), 5);
        assert!(gateway.send(&anonymous, NOW).checks.is_empty());
        let keyed = Request::get("/").header("x-api-key", "k1");
        assert_eq!(gateway.allowed(&keyed, NOW, 5), 1);
    }

    #[test]
    fn matches_select_the_rule() {
        let gateway = Gateway::new(json!({"rules": [{
            "name": "writes",
            "match": {
                "path": {"template": "/orders/{id}"},
                "methods": ["POST"],
                "route": "orders",
                "headers": [{"name": "x-plan", "equals": "free"}, {"name": "x-internal", "present": false}]
            },
            "key": [{"fixed": "all"}],
            "limit": {"requests": 1, "per": "hour"}
        }]}));
        let base = Request::get("/orders/7").header(":method", "POST").route("orders").header("x-plan", "free");
        let misses = [
            base.clone().header(":method", "GET"),
            base.clone().header(":path", "/orders/7/items"),
            base.clone().route("users"),
            base.clone().header("x-plan", "paid"),
            base.clone().header("x-internal", "1"),
            Request { route: None, ..base.clone() },
        ];
        for request in &misses {
            assert!(gateway.send(request, NOW).checks.is_empty());
        }
        assert_eq!(gateway.allowed(&base.clone().header(":path", "/orders/8?x=1"), NOW, 3), 1);
    }

    #[test]
    fn key_parts_read_the_request() {
        let gateway = Gateway::new(json!({
            "rules": [rule("composite", json!(["client_ip", "path", "route", {"header": "x-tenant"}]), 60, 1)]
        }));
        let request = Request::get("/a?page=1").peer("203.0.113.5:1000").route("r").header("x-tenant", "t1");
        assert_eq!(gateway.allowed(&request, NOW, 2), 1);
        // The query string, a trailing slash and the client's port are not part of the key.
        let same = Request::get("/a?page=2").peer("203.0.113.5").route("r").header("x-tenant", "t1");
        assert_eq!(gateway.allowed(&same, NOW, 1), 0);
        for spelling in ["/a/", "/a//", "/a/?x=1"] {
            assert_eq!(gateway.allowed(&same.clone().header(":path", spelling), NOW, 1), 0, "{spelling}");
        }
        assert_eq!(path_key(b"/"), b"/");
        assert_eq!(path_key(b"//?q"), b"/");
        for different in [
            same.clone().peer("203.0.113.6:1000"),
            same.clone().header(":path", "/b"),
            same.clone().route("s"),
            same.clone().header("x-tenant", "t2"),
        ] {
            assert_eq!(gateway.allowed(&different, NOW, 1), 1);
        }
    }

    #[test]
    fn only_the_facts_a_rule_needs_are_read() {
        let gateway = Gateway::new(json!({"rules": [
            rule("a", json!([{"header": "x-k"}]), 60, 10),
            rule("b", json!([{"header": "x-k"}, "route"]), 60, 10),
        ]}));
        let mut request = Request::get("/").header("x-k", "1").route("r");
        evaluate(&gateway.config, &mut request, gateway.store.as_ref(), &gateway.keys, &mut [], NOW);
        request.reads.dedup();
        request.reads.sort();
        request.reads.dedup();
        assert_eq!(request.reads, ["route", "x-k"]);
    }

    #[test]
    fn shadow_rules_never_reject() {
        let gateway = Gateway::new(json!({"rules": [{
            "name": "trial", "shadow": true, "key": ["client_ip"], "limit": {"requests": 2, "per": "minute"}
        }]}));
        let request = Request::get("/");
        let decisions: Vec<Decision> = (0..4).map(|_| gateway.send(&request, NOW)).collect();
        assert!(decisions.iter().all(|decision| decision.verdict == Verdict::Allow));
        let shadowed =
            decisions.iter().filter(|d| matches!(d.checks[0].result, CheckResult::ShadowRejected(_))).count();
        assert_eq!(shadowed, 2);
    }

    /// A store whose host calls fail, like a shared-data error in Envoy.
    struct BrokenStore;
    impl SharedStore for BrokenStore {
        fn get(&self, _: &str) -> Result<Option<Versioned>, StoreError> {
            Err(StoreError::Host("InternalFailure".into()))
        }
        fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
            Err(StoreError::Host("InternalFailure".into()))
        }
    }

    #[test]
    fn store_failures_follow_the_failure_policy() {
        for (policy, expected) in [("fail_open", Verdict::Allow), ("fail_closed", Verdict::Unavailable { rule: 0 })] {
            let config = json!({"failure_policy": policy, "rules": [rule("r", json!(["client_ip"]), 60, 1)]});
            let config = RateLimitConfig::parse(config.to_string().as_bytes()).unwrap();
            let decision =
                evaluate(&config, &mut Request::get("/"), &BrokenStore, &BucketKeys::new(SEED, &config), &mut [], NOW);
            assert_eq!(decision.verdict, expected);
            assert_eq!(decision.checks[0].result, CheckResult::Failed(Failure::Store));
        }
    }

    /// A flood of new keys that fills the table is neither let through unlimited nor refused
    /// outright: every key that finds no slot shares the rule's overflow bucket, with the
    /// rule's own limit, whatever the failure policy.
    #[test]
    fn keys_that_find_no_slot_share_the_rules_overflow_bucket() {
        // Capacity 8 is a single group of eight ways.
        for policy in ["fail_open", "fail_closed"] {
            let gateway = Gateway::new(json!({"capacity": 8, "failure_policy": policy, "rules": [
                rule("r", json!([{"header": "x-k"}]), 60, 2),
                rule("other", json!([{"header": "x-k"}]), 60, 1000),
            ]}));
            let key = |k: usize| Request::get("/").header("x-k", &k.to_string());
            // Four keys, two rules: eight buckets fill the single group.
            for k in 0..4 {
                assert_eq!(gateway.allowed(&key(k), NOW, 1), 1);
            }
            // Seven new keys: two requests through the shared overflow bucket, then 429.
            let decisions: Vec<Decision> = (100..107).map(|k| gateway.send(&key(k), NOW)).collect();
            let allowed = decisions.iter().filter(|decision| decision.verdict == Verdict::Allow).count();
            assert_eq!(allowed, 2, "{policy}: the overflow bucket has the rule's burst");
            assert!(decisions.iter().all(|decision| decision.checks[0].overflowed), "{policy}");
            assert!(matches!(decisions[6].verdict, Verdict::Reject { rule: 0, .. }), "{policy}");
            // The four active keys keep exactly what they had left.
            for k in 0..4 {
                assert_eq!(gateway.allowed(&key(k), NOW, 3), 1, "{policy}");
            }
            // The other rule's overflow bucket is its own.
            assert!(decisions.iter().all(|decision| decision.checks.len() < 2
                || (decision.checks[1].overflowed && matches!(decision.checks[1].result, CheckResult::Allowed(_)))));
            // Once the keyed buckets go idle, new keys get slots of their own again.
            let later = NOW + 60 * SECOND;
            let decision = gateway.send(&key(200), later);
            assert_eq!(decision.verdict, Verdict::Allow);
            assert!(!decision.checks[0].overflowed);
        }
    }

    /// No client key reaches the overflow bucket: it is not a hashed bucket of the table.
    #[test]
    fn no_key_names_the_overflow_bucket() {
        let gateway = Gateway::new(json!({"capacity": 8, "rules": [rule("r", json!(["consumer"]), 60, 1)]}));
        for name in ["__overflow__", "overflow", "other", "anonymous", ""] {
            let request = Request::get("/").header("x-gateway-consumer", name);
            assert_eq!(gateway.allowed(&request, NOW, 1), 1, "{name:?}");
            assert!(!gateway.send(&request, NOW).checks[0].overflowed, "{name:?}");
        }
        let overflow = gateway.store.get(&table::overflow_key("r")).unwrap().unwrap();
        assert!(overflow.value.is_empty(), "untouched");
    }

    #[test]
    fn a_missing_table_is_a_store_failure_not_a_fresh_bucket() {
        let config =
            RateLimitConfig::parse(json!({"rules": [rule("r", json!(["client_ip"]), 60, 1)]}).to_string().as_bytes())
                .unwrap();
        let store = MemoryStore::default();
        let decision = evaluate(&config, &mut Request::get("/"), &store, &BucketKeys::new(SEED, &config), &mut [], NOW);
        assert_eq!(decision.checks[0].result, CheckResult::Failed(Failure::Store));
        assert_eq!(store.get(&table::group_key(config.groups, 0)).unwrap(), None, "nothing created by a request");
    }

    #[test]
    fn create_table_keeps_the_first_seed_and_existing_buckets() {
        let store = MemoryStore::default();
        let config = RateLimitConfig::parse(
            json!({"capacity": 32, "rules": [rule("r", json!(["client_ip"]), 60, 1)]}).to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(config.groups, 4);
        assert_eq!(create_table(&store, &config, [1; 16]).unwrap(), [1; 16]);
        store.set(&table::group_key(4, 2), b"state", 0).unwrap();
        store.set(&table::overflow_key("r"), b"overflow state", 0).unwrap();
        // A second configure (another worker, or a reload) must not reset anything.
        assert_eq!(create_table(&store, &config, [2; 16]).unwrap(), [1; 16]);
        assert_eq!(store.get(&table::group_key(4, 2)).unwrap().unwrap().value, b"state");
        assert_eq!(store.get(&table::overflow_key("r")).unwrap().unwrap().value, b"overflow state");
        for index in 0..4 {
            assert!(store.get(&table::group_key(4, index)).unwrap().is_some());
        }
        assert!(store.get(&table::group_key(4, 4)).unwrap().is_none());
    }
}
