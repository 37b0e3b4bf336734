//! Global rules: the ratelimit filter in several real Envoys, asking the real
//! `ratelimit-service`, which counts in a real Redis.

use integration_tests::backend::Backend;
use integration_tests::client::{self, Response};
use integration_tests::envoy::Envoy;
use integration_tests::gateway::Gateway;
use integration_tests::rate_limit_headers::{params, rate_limit_field};
use integration_tests::rls::{RateLimitService, Redis, ServiceOptions};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DECISIONS: &str = "gateway_ratelimit_requests_total";
const FAILURES: &str = "gateway_ratelimit_failures_total";

/// The service's limits: `per-client` keys on `x-client` (100 an hour, so nothing refills
/// during a test) and `per-key` on `x-key` (7 an hour).
const LIMITS: &str = "\
domain: gateway
descriptors:
  - key: rule
    value: per-client
    descriptors:
      - key: x-client
        rate_limit: {unit: hour, requests_per_unit: 100}
  - key: rule
    value: per-key
    descriptors:
      - key: x-key
        rate_limit: {unit: hour, requests_per_unit: 7}
";

/// Redis, the service and the backend every Envoy of a test shares.
struct Counting {
    redis: Redis,
    service: RateLimitService,
    backend: Backend,
}

impl Counting {
    fn start() -> Counting {
        let redis = Redis::start();
        let service = RateLimitService::start(ServiceOptions {
            limits: LIMITS.into(),
            redis_url: redis.url(),
            redis_timeout_ms: 50,
        });
        Counting { redis, service, backend: Backend::echo("api") }
    }

    /// An Envoy with `workers` workers whose ratelimit filter has `rules`, asking the service
    /// with `timeout` and failing as `failure_policy` says.
    fn envoy(&self, workers: u32, timeout: &str, failure_policy: &str) -> Envoy {
        let config = json!({
            "failure_policy": failure_policy,
            "rate_limit_service": {"cluster": "ratelimit", "domain": "gateway", "timeout": timeout},
            "rules": [
                {"name": "per-client", "global": true, "key": [{"header": "x-client"}]},
                {"name": "per-key", "global": true, "key": [{"header": "x-key"}]},
            ]
        });
        let gateway = Gateway::new()
            .cluster("api_svc", &[self.backend.port()])
            .grpc_cluster("ratelimit", &[self.service.grpc_port()])
            .route("api", "/", "api_svc")
            .wasm_filter("metrics", json!({}))
            .wasm_filter("ratelimit", config);
        Envoy::start(&gateway.render(), workers)
    }
}

fn get(envoy: &Envoy, headers: &[(&str, &str)]) -> Response {
    client::request("GET", &format!("{}/api", envoy.url()), headers)
}

/// Sends every request of `plan` (Envoy index, header name, header value) from `threads`
/// threads as fast as they go; returns the statuses per header value.
fn flood(envoys: &[Envoy], plan: Vec<(usize, &'static str, String)>, threads: usize) -> BTreeMap<String, Vec<u16>> {
    let urls: Vec<String> = envoys.iter().map(|envoy| format!("{}/api", envoy.url())).collect();
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (plan, next, urls) = (plan.clone(), next.clone(), urls.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((envoy, header, value)) = plan.get(index) else { return seen };
                    let status = client::request("GET", &urls[*envoy], &[(header, value.as_str())]).status;
                    seen.push((value.clone(), status));
                }
            })
        })
        .collect();
    let mut statuses: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for handle in handles {
        for (value, status) in handle.join().unwrap() {
            statuses.entry(value).or_default().push(status);
        }
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|seen| **seen == status).count()
}

/// Every status of `statuses` is `expected`.
fn all(statuses: &[u16], expected: u16) -> bool {
    statuses.iter().all(|status| *status == expected)
}

