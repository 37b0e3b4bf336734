//! The metrics filter in a real Envoy, against real backends.

use integration_tests::backend::Backend;
use integration_tests::client;
use integration_tests::envoy::Envoy;
use integration_tests::gateway::Gateway;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const REQUESTS: &str = "gateway_requests_total";

struct Setup {
    envoy: Envoy,
    users: Backend,
    orders: Backend,
}

/// Two named routes to two clusters, Envoy with `concurrency` workers, metrics configured
/// with `config`.
fn gateway(config: Value, concurrency: u32, extra_tags: &[&str]) -> Setup {
    let users = Backend::echo("users");
    let orders = Backend::echo("orders");
    let mut gateway = Gateway::new()
        .cluster("users_svc", &[users.port()])
        .cluster("orders_svc", &[orders.port()])
        .route("users", "/users", "users_svc")
        .route("orders", "/orders", "orders_svc")
        .wasm_filter("metrics", config);
    for tag in extra_tags {
        gateway = gateway.tag_label(tag);
    }
    let envoy = Envoy::start(&gateway.render(), concurrency);
    Setup { envoy, users, orders }
}

fn send(envoy: &Envoy, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    client::request(method, &format!("{}{path}", envoy.url()), headers).status
}

#[test]
fn counts_every_request_by_route_upstream_method_code_and_consumer() {
    let setup = gateway(json!({}), 2, &[]);
    let envoy = &setup.envoy;
    let mut users_response_bytes = 0;
    for _ in 0..3 {
        let response = client::request("GET", &format!("{}/users/1", envoy.url()), &[("x-gateway-consumer", "alice")]);
        assert_eq!(response.status, 200);
        users_response_bytes += response.body.len();
    }
    for _ in 0..2 {
        assert_eq!(send(envoy, "GET", "/orders?status=503", &[("x-gateway-consumer", "bob")]), 503);
    }
    let posted = client::request_with_body("POST", &format!("{}/users", envoy.url()), &[], &[b'x'; 1234]);
    assert_eq!(posted.status, 200);
    users_response_bytes += posted.body.len();
    for _ in 0..4 {
        // No route: Envoy's own 404 local reply is counted too.
        assert_eq!(send(envoy, "GET", "/nowhere", &[]), 404);
    }
    assert_eq!(setup.users.hits(), 4);
    assert_eq!(setup.orders.hits(), 2);

    // Counted in the VM and added to Envoy's counters each second: wait for every request.
    assert_eq!(envoy.eventually_sample(REQUESTS, &[], 10.0), 10.0);
    let mut series: Vec<(String, String, String, String, String, f64)> = envoy
        .series(REQUESTS)
        .into_iter()
        .map(|s| {
            let l = |name: &str| s.labels.get(name).cloned().unwrap_or_default();
            (l("route"), l("upstream"), l("method"), l("code"), l("consumer"), s.value)
        })
        .collect();
    series.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let expected = [
        ("none", "none", "GET", "404", "anonymous", 4.0),
        ("orders", "orders_svc", "GET", "503", "bob", 2.0),
        ("users", "users_svc", "GET", "200", "alice", 3.0),
        ("users", "users_svc", "POST", "200", "anonymous", 1.0),
    ]
    .map(|(r, u, m, c, who, n)| (r.into(), u.into(), m.into(), c.into(), who.into(), n));
    assert_eq!(series, expected);

    // The duration histogram has one sample per request, per route and upstream.
    let count = |route: &str, upstream: &str, expected: f64| {
        let labels = [("route", route), ("upstream", upstream)];
        envoy.eventually_sample("gateway_request_duration_milliseconds_count", &labels, expected)
    };
    assert_eq!(count("users", "users_svc", 4.0), 4.0);
    assert_eq!(count("orders", "orders_svc", 2.0), 2.0);
    assert_eq!(count("none", "none", 4.0), 4.0);
    let buckets = envoy.series("gateway_request_duration_milliseconds_bucket");
    assert!(buckets.iter().any(|b| b.has(&[("route", "users"), ("le", "+Inf")]) && b.value == 4.0), "{buckets:?}");

    // Byte counters count body bytes exactly: the one POST body, every response body.
    assert_eq!(envoy.sample("gateway_request_bytes_total", &[("route", "users")]), 1234.0);
    assert_eq!(envoy.sample("gateway_response_bytes_total", &[("route", "users")]), users_response_bytes as f64);
    // Envoy's 404 has an empty body: its series exists at 0 (defined, never incremented by 0).
    let not_found = envoy.series("gateway_response_bytes_total");
    assert!(not_found.iter().any(|s| s.has(&[("route", "none")]) && s.value == 0.0), "{not_found:?}");
    assert!(envoy.series("gateway_metrics_label_overflow_total").is_empty());
}

