//! Two instances of one filter in one Envoy, on one VM id, each under its own plugin name:
//! neither shares the other's buckets, label caps or metrics (`gateway_common::plugin`).

use integration_tests::backend::Backend;
use integration_tests::client;
use integration_tests::envoy::Envoy;
use integration_tests::gateway::Gateway;
use integration_tests::paths;
use serde_json::json;

const DECISIONS: &str = "gateway_ratelimit_requests_total";
const REQUESTS: &str = "gateway_requests_total";

#[test]
fn two_ratelimit_instances_count_in_their_own_buckets() {
    let backend = Backend::echo("api");
    // The same rule name and key in both: with one shared table, each request would be
    // charged twice to one bucket and the second request would already be over.
    let config = json!({"rules": [{"name": "per-client", "key": [{"fixed": "all"}],
        "limit": {"requests": 2, "per": "minute", "burst": 2}}]});
    let module = paths::wasm_module("ratelimit");
    let gateway = Gateway::new()
        .cluster("api_svc", &[backend.port()])
        .route("api", "/", "api_svc")
        .wasm_filter_at("public", &module, config.clone(), "FAIL_CLOSED")
        .wasm_filter_at("internal", &module, config, "FAIL_CLOSED");
    let envoy = Envoy::start(&gateway.render(), 1);
    let statuses: Vec<u16> =
        (0..3).map(|_| client::request("GET", &format!("{}/x", envoy.url()), &[]).status).collect();
    assert_eq!(statuses, [200, 200, 429], "each instance allows its own 2");
    let decided = |plugin: &str, decision: &str, expected: f64| {
        let labels = [("rule", "per-client"), ("decision", decision), ("plugin", plugin)];
        envoy.eventually_sample(DECISIONS, &labels, expected)
    };
    assert_eq!(decided("public", "allowed", 2.0), 2.0);
    assert_eq!(decided("public", "rejected", 1.0), 1.0);
    assert_eq!(decided("internal", "allowed", 2.0), 2.0, "the third request never reached the second instance");
    assert_eq!(
        envoy.sample(DECISIONS, &[("rule", "per-client"), ("decision", "rejected"), ("plugin", "internal")]),
        0.0
    );
}

#[test]
fn two_metrics_instances_keep_their_own_series_and_caps() {
    let backend = Backend::echo("api");
    let module = paths::wasm_module("metrics");
    // `edge` admits two consumer values, `inner` one: each applies its own cap to its own
    // series. (That their shared-data keys are apart is shown by the ratelimit test above:
    // every filter's keys go through the same prefix.)
    let gateway = Gateway::new()
        .cluster("api_svc", &[backend.port()])
        .route("api", "/", "api_svc")
        .wasm_filter_at("edge", &module, json!({"max_values": {"consumer": 2}}), "FAIL_OPEN")
        .wasm_filter_at("inner", &module, json!({"max_values": {"consumer": 1}}), "FAIL_OPEN");
    let envoy = Envoy::start(&gateway.render(), 1);
    for consumer in ["ada", "grace", "ada"] {
        let response = client::request("GET", &format!("{}/x", envoy.url()), &[("x-gateway-consumer", consumer)]);
        assert_eq!(response.status, 200);
    }
    // Counted when each stream ends, which may be just after the client has its answer.
    assert_eq!(
        envoy.eventually_sample(REQUESTS, &[("route", "api")], 6.0),
        6.0,
        "each instance counted each request once"
    );
    let count = |plugin: &str, consumer: &str| {
        envoy.sample(REQUESTS, &[("route", "api"), ("consumer", consumer), ("plugin", plugin)])
    };
    assert_eq!((count("edge", "ada"), count("edge", "grace")), (2.0, 1.0), "edge's cap of 2 holds both");
    assert_eq!((count("inner", "ada"), count("inner", "other")), (2.0, 1.0), "inner's cap of 1: grace is other");
}