#[test]
fn three_envoys_share_one_exact_limit() {
    let counting = Counting::start();
    let envoys: Vec<Envoy> = (0..3).map(|_| counting.envoy(2, "2s", "fail_closed")).collect();

    // One key, limit 100: 1,000 requests over the three Envoys from 12 threads.
    let plan = (0..1_000).map(|i| (i % 3, "x-client", "one".to_string())).collect();
    let statuses = flood(&envoys, plan, 12);
    let one = &statuses["one"];
    assert_eq!((count(one, 200), count(one, 429)), (100, 900), "exactly the limit, nothing else");
    for envoy in &envoys {
        assert!(envoy.connections_per_worker(2).iter().all(|n| *n > 0.0), "every worker took part");
        assert_eq!(envoy.sample(FAILURES, &[("rule", "per-client")]), 0.0);
    }

    // 500 keys x 10 requests, limit 7 each, spread the same way.
    let plan = (0..5_000).map(|i| (i % 3, "x-key", format!("key-{}", i % 500))).collect();
    let statuses = flood(&envoys, plan, 12);
    assert_eq!(statuses.len(), 500);
    for (key, seen) in &statuses {
        assert_eq!((count(seen, 200), count(seen, 429)), (7, 3), "{key}");
    }
    let allowed: f64 = envoys
        .iter()
        .map(|envoy| envoy.eventually_sample(DECISIONS, &[("rule", "per-key"), ("decision", "allowed")], -1.0))
        .sum();
    assert_eq!(allowed, 3_500.0, "the filters' metrics agree");
    assert_eq!(
        counting.service.sample(r#"ratelimit_service_descriptors_total{domain="gateway",code="ok"}"#),
        100.0 + 3_500.0
    );
}

#[test]
fn the_headers_parse_as_structured_fields_and_follow_the_services_count() {
    let counting = Counting::start();
    let envoy = counting.envoy(2, "2s", "fail_closed");
    for sent in 1..=9u64 {
        let response = get(&envoy, &[("x-key", "headers")]);
        let policy = rate_limit_field(response.header("ratelimit-policy").expect("RateLimit-Policy"));
        assert_eq!(policy["per-key"], params(&[("q", 7), ("w", 3_600)]));
        let state = rate_limit_field(response.header("ratelimit").expect("RateLimit"));
        let remaining = state["per-key"]["r"];
        let wait = state["per-key"]["t"];
        if sent <= 7 {
            assert_eq!(response.status, 200);
            assert_eq!(remaining, 7 - sent as i64, "request {sent}");
            // 7 an hour: one more every 514.3 s, and the first of those is what `t` says.
            assert!((500..=515).contains(&wait), "t={wait}");
        } else {
            assert_eq!(response.status, 429);
            assert_eq!(remaining, 0);
            assert_eq!(response.header("retry-after"), Some(wait.to_string().as_str()), "Retry-After is t");
            let body = response.json();
            assert_eq!(body["error"], "rate_limited");
        }
    }
    // A key the service has no limit for is let through without headers.
    let free = client::request("GET", &format!("{}/api", envoy.url()), &[]);
    assert_eq!(free.status, 200);
    assert_eq!(free.header("ratelimit"), None);
}

/// Sends `count` requests with a fresh `x-key` each (so none is over its limit) and returns
/// the statuses and the slowest answer.
fn timed_requests(envoy: &Envoy, count: usize, label: &str) -> (Vec<u16>, Duration) {
    let mut slowest = Duration::ZERO;
    let statuses = (0..count)
        .map(|i| {
            let started = Instant::now();
            let status = get(envoy, &[("x-key", &format!("{label}-{i}"))]).status;
            slowest = slowest.max(started.elapsed());
            status
        })
        .collect();
    (statuses, slowest)
}

/// Exactly 7 of 10 requests pass for a fresh key on `envoy`.
fn assert_exact_again(envoy: &Envoy, key: &str) {
    let statuses: Vec<u16> = (0..10).map(|_| get(envoy, &[("x-key", key)]).status).collect();
    assert_eq!((count(&statuses, 200), count(&statuses, 429)), (7, 3), "{key}: {statuses:?}");
}

/// The filter's timeout in the failure tests, and what an answer may take beyond it on a busy
/// two-core machine.
const TIMEOUT: Duration = Duration::from_millis(300);
const SLACK: Duration = Duration::from_millis(400);

#[test]
fn redis_down_applies_the_failure_policy_and_redis_back_restores_exact_limits() {
    let mut counting = Counting::start();
    let open = counting.envoy(2, "300ms", "fail_open");
    let closed = counting.envoy(2, "300ms", "fail_closed");
    assert_exact_again(&open, "before");

    // Killed mid-run: a client keeps sending (a fresh key each time) while Redis dies.
    let url = format!("{}/api", open.url());
    let sending = Arc::new(AtomicUsize::new(1));
    let client = {
        let sending = sending.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while sending.load(Ordering::Relaxed) == 1 {
                let started = Instant::now();
                let status = client::request("GET", &url, &[("x-key", &format!("run-{}", answers.len()))]).status;
                answers.push((status, started.elapsed()));
            }
            answers
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    counting.redis.kill();
    std::thread::sleep(Duration::from_millis(1_000));
    sending.store(0, Ordering::Relaxed);
    let answers = client.join().unwrap();
    assert!(answers.len() > 20, "{} requests", answers.len());
    assert!(answers.iter().all(|(status, _)| *status == 200), "fail_open throughout: {answers:?}");
    let slowest = answers.iter().map(|(_, took)| *took).max().unwrap_or_default();
    assert!(slowest < TIMEOUT + SLACK, "every answer within the timeout: {slowest:?}");

    let (statuses, slowest) = timed_requests(&open, 20, "open");
    assert!(all(&statuses, 200), "fail_open lets requests through: {statuses:?}");
    assert!(slowest < TIMEOUT + SLACK, "answered within the timeout: {slowest:?}");
    let (statuses, slowest) = timed_requests(&closed, 20, "closed");
    assert!(all(&statuses, 503), "fail_closed refuses: {statuses:?}");
    assert!(slowest < TIMEOUT + SLACK, "answered within the timeout: {slowest:?}");
    let refused = get(&closed, &[("x-key", "closed-body")]);
    assert_eq!(refused.json()["error"], "rate_limit_unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    for envoy in [&open, &closed] {
        let failures = envoy.eventually_sample(FAILURES, &[("rule", "per-key"), ("reason", "service_error")], 20.0);
        assert!(failures >= 20.0, "counted: {failures}");
    }
    assert!(counting.service.sample(r#"ratelimit_service_requests_total{code="unavailable"}"#) >= 40.0);
    assert_eq!(counting.service.sample("ratelimit_service_redis_up"), 0.0);

    counting.redis.restart();
    counting.service.wait_healthy(Duration::from_secs(10));
    // The first call after the restart may still meet the dead connection; the one after it
    // reconnects. No service restart is needed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&closed, &[("x-key", "probe")]).status == 503 {
        assert!(Instant::now() < deadline, "the service did not recover after Redis came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_exact_again(&open, "after-open");
    assert_exact_again(&closed, "after-closed");
}

#[test]
fn a_dead_stalled_or_garbling_service_applies_the_failure_policy() {
    let mut counting = Counting::start();
    let open = counting.envoy(2, "300ms", "fail_open");
    let closed = counting.envoy(2, "300ms", "fail_closed");

    // Killed: connections are refused.
    counting.service.kill();
    let (statuses, slowest) = timed_requests(&open, 10, "dead");
    assert!(all(&statuses, 200) && slowest < TIMEOUT + SLACK, "{statuses:?} {slowest:?}");
    let (statuses, slowest) = timed_requests(&closed, 10, "dead");
    assert!(all(&statuses, 503) && slowest < TIMEOUT + SLACK, "{statuses:?} {slowest:?}");
    assert!(open.eventually_sample(FAILURES, &[("rule", "per-key"), ("reason", "service_error")], 10.0) >= 10.0);
    counting.service.restart();
    assert_exact_again(&closed, "after-kill");

    // Stalled (SIGSTOP): every request waits the timeout, no longer.
    counting.service.pause();
    let (statuses, slowest) = timed_requests(&open, 5, "stalled");
    assert!(all(&statuses, 200) && slowest < TIMEOUT + SLACK, "{statuses:?} {slowest:?}");
    assert!(slowest >= TIMEOUT - Duration::from_millis(50), "the filter waited for the answer: {slowest:?}");
    let (statuses, slowest) = timed_requests(&closed, 5, "stalled");
    assert!(all(&statuses, 503) && slowest < TIMEOUT + SLACK, "{statuses:?} {slowest:?}");
    assert_eq!(open.eventually_sample(FAILURES, &[("rule", "per-key"), ("reason", "service_timeout")], 5.0), 5.0);
    assert_eq!(closed.eventually_sample(FAILURES, &[("rule", "per-key"), ("reason", "service_timeout")], 5.0), 5.0);
    counting.service.resume();
    assert_exact_again(&closed, "after-stall");

    // Answering garbage: gRPC OK with a message that is not a RateLimitResponse.
    let garbage = garbage::GarbageServer::start();
    let config = json!({
        "failure_policy": "fail_closed",
        "rate_limit_service": {"cluster": "ratelimit", "domain": "gateway", "timeout": "300ms"},
        "rules": [{"name": "per-key", "global": true, "key": [{"header": "x-key"}]}]
    });
    let gateway = Gateway::new()
        .cluster("api_svc", &[counting.backend.port()])
        .grpc_cluster("ratelimit", &[garbage.port()])
        .route("api", "/", "api_svc")
        .wasm_filter("ratelimit", config);
    let garbled = Envoy::start(&gateway.render(), 2);
    let (statuses, slowest) = timed_requests(&garbled, 5, "garbage");
    assert!(all(&statuses, 503) && slowest < TIMEOUT + SLACK, "{statuses:?} {slowest:?}");
    assert!(garbage.calls() >= 5, "the garbage server was asked");
    assert_eq!(garbled.eventually_sample(FAILURES, &[("rule", "per-key"), ("reason", "service_bad_answer")], 5.0), 5.0);
    assert!(!garbled.log().contains("panicked"), "{}", garbled.log());
}

#[test]
fn envoys_native_ratelimit_filter_makes_the_same_decisions_on_the_same_counts() {
    let counting = Counting::start();
    let wasm = counting.envoy(2, "2s", "fail_closed");
    // Envoy's own filter, sending the same descriptor as the `per-key` rule:
    // ("rule", "per-key"), ("x-key", <header>).
    let native = Gateway::new()
        .cluster("api_svc", &[counting.backend.port()])
        .grpc_cluster("ratelimit", &[counting.service.grpc_port()])
        .raw_route(json!({
            "name": "api",
            "match": {"prefix": "/"},
            "route": {"cluster": "api_svc", "rate_limits": [{"actions": [
                {"generic_key": {"descriptor_key": "rule", "descriptor_value": "per-key"}},
                {"request_headers": {"header_name": "x-key", "descriptor_key": "x-key"}}
            ]}]}
        }))
        .native_filter(
            "envoy.filters.http.ratelimit",
            json!({
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                "domain": "gateway",
                "timeout": "2s",
                "failure_mode_deny": true,
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                "rate_limit_service": {
                    "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}},
                    "transport_api_version": "V3"
                }
            }),
        );
    let native = Envoy::start(&native.render(), 2);

    // Each alone: the same sequence of decisions.
    let alone =
        |envoy: &Envoy, key: &str| -> Vec<u16> { (0..10).map(|_| get(envoy, &[("x-key", key)]).status).collect() };
    let expected = [vec![200; 7], vec![429; 3]].concat();
    assert_eq!(alone(&wasm, "wasm-only"), expected);
    assert_eq!(alone(&native, "native-only"), expected);

    // Alternating on one key: one count, so 7 in all, whichever filter asks.
    let statuses: Vec<u16> =
        (0..10).map(|i| get(if i % 2 == 0 { &wasm } else { &native }, &[("x-key", "shared")]).status).collect();
    assert_eq!(statuses, expected);

    // Envoy's draft-03 headers carry the same numbers as ours.
    let response = get(&native, &[("x-key", "headers")]);
    assert_eq!(response.header("x-ratelimit-limit").map(|v| v.split(',').next().unwrap_or_default().trim()), Some("7"));
    assert_eq!(response.header("x-ratelimit-remaining"), Some("6"));
    let ours = rate_limit_field(get(&wasm, &[("x-key", "headers")]).header("ratelimit").expect("RateLimit"));
    assert_eq!(ours["per-key"]["r"], 5, "the second request of the key, through the other filter");
}

/// A gRPC server that answers every call with status OK and bytes that are not a protobuf
/// message (field 1 with the invalid wire type 7).
mod garbage {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    pub struct GarbageServer {
        port: u16,
        calls: Arc<AtomicU64>,
        _runtime: tokio::runtime::Runtime,
    }

    impl GarbageServer {
        pub fn start() -> GarbageServer {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
            let port = listener.local_addr().unwrap().port();
            let calls = Arc::new(AtomicU64::new(0));
            let counter = calls.clone();
            runtime.spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        let Ok(mut connection) = h2::server::handshake(socket).await else { return };
                        while let Some(Ok((_request, mut respond))) = connection.accept().await {
                            counter.fetch_add(1, Ordering::Relaxed);
                            let head = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/grpc")
                                .body(())
                                .unwrap();
                            let Ok(mut stream) = respond.send_response(head, false) else { continue };
                            // gRPC framing: not compressed, 3 bytes, then the bytes.
                            let frame = bytes::Bytes::from_static(&[0, 0, 0, 0, 3, 0x0f, 0xff, 0xff]);
                            let _ = stream.send_data(frame, false);
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let _ = stream.send_trailers(trailers);
                        }
                    });
                }
            });
            GarbageServer { port, calls, _runtime: runtime }
        }

        pub fn port(&self) -> u16 {
            self.port
        }

        pub fn calls(&self) -> u64 {
            self.calls.load(Ordering::Relaxed)
        }
    }
}