#[test]
fn family_names_have_no_envoy_prefix_and_labels_are_real() {
    let setup = gateway(json!({}), 1, &[]);
    send(&setup.envoy, "GET", "/users", &[]);
    setup.envoy.eventually_sample(REQUESTS, &[], 1.0);
    let text = setup.envoy.prometheus_text();
    assert!(text.contains("# TYPE gateway_requests_total counter"), "{text}");
    assert!(text.contains("# TYPE gateway_request_duration_milliseconds histogram"));
    assert!(text.contains("# TYPE gateway_request_bytes_total counter"));
    assert!(text.contains("# TYPE gateway_response_bytes_total counter"));
    assert!(!text.contains("envoy_gateway_"), "families must not carry the envoy_ prefix");
    assert!(!text.contains("wasmcustom"));
    let line = text.lines().find(|l| l.starts_with("gateway_requests_total{")).unwrap();
    assert_eq!(
        line,
        r#"gateway_requests_total{route="users",upstream="users_svc",method="GET",code="200",consumer="anonymous"} 1"#
    );
}

/// With two workers and connections spread over both, the cap on distinct consumer values
/// holds for the whole Envoy, not per worker.
#[test]
fn values_over_the_cap_become_other_across_two_workers() {
    const CAP: usize = 5;
    const CONSUMERS: usize = 30;
    const ROUNDS: usize = 2;
    let setup = gateway(json!({"max_values": {"consumer": CAP}}), 2, &[]);
    let url = format!("{}/users", setup.envoy.url());
    let threads: Vec<_> = (0..CONSUMERS)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    // A new connection per request, so the kernel spreads them over both workers.
                    let consumer = format!("consumer-{i}");
                    assert_eq!(client::request("GET", &url, &[("x-gateway-consumer", &consumer)]).status, 200);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let envoy = &setup.envoy;

    // Both workers took connections.
    let per_worker = envoy.connections_per_worker(2);
    assert!(per_worker.iter().all(|&n| n > 0.0), "connections per worker: {per_worker:?}");

    // Counted in the VM and added to Envoy's counters each second, by each worker.
    envoy.eventually_sample(REQUESTS, &[], (CONSUMERS * ROUNDS) as f64);
    let series = envoy.series(REQUESTS);
    let named: BTreeSet<String> =
        series.iter().map(|s| s.labels["consumer"].clone()).filter(|c| c != "other").collect();
    assert_eq!(named.len(), CAP, "admitted consumers: {named:?}");
    let total: f64 = series.iter().map(|s| s.value).sum();
    assert_eq!(total, (CONSUMERS * ROUNDS) as f64);
    // Every admitted consumer keeps its name on every request.
    for consumer in &named {
        assert_eq!(envoy.sample(REQUESTS, &[("consumer", consumer)]), ROUNDS as f64, "{consumer}");
    }
    let other = envoy.sample(REQUESTS, &[("consumer", "other")]);
    assert_eq!(other, ((CONSUMERS - CAP) * ROUNDS) as f64);
    assert_eq!(envoy.sample("gateway_metrics_label_overflow_total", &[("label", "consumer")]), other);
}

#[test]
fn extra_labels_come_from_headers_with_allowed_values() {
    let config = json!({
        "extra_labels": [
            {"name": "plan", "header": "x-plan", "allowed_values": ["free", "pro"]},
            {"name": "tenant", "header": "x-tenant", "missing_value": "unknown"}
        ]
    });
    let setup = gateway(config, 1, &["plan", "tenant"]);
    let envoy = &setup.envoy;
    send(envoy, "GET", "/users", &[("x-plan", "pro"), ("x-tenant", "acme")]);
    send(envoy, "GET", "/users", &[("x-plan", "gold"), ("x-tenant", "acme")]);
    send(envoy, "GET", "/users", &[]);
    assert_eq!(envoy.eventually_sample(REQUESTS, &[], 3.0), 3.0);
    assert_eq!(envoy.sample(REQUESTS, &[("plan", "pro"), ("tenant", "acme")]), 1.0);
    assert_eq!(envoy.sample(REQUESTS, &[("plan", "other"), ("tenant", "acme")]), 1.0);
    assert_eq!(envoy.sample(REQUESTS, &[("plan", "none"), ("tenant", "unknown")]), 1.0);
    assert_eq!(envoy.sample("gateway_metrics_label_overflow_total", &[("label", "plan")]), 1.0);
}

#[test]
fn hostile_header_values_cannot_forge_labels() {
    let setup = gateway(json!({}), 1, &[]);
    let envoy = &setup.envoy;
    let long = "z".repeat(500);
    for consumer in ["evil.code.500", "a\"b", long.as_str()] {
        assert_eq!(send(envoy, "GET", "/users", &[("x-gateway-consumer", consumer)]), 200, "{consumer}");
    }
    // Bytes a client library refuses to send: UTF-8 and invalid UTF-8. Envoy forwards them;
    // the backend may refuse them (Envoy then answers 503), and either outcome is counted.
    let mut raw_codes = BTreeSet::new();
    for value in ["\u{fc}n\u{ef}code".as_bytes(), &[b'b', 0xff, 0xfe, b'c']] {
        let mut head = b"GET /users HTTP/1.1\r\nhost: gateway\r\nx-gateway-consumer: ".to_vec();
        head.extend_from_slice(value);
        let status = client::raw_request(&envoy.url(), &head).status;
        assert_ne!(status, 0, "Envoy must answer");
        raw_codes.insert(status.to_string());
    }
    assert_eq!(envoy.eventually_sample(REQUESTS, &[], 5.0), 5.0);
    let consumers: BTreeSet<String> = envoy.series(REQUESTS).iter().map(|s| s.labels["consumer"].clone()).collect();
    let expected: BTreeSet<String> =
        ["evil_code_500", "a_b", &"z".repeat(64), "__n__code", "b__c"].into_iter().map(String::from).collect();
    assert_eq!(consumers, expected);
    // Every series still has exactly the five labels and a real status code.
    for series in envoy.series(REQUESTS) {
        assert_eq!(series.labels.len(), 5, "{series:?}");
        let code = &series.labels["code"];
        assert!(code == "200" || raw_codes.contains(code), "{series:?}");
    }
}

