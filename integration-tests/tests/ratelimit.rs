//! The ratelimit filter in a real Envoy, against a real backend.

use integration_tests::backend::Backend;
use integration_tests::client::{self, Response};
use integration_tests::envoy::Envoy;
use integration_tests::gateway::Gateway;
use integration_tests::rate_limit_headers::{params, rate_limit_field};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

const DECISIONS: &str = "gateway_ratelimit_requests_total";
const FAILURES: &str = "gateway_ratelimit_failures_total";

struct Setup {
    envoy: Envoy,
    _backend: Backend,
}

/// Envoy with `concurrency` workers: route `api` (`/`) to an echo backend, the metrics
/// filter first (so rejections are counted as outcomes), then ratelimit with `config`.
fn gateway(config: Value, concurrency: u32) -> Setup {
    let backend = Backend::echo("api");
    let gateway = Gateway::new()
        .cluster("api_svc", &[backend.port()])
        .route("api", "/", "api_svc")
        .wasm_filter("metrics", json!({}))
        .wasm_filter("ratelimit", config);
    Setup { envoy: Envoy::start(&gateway.render(), concurrency), _backend: backend }
}

fn rule(name: &str, key: Value, requests: u64, per: &str, burst: u64) -> Value {
    json!({"name": name, "key": key, "limit": {"requests": requests, "per": per, "burst": burst}})
}

