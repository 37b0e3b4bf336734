//! A real Prometheus server scrapes Envoy's admin endpoint, and PromQL over the metrics
//! filter's series returns exactly what was sent.

use integration_tests::backend::Backend;
use integration_tests::client;
use integration_tests::envoy::Envoy;
use integration_tests::gateway::Gateway;
use integration_tests::prometheus::{Prometheus, Samples};
use serde_json::json;
use std::collections::BTreeMap;

#[test]
fn promql_sum_by_route_and_code_returns_the_exact_counts() {
    let users = Backend::echo("users");
    let orders = Backend::echo("orders");
    let config = Gateway::new()
        .cluster("users_svc", &[users.port()])
        .cluster("orders_svc", &[orders.port()])
        .route("users", "/users", "users_svc")
        .route("orders", "/orders", "orders_svc")
        .wasm_filter("metrics", json!({}))
        .render();
    let envoy = Envoy::start(&config, 2);
    let sends = [
        ("/users/1", "alice", 7, 200),
        ("/users/2", "bob", 3, 200),
        ("/orders?status=500", "alice", 4, 500),
        ("/missing", "carol", 2, 404),
    ];
    for (path, consumer, times, status) in sends {
        for _ in 0..times {
            let response =
                client::request("GET", &format!("{}{path}", envoy.url()), &[("x-gateway-consumer", consumer)]);
            assert_eq!(response.status, status, "{path}");
        }
    }

    let prometheus = Prometheus::start(envoy.admin_url().trim_start_matches("http://"));
    let expected: Samples = [("users", "200", 10.0), ("orders", "500", 4.0), ("none", "404", 2.0)]
        .into_iter()
        .map(|(route, code, n)| {
            ([("route".to_string(), route.to_string()), ("code".to_string(), code.to_string())].into(), n)
        })
        .collect();
    let result = prometheus.eventually("sum by (route, code) (gateway_requests_total)", &expected);
    assert_eq!(result, Some(expected), "PromQL result never matched");

    // Labels are real in Prometheus too: filter and aggregate on consumer.
    let alice = [
        ([("consumer".to_string(), "alice".to_string())].into(), 11.0),
        ([("consumer".to_string(), "bob".to_string())].into(), 3.0),
    ]
    .into();
    let by_consumer = prometheus.eventually(r#"sum by (consumer) (gateway_requests_total{route!="none"})"#, &alice);
    assert_eq!(by_consumer, Some(alice));
    // Histogram samples reach Prometheus once Envoy has merged them (the next scrape or two).
    let ten = [(BTreeMap::new(), 10.0)].into();
    let histogram = prometheus.eventually(r#"sum(gateway_request_duration_milliseconds_count{route="users"})"#, &ten);
    assert_eq!(histogram, Some(ten));
}