#[test]
fn a_bad_configuration_is_refused_with_the_field_named() {
    let cases = [
        (json!({"consumer_heder": "x-consumer"}), "invalid configuration at `consumer_heder`: unknown field"),
        (json!({"default_max_values": "many"}), "invalid configuration at `default_max_values`: invalid type"),
        (
            json!({"max_values": {"consumer": 0}}),
            "invalid configuration at `max_values.consumer`: must be between 1 and 10000",
        ),
    ];
    // Refused whatever the failure policy: FAIL_OPEN (as shipped) only covers runtime failures.
    for ((config, expected), policy) in cases.into_iter().zip(["FAIL_CLOSED", "FAIL_OPEN", "FAIL_OPEN"]) {
        let backend = Backend::echo("users");
        let rendered = Gateway::new()
            .cluster("users_svc", &[backend.port()])
            .route("users", "/users", "users_svc")
            .wasm_filter_at("metrics", &integration_tests::paths::wasm_module("metrics"), config.clone(), policy)
            .render();
        match Envoy::try_start(&rendered, 1) {
            Ok(mut envoy) => panic!("Envoy accepted {config} (running: {}); log:\n{}", envoy.is_running(), envoy.log()),
            Err(error) => assert!(error.contains(expected), "expected `{expected}` in:\n{error}"),
        }
    }
}

/// Bodies are counted to the byte whatever their size or framing, and the filter never
/// buffers them.
#[test]
fn large_and_chunked_bodies_are_counted_exactly() {
    use std::io::{Read, Write};
    let setup = gateway(json!({}), 1, &[]);
    let envoy = &setup.envoy;
    let big = vec![b'a'; 5 * 1024 * 1024];
    let response = client::request_with_body("POST", &format!("{}/users", envoy.url()), &[], &big);
    assert_eq!(response.status, 200);

    // A chunked upload of 3 chunks (10 + 20 + 5 bytes), written by hand.
    let mut stream = std::net::TcpStream::connect(envoy.url().trim_start_matches("http://")).unwrap();
    stream
        .write_all(b"POST /orders HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        .unwrap();
    for chunk in [&[b'x'; 10][..], &[b'y'; 20], &[b'z'; 5]] {
        stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).unwrap();
        stream.write_all(chunk).unwrap();
        stream.write_all(b"\r\n").unwrap();
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let bytes = |family: &str, route: &str, expected: usize| {
        envoy.eventually_sample(family, &[("route", route)], expected as f64) as usize
    };
    assert_eq!(bytes("gateway_request_bytes_total", "users", big.len()), big.len());
    assert_eq!(bytes("gateway_request_bytes_total", "orders", 35), 35);
    assert_eq!(bytes("gateway_response_bytes_total", "users", response.body.len()), response.body.len());
}

/// A client that gives up before the response is still one request, with code 0 (as in
/// Envoy's access log); an upstream that is down is Envoy's 503, under its cluster.
#[test]
fn disconnected_clients_and_dead_upstreams_are_counted() {
    use std::io::Write;
    let users = Backend::echo("users");
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // closed again: nothing listens there
    let config = Gateway::new()
        .cluster("users_svc", &[users.port()])
        .cluster("gone_svc", &[dead_port])
        .route("users", "/users", "users_svc")
        .route("gone", "/gone", "gone_svc")
        .wasm_filter("metrics", json!({}))
        .render();
    let envoy = Envoy::start(&config, 1);

    let mut stream = std::net::TcpStream::connect(envoy.url().trim_start_matches("http://")).unwrap();
    stream.write_all(b"GET /users?delay_ms=1500 HTTP/1.1\r\nhost: gateway\r\n\r\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(stream);
    assert_eq!(send(&envoy, "GET", "/gone", &[]), 503);

    // The abandoned request is counted when Envoy ends its stream.
    let users = [("route", "users"), ("upstream", "users_svc"), ("code", "0")];
    assert_eq!(envoy.eventually_sample(REQUESTS, &users, 1.0), 1.0);
    let gone = [("route", "gone"), ("upstream", "gone_svc"), ("code", "503")];
    assert_eq!(envoy.eventually_sample(REQUESTS, &gone, 1.0), 1.0);
}