fn get(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> Response {
    client::request("GET", &format!("{}{path}", envoy.url()), headers)
}

/// `threads` clients, each on its own connections, released at once; every one sends
/// `per_thread` requests. Returns how many answers had each status.
fn burst(envoy: &Envoy, threads: usize, per_thread: usize, headers: &[(&str, &str)]) -> BTreeMap<u16, usize> {
    let url = format!("{}/burst", envoy.url());
    let headers: Vec<(String, String)> = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (url, headers, start) = (url.clone(), headers.clone(), start.clone());
            std::thread::spawn(move || {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                start.wait();
                // A new connection per request, so the kernel spreads them over the workers.
                (0..per_thread).map(|_| client::request("GET", &url, &headers).status).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for handle in handles {
        for status in handle.join().unwrap() {
            *counts.entry(status).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn one_key_gets_exactly_its_burst_with_1_2_and_4_workers() {
    const BURST: usize = 20;
    for workers in [1, 2, 4] {
        let setup =
            gateway(json!({"rules": [rule("global", json!([{"fixed": "all"}]), 20, "hour", BURST as u64)]}), workers);
        let counts = burst(&setup.envoy, 16, 10, &[]);
        assert_eq!(counts.get(&200), Some(&BURST), "{workers} workers: {counts:?}");
        assert_eq!(counts.get(&429), Some(&(160 - BURST)), "{workers} workers: {counts:?}");
        let per_worker = setup.envoy.connections_per_worker(workers);
        assert!(per_worker.iter().all(|&n| n > 0.0), "{workers} workers took connections: {per_worker:?}");
        let envoy = &setup.envoy;
        // Each worker adds its counts to Envoy's counters once a second.
        let allowed = BURST as f64;
        assert_eq!(
            envoy.eventually_sample(DECISIONS, &[("rule", "global"), ("decision", "allowed")], allowed),
            allowed
        );
        let rejected = (160 - BURST) as f64;
        assert_eq!(
            envoy.eventually_sample(DECISIONS, &[("rule", "global"), ("decision", "rejected")], rejected),
            rejected
        );
        let rejected = (160 - BURST) as f64;
        assert_eq!(envoy.eventually_sample("gateway_requests_total", &[("code", "429")], rejected), rejected);
    }
}

/// A worker that made a bucket's last write itself writes the next update without reading the
/// bucket first (its guess of the write's CAS is right when nothing else wrote in between):
/// against requests that each bring a new key, a hot key costs one host call fewer per request.
#[test]
fn a_hot_key_on_one_worker_skips_the_bucket_read() {
    let backend = Backend::echo("api");
    let gateway = Gateway::new().cluster("api_svc", &[backend.port()]).route("api", "/", "api_svc").wasm_filter(
        "ratelimit",
        json!({"rules": [rule("per-key", json!([{"header": "x-k"}]), 1_000_000, "second", 1_000_000)]}),
    );
    let envoy = Envoy::start(&gateway.render(), 1);
    const REQUESTS: usize = 300;
    // The module adds its count to Envoy's counter once a second.
    let calls_per_request = |key: &dyn Fn(usize) -> String| {
        std::thread::sleep(Duration::from_millis(1_300));
        let before = envoy.stat("wasmcustom.gateway_host_calls_total");
        for index in 0..REQUESTS {
            assert_eq!(get(&envoy, "/", &[("x-k", &key(index))]).status, 200);
        }
        std::thread::sleep(Duration::from_millis(1_300));
        (envoy.stat("wasmcustom.gateway_host_calls_total") - before) as f64 / REQUESTS as f64
    };
    let new_keys = calls_per_request(&|index| format!("key-{index}"));
    let hot_key = calls_per_request(&|_| "hot".to_string());
    // Counter flushes on the timer add a few calls to each phase: well under 0.1 per request.
    let saved = new_keys - hot_key;
    assert!((0.9..1.1).contains(&saved), "new keys {new_keys:.2} calls per request, a hot key {hot_key:.2}");
}

#[test]
fn separate_keys_are_independent_under_concurrency() {
    let setup = gateway(json!({"rules": [rule("per-tenant", json!([{"header": "x-tenant"}]), 5, "hour", 5)]}), 2);
    let tenant_a = burst(&setup.envoy, 8, 3, &[("x-tenant", "a")]);
    let tenant_b = burst(&setup.envoy, 8, 3, &[("x-tenant", "b")]);
    assert_eq!(tenant_a.get(&200), Some(&5), "{tenant_a:?}");
    assert_eq!(tenant_b.get(&200), Some(&5), "{tenant_b:?}");
    // A request without the key's header is not limited by this rule.
    assert_eq!(burst(&setup.envoy, 4, 3, &[]).get(&200), Some(&12));
}

#[test]
fn a_rejection_is_429_with_json_retry_after_and_headers() {
    let config = json!({"legacy_headers": true, "rules": [rule("per-ip", json!(["client_ip"]), 3, "minute", 3)]});
    let setup = gateway(config, 1);
    let answers: Vec<Response> = (0..4).map(|_| get(&setup.envoy, "/items", &[])).collect();
    for (index, answer) in answers.iter().take(3).enumerate() {
        assert_eq!(answer.status, 200);
        let policy = rate_limit_field(answer.header("ratelimit-policy").unwrap());
        assert_eq!(policy, BTreeMap::from([("per-ip".to_string(), params(&[("q", 3), ("w", 60)]))]));
        let state = rate_limit_field(answer.header("ratelimit").unwrap());
        let remaining = 2 - index as i64;
        // `t` is the seconds until more quota is available: the bucket refills one request
        // per 20 s, so one more request fits 20 s after each grant.
        assert_eq!(state["per-ip"], params(&[("r", remaining), ("t", 20)]), "request {index}");
        assert_eq!(answer.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(answer.header("x-ratelimit-remaining"), Some(remaining.to_string().as_str()));
    }
    let rejected = &answers[3];
    assert_eq!(rejected.status, 429);
    assert_eq!(rejected.header("content-type"), Some("application/json"));
    // The next request fits in 20 s (less the few ms the test took), rounded up.
    assert_eq!(rejected.header("retry-after"), Some("20"));
    assert_eq!(rejected.json()["error"], "rate_limited");
    assert_eq!(rejected.json()["message"], "rate limit `per-ip` exceeded; retry in 20 s");
    let state = rate_limit_field(rejected.header("ratelimit").unwrap());
    // `Retry-After` and `t` name the same moment (the draft: never earlier than `t`).
    assert_eq!(state["per-ip"], params(&[("r", 0), ("t", 20)]));
    assert_eq!(rejected.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(rejected.header("x-ratelimit-reset"), Some("20"));
}

#[test]
fn the_bucket_refills_after_the_wait_it_announced() {
    let setup = gateway(json!({"rules": [rule("per-ip", json!(["client_ip"]), 2, "second", 1)]}), 2);
    assert_eq!(get(&setup.envoy, "/", &[]).status, 200);
    let rejected = get(&setup.envoy, "/", &[]);
    assert_eq!(rejected.status, 429);
    assert_eq!(rejected.header("retry-after"), Some("1"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(&setup.envoy, "/", &[]).status, 200, "one request refills every 500 ms");
    assert_eq!(get(&setup.envoy, "/", &[]).status, 429);
}

#[test]
fn several_rules_each_report_and_the_tightest_rejects() {
    let config = json!({"rules": [
        rule("per-consumer", json!(["consumer"]), 2, "minute", 2),
        rule("global", json!([{"fixed": "all"}]), 100, "minute", 100),
        {"name": "quiet", "key": [{"fixed": "x"}], "limit": {"requests": 100, "per": "minute"}, "headers": false},
    ]});
    let setup = gateway(config, 1);
    let alice = [("x-gateway-consumer", "alice")];
    let first = get(&setup.envoy, "/", &alice);
    let state = rate_limit_field(first.header("ratelimit").unwrap());
    assert_eq!(state.keys().collect::<Vec<_>>(), ["global", "per-consumer"]);
    assert_eq!(state["per-consumer"]["r"], 1);
    assert_eq!(state["global"]["r"], 99);
    assert_eq!(get(&setup.envoy, "/", &alice).status, 200);
    let rejected = get(&setup.envoy, "/", &alice);
    assert_eq!(rejected.status, 429);
    assert!(rejected.json()["message"].as_str().unwrap().contains("per-consumer"));
    // Bob is not affected by Alice's limit; the rejected request was not charged to `global`.
    let bob = get(&setup.envoy, "/", &[("x-gateway-consumer", "bob")]);
    assert_eq!(bob.status, 200);
    assert_eq!(rate_limit_field(bob.header("ratelimit").unwrap())["global"]["r"], 97);
}

#[test]
fn shadow_mode_never_blocks_but_reports_and_counts() {
    let config = json!({"rules": [{
        "name": "trial", "shadow": true, "key": ["client_ip"], "limit": {"requests": 2, "per": "hour"}
    }]});
    let setup = gateway(config, 2);
    let answers: Vec<Response> = (0..5).map(|_| get(&setup.envoy, "/", &[])).collect();
    assert!(answers.iter().all(|answer| answer.status == 200));
    let last = rate_limit_field(answers[4].header("ratelimit").unwrap());
    assert_eq!(last["trial"]["r"], 0);
    let envoy = &setup.envoy;
    assert_eq!(envoy.eventually_sample(DECISIONS, &[("rule", "trial"), ("decision", "allowed")], 2.0), 2.0);
    assert_eq!(envoy.eventually_sample(DECISIONS, &[("rule", "trial"), ("decision", "shadow_rejected")], 3.0), 3.0);
    assert_eq!(envoy.sample(DECISIONS, &[("rule", "trial"), ("decision", "rejected")]), 0.0);
}

/// `client_ip` is Envoy's trusted client address, so the trust rules are Envoy's own
/// connection manager settings (`use_remote_address`, `xff_num_trusted_hops`).
#[test]
fn client_ip_follows_envoys_forwarded_for_trust() {
    let config = json!({"rules": [rule("per-ip", json!(["client_ip"]), 1, "hour", 1)]});
    let start = |hops: u32| {
        let backend = Backend::echo("api");
        let gateway = Gateway::new()
            .cluster("api_svc", &[backend.port()])
            .route("api", "/", "api_svc")
            .use_remote_address(hops)
            .wasm_filter("ratelimit", config.clone());
        Setup { envoy: Envoy::start(&gateway.render(), 1), _backend: backend }
    };

    // An edge Envoy trusts no proxy: x-forwarded-for cannot buy a client a fresh bucket.
    let edge = start(0);
    let send = |setup: &Setup, xff: Option<&str>| {
        let headers: Vec<(&str, &str)> = xff.map(|value| ("x-forwarded-for", value)).into_iter().collect();
        get(&setup.envoy, "/", &headers).status
    };
    assert_eq!(send(&edge, None), 200);
    assert_eq!(send(&edge, Some("203.0.113.7")), 429);
    assert_eq!(send(&edge, Some("198.51.100.1, 203.0.113.8")), 429);

    // Behind one trusted proxy, the proxy's entry (the last one) is the client.
    let behind_proxy = start(1);
    assert_eq!(send(&behind_proxy, Some("203.0.113.7")), 200);
    assert_eq!(send(&behind_proxy, Some("1.1.1.1, 203.0.113.7")), 429, "forged entries on the left change nothing");
    assert_eq!(send(&behind_proxy, Some("9.9.9.9, 8.8.8.8, 203.0.113.7")), 429);
    assert_eq!(send(&behind_proxy, Some("203.0.113.8")), 200, "another client");
}

#[test]
fn matches_choose_which_requests_a_rule_limits() {
    let config = json!({"rules": [{
        "name": "order-writes",
        "match": {"path": {"template": "/orders/{id}"}, "methods": ["POST"], "route": "api"},
        "key": [{"fixed": "all"}],
        "limit": {"requests": 1, "per": "hour"}
    }]});
    let setup = gateway(config, 1);
    let post = |path: &str| client::request("POST", &format!("{}{path}", setup.envoy.url()), &[]).status;
    assert_eq!(post("/orders/1"), 200);
    assert_eq!(post("/orders/2?x=1"), 429);
    assert_eq!(post("/orders/1/items"), 200, "template does not match");
    assert_eq!(get(&setup.envoy, "/orders/1", &[]).status, 200, "method does not match");
}

/// A flood of new keys that fills the table gets one key's worth of requests, not unlimited
/// ones and not 503s: keys without a slot share the rule's overflow bucket, whatever the
/// failure policy; the active keys keep their own buckets; it is counted and logged.
#[test]
fn a_full_table_sends_new_keys_to_the_rules_overflow_bucket() {
    // Capacity 8 is one group of eight buckets; a ninth active key cannot get one.
    for policy in ["fail_open", "fail_closed"] {
        let config = json!({"capacity": 8, "failure_policy": policy, "rules": [rule("per-key", json!([{"header": "x-key"}]), 5, "hour", 5)]});
        let setup = gateway(config, 2);
        for key in 0..8 {
            assert_eq!(get(&setup.envoy, "/", &[("x-key", &key.to_string())]).status, 200);
        }
        // Seven flood keys, each new: the overflow bucket admits the rule's burst of 5.
        let statuses: Vec<u16> =
            (100..107).map(|key| get(&setup.envoy, "/", &[("x-key", &key.to_string())]).status).collect();
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429], "{policy}");
        // The eight active keys were not evicted: each has exactly 4 of its 5 left.
        for key in 0..8 {
            let statuses: Vec<u16> =
                (0..5).map(|_| get(&setup.envoy, "/", &[("x-key", &key.to_string())]).status).collect();
            assert_eq!(statuses, [200, 200, 200, 200, 429], "{policy} key {key}");
        }
        let envoy = &setup.envoy;
        assert_eq!(envoy.eventually_sample(FAILURES, &[("rule", "per-key"), ("reason", "table_full")], 7.0), 7.0);
        assert!(envoy.log().contains("keys without a slot share the rule's overflow bucket"), "{policy}");
    }
}

/// One IPv6 client holds a /64: rotating through its addresses does not mint new buckets.
#[test]
fn an_ipv6_client_cannot_mint_keys_within_its_network() {
    let config = json!({"rules": [rule("per-ip", json!(["client_ip"]), 3, "hour", 3)]});
    let backend = Backend::echo("api");
    // Behind one trusted proxy, which names the client in x-forwarded-for.
    let gateway = Gateway::new()
        .cluster("api_svc", &[backend.port()])
        .route("api", "/", "api_svc")
        .use_remote_address(1)
        .wasm_filter("ratelimit", config);
    let setup = Setup { envoy: Envoy::start(&gateway.render(), 1), _backend: backend };
    let statuses: Vec<u16> = (1..=6)
        .map(|host| get(&setup.envoy, "/", &[("x-forwarded-for", &format!("2001:db8:0:7::{host:x}"))]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    assert_eq!(get(&setup.envoy, "/", &[("x-forwarded-for", "2001:db8:0:8::1")]).status, 200, "another /64");
}

#[test]
fn a_bad_configuration_is_refused_with_the_field_named() {
    let backend = Backend::echo("api");
    for (config, expected) in [
        (json!({"rules": [rule("r", json!(["client_ip"]), 1, "0s", 1)]}), "rules[0].limit.per"),
        (json!({"rules": [rule("r", json!(["client_ip"]), 1, "second", 0)]}), "rules[0].limit.burst"),
        (json!({"rules": [rule("r", json!(["ip"]), 1, "second", 1)]}), "rules[0].key[0]"),
        (json!({"rules": [], "extra": true}), "extra"),
    ] {
        let gateway = Gateway::new()
            .cluster("api_svc", &[backend.port()])
            .route("api", "/", "api_svc")
            .wasm_filter("ratelimit", config.clone());
        let error = match Envoy::try_start(&gateway.render(), 1) {
            Ok(_) => panic!("Envoy accepted {config}"),
            Err(log) => log,
        };
        assert!(error.contains(&format!("ratelimit: invalid configuration at `{expected}`")), "{config}: {error}");
    }
}

/// With the auth filter in front, the consumer key is the authenticated consumer: a client
/// cannot move to another consumer's bucket by sending the header itself.
#[test]
fn consumer_keys_come_from_the_auth_filter() {
    use sha2::{Digest, Sha256};
    let backend = Backend::echo("api");
    let digest = |key: &str| format!("{:x}", Sha256::digest(key.as_bytes()));
    let auth = json!({
        "api_keys": {"keys": {digest("alice-key"): "alice", digest("bob-key"): "bob"}},
        "rules": [{"requires": {"api_key": {}}}]
    });
    let limits = json!({"rules": [rule("per-consumer", json!(["consumer"]), 2, "hour", 2)]});
    let gateway = Gateway::new()
        .cluster("api_svc", &[backend.port()])
        .route("api", "/", "api_svc")
        .wasm_filter("auth", auth)
        .wasm_filter("ratelimit", limits);
    let envoy = Envoy::start(&gateway.render(), 2);
    let send = |key: &str, claimed: Option<&str>| {
        let mut headers = vec![("x-api-key", key)];
        headers.extend(claimed.map(|consumer| ("x-gateway-consumer", consumer)));
        get(&envoy, "/", &headers).status
    };
    assert_eq!(send("alice-key", None), 200);
    assert_eq!(send("alice-key", Some("bob")), 200, "still alice's bucket");
    assert_eq!(send("alice-key", Some("carol")), 429, "alice's two are used, whatever she claims");
    assert_eq!(send("bob-key", None), 200);
    assert_eq!(send("bob-key", None), 200);
    assert_eq!(send("bob-key", None), 429);
    assert_eq!(get(&envoy, "/", &[("x-gateway-consumer", "dave")]).status, 401, "no key, no request");
}
