//! The aggregate filter in a real Envoy, against real backends.

use integration_tests::backend::{Backend, BackendRequest, BackendResponse};
use integration_tests::client::{self, Response};
use integration_tests::demo;
use integration_tests::envoy::Envoy;
use integration_tests::gateway::Gateway;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Envoy (2 workers) with the aggregate filter configured with `endpoints`, clusters as given,
/// and a pass-through route `/` to the first cluster.
fn gateway(endpoints: Value, clusters: &[(&str, &[u16])]) -> Envoy {
    let mut gateway = Gateway::new();
    for (name, ports) in clusters {
        gateway = gateway.cluster(name, ports);
    }
    let gateway = gateway.route("direct", "/", clusters[0].0).wasm_filter("aggregate", json!({"endpoints": endpoints}));
    Envoy::start(&gateway.render(), 2)
}

fn get(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> Response {
    client::request("GET", &format!("{}{path}", envoy.url()), headers)
}

fn demo_backend(service: &str) -> Backend {
    Backend::start("127.0.0.1:0", demo::handler(service).unwrap()).unwrap()
}

/// The demo's dashboard: user and orders in parallel, then the stock of the first order's item.
fn dashboard() -> Value {
    json!([{
        "path": "/api/users/{id}/dashboard",
        "timeout": "2s",
        "backends": [
            {"name": "user", "cluster": "users", "path": "/users/{id}", "deny": ["email"]},
            {"name": "orders", "cluster": "orders", "path": "/orders?user_id={id}", "target": "orders", "group": "orders",
             "allow": ["id", "sku", "total"], "required": false, "fallback": []},
            {"name": "stock", "cluster": "inventory", "path": "/inventory/{orders.orders.0.sku}", "group": "first_item",
             "mapping": {"in_stock": "stock"}, "required": false}
        ]
    }])
}

#[test]
fn the_merged_body_is_exact_and_unmatched_requests_pass_through() {
    let (users, orders, inventory) = (demo_backend("users"), demo_backend("orders"), demo_backend("inventory"));
    let envoy = gateway(
        dashboard(),
        &[("users", &[users.port()]), ("orders", &[orders.port()]), ("inventory", &[inventory.port()])],
    );
    let answer = get(&envoy, "/api/users/1/dashboard", &[]);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("x-aggregate-complete"), Some("true"));
    assert_eq!(
        answer.json(),
        json!({
            "id": "1", "name": "Ada Lovelace", "team_id": "t1",
            "orders": [{"id": "o-100", "sku": "kbd-01", "total": 89.0}, {"id": "o-101", "sku": "mon-27", "total": 540.0}],
            "first_item": {"sku": "kbd-01", "name": "Keyboard", "stock": 14}
        })
    );
    // A user without orders: the stage-2 backend has no input, so it is left out and named.
    let answer = get(&envoy, "/api/users/3/dashboard", &[]);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-aggregate-complete"), Some("false"));
    assert_eq!(answer.header("x-aggregate-failures"), Some("\"stock\";reason=missing_input"));
    assert_eq!(answer.json()["orders"], json!([]));
    // Not an endpoint: Envoy routes it as usual.
    let direct = get(&envoy, "/users/2", &[]);
    assert_eq!(direct.json()["name"], "Alan Turing");
    assert_eq!(users.hits(), 3);
    // Another method on the endpoint's path is not the endpoint either: it reaches the users
    // service, which refuses POST.
    assert_eq!(client::request("POST", &format!("{}/api/users/1/dashboard", envoy.url()), &[]).status, 405);
    assert_eq!(users.hits(), 4);
}

#[test]
fn backends_of_one_stage_run_in_parallel() {
    let backends: Vec<Backend> = ["a", "b", "c"].iter().map(|name| Backend::echo(name)).collect();
    let three: Vec<Value> = ["a", "b", "c"]
        .iter()
        .map(|name| json!({"name": name, "cluster": name, "path": "/work?delay_ms=200", "group": name, "allow": ["service"]}))
        .collect();
    let endpoints = json!([{"path": "/slow", "backends": three}]);
    let envoy =
        gateway(endpoints, &[("a", &[backends[0].port()]), ("b", &[backends[1].port()]), ("c", &[backends[2].port()])]);
    get(&envoy, "/slow", &[]); // warm the upstream connections
    let started = Instant::now();
    let answer = get(&envoy, "/slow", &[]);
    let elapsed = started.elapsed();
    assert_eq!(answer.json(), json!({"a": {"service": "a"}, "b": {"service": "b"}, "c": {"service": "c"}}));
    assert!(elapsed < Duration::from_millis(400), "three 200 ms backends took {elapsed:?}");
    println!("three backends delayed 200 ms each: aggregated in {elapsed:?}");
}

/// Every failure row through Envoy: the `subject` backend, required or optional, fails in each way.
#[test]
fn each_failure_of_the_policy() {
    let main = Backend::echo("main");
    let subject = Backend::echo("subject");
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let rows = [
        ("status", "/x?status=500", "subject", "\"subject\";reason=status;status=500"),
        ("timeout", "/x?delay_ms=600", "subject", "\"subject\";reason=timeout"),
        ("non-JSON", "/x?content_type=text%2Fhtml", "subject", "\"subject\";reason=invalid_json"),
        ("oversize", "/x?size=3000", "subject", "\"subject\";reason=too_large"),
        ("reset", "/x?reset=1", "subject", "\"subject\";reason=status;status=503"),
        ("dead upstream", "/x", "dead", "\"subject\";reason=status;status=503"),
    ];
    let mut endpoints = Vec::new();
    for (index, (_, path, cluster, _)) in rows.iter().enumerate() {
        for required in [true, false] {
            endpoints.push(json!({
                "path": format!("/row/{index}/{required}"),
                "timeout": "2s",
                "backends": [
                    {"name": "main", "cluster": "main", "path": "/m", "allow": ["service"]},
                    {"name": "subject", "cluster": cluster, "path": path, "group": "subject", "required": required,
                     "timeout": "300ms", "max_response_bytes": 2000, "allow": ["service"]}
                ]
            }));
        }
    }
    let envoy = gateway(
        Value::Array(endpoints),
        &[("main", &[main.port()]), ("subject", &[subject.port()]), ("dead", &[dead_port])],
    );
    for (index, (name, _, _, failures)) in rows.iter().enumerate() {
        let required = get(&envoy, &format!("/row/{index}/true"), &[]);
        assert_eq!(required.status, 502, "{name}, required: {}", required.text());
        assert_eq!(required.json()["error"], "bad_gateway");
        assert_eq!(required.header("x-aggregate-failures"), Some(*failures), "{name}, required");

        let optional = get(&envoy, &format!("/row/{index}/false"), &[]);
        assert_eq!(optional.status, 200, "{name}, optional");
        assert_eq!(optional.header("x-aggregate-complete"), Some("false"), "{name}, optional");
        assert_eq!(optional.header("x-aggregate-failures"), Some(*failures), "{name}, optional");
        assert_eq!(optional.json(), json!({"service": "main"}), "{name}: its part is omitted");
    }
}

#[test]
fn the_overall_deadline_is_504_and_pass_status_passes_the_status() {
    let slow = Backend::echo("slow");
    let endpoints = json!([
        {"path": "/deadline", "timeout": "300ms", "backends": [
            {"name": "slow", "cluster": "slow", "path": "/x?delay_ms=1000", "timeout": "5s"}
        ]},
        {"path": "/missing/{id}", "backends": [
            {"name": "item", "cluster": "slow", "path": "/x?status=404&id={id}", "pass_status": true}
        ]}
    ]);
    let envoy = gateway(endpoints, &[("slow", &[slow.port()])]);
    let started = Instant::now();
    let answer = get(&envoy, "/deadline", &[]);
    assert_eq!(answer.status, 504);
    assert_eq!(answer.json()["error"], "gateway_timeout");
    assert!(started.elapsed() < Duration::from_millis(900), "answered at the deadline, not after the backend");
    let answer = get(&envoy, "/missing/7", &[]);
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["error"], "backend_error");
}

#[test]
fn headers_are_forwarded_and_values_encoded() {
    let echo = Backend::echo("echo");
    let endpoints = json!([{
        "path": "/api/items/{id}",
        "backends": [
            {"name": "item", "cluster": "echo", "path": "/items/{id}?page={query.page}&by={header.x-gateway-consumer}",
             "allow": ["path", "query", "headers"]}
        ]
    }]);
    let envoy = gateway(endpoints, &[("echo", &[echo.port()])]);
    let answer = get(
        &envoy,
        "/api/items/a%20b?page=2%263",
        &[
            ("authorization", "Bearer abc"),
            ("x-request-id", "req-1"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("x-gateway-consumer", "ada"),
            ("x-unlisted", "must-not-travel"),
            ("cookie", "session=secret"),
        ],
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = answer.json();
    assert_eq!(seen["path"], "/items/a%20b");
    assert_eq!(seen["query"], json!({"page": "2%263", "by": "ada"}), "one query value each, encoded");
    let headers = &seen["headers"];
    assert_eq!(headers["authorization"], "Bearer abc");
    assert_eq!(headers["x-request-id"], "req-1");
    assert_eq!(headers["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    assert_eq!(headers["x-gateway-consumer"], "ada");
    assert_eq!(headers["host"], "echo");
    assert!(headers.get("x-unlisted").is_none() && headers.get("cookie").is_none(), "{headers}");
    // A path parameter that would climb out of its segment is refused before any call (sent
    // raw: client libraries resolve dot segments themselves).
    let hits = echo.hits();
    for path in ["/api/items/..", "/api/items/%2E%2E", "/api/items/%2e"] {
        let head = format!("GET {path}?page=1 HTTP/1.1\r\nhost: x\r\nx-gateway-consumer: ada");
        let answer = client::raw_request(&envoy.url(), head.as_bytes());
        assert_eq!(answer.status, 400, "{path}: {}", answer.text());
    }
    assert_eq!(echo.hits(), hits);
}

#[test]
fn envoy_balances_a_cluster_of_two_instances() {
    let (first, second) = (Backend::echo("one"), Backend::echo("two"));
    let endpoints = json!([{"path": "/both", "backends": [
        {"name": "a", "cluster": "pair", "path": "/a", "group": "a", "allow": ["service"]},
        {"name": "b", "cluster": "pair", "path": "/b", "group": "b", "allow": ["service"]}
    ]}]);
    let envoy = gateway(endpoints, &[("pair", &[first.port(), second.port()])]);
    for _ in 0..20 {
        assert_eq!(get(&envoy, "/both", &[]).status, 200);
    }
    assert_eq!(first.hits() + second.hits(), 40);
    assert!(first.hits() >= 10 && second.hits() >= 10, "round robin: {} and {}", first.hits(), second.hits());
}

/// The endpoint's deadline decides, not a race between Envoy's call timer and the filter's
/// clock: with backends that keep the default timeout (the time left), every try is a 504,
/// whether the slow backend is required or optional.
#[test]
fn the_deadline_is_504_every_time_with_default_backend_timeouts() {
    let (fast, slow) = (Backend::echo("fast"), Backend::echo("slow"));
    let endpoints = json!([
        {"path": "/required", "timeout": "300ms", "backends": [
            {"name": "fast", "cluster": "fast", "path": "/x", "group": "fast"},
            {"name": "slow", "cluster": "slow", "path": "/x?delay_ms=2000", "group": "slow"}
        ]},
        {"path": "/optional", "timeout": "300ms", "backends": [
            {"name": "fast", "cluster": "fast", "path": "/x", "group": "fast"},
            {"name": "slow", "cluster": "slow", "path": "/x?delay_ms=2000", "group": "slow", "required": false}
        ]}
    ]);
    let envoy = gateway(endpoints, &[("fast", &[fast.port()]), ("slow", &[slow.port()])]);
    let tries: usize = std::env::var("DEADLINE_TRIES").ok().and_then(|n| n.parse().ok()).unwrap_or(16);
    for path in ["/required", "/optional"] {
        let url = format!("{}{path}", envoy.url());
        // Concurrent tries, so the timers of both workers and a busy loop are part of it.
        let threads: Vec<_> = (0..tries)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let answer = client::get(&url);
                    (answer.status, answer.json()["error"].clone(), started.elapsed(), answer.text())
                })
            })
            .collect();
        for thread in threads {
            let (status, error, elapsed, text) = thread.join().unwrap();
            assert_eq!((status, error.as_str()), (504, Some("gateway_timeout")), "{path} after {elapsed:?}: {text}");
            assert!(elapsed < Duration::from_millis(1500), "{path}: answered at the deadline, took {elapsed:?}");
        }
    }
}

/// What happens when a client leaves while calls are pending, exactly as documented: the
/// calls already sent are not cancelled (the proxy-wasm ABI has no way to cancel a
/// `dispatch_http_call`, and Envoy lets them run to their answer or timeout), nothing later
/// is started, and nothing breaks.
#[test]
fn a_client_that_leaves_stops_later_stages_but_not_calls_already_sent() {
    let (first, second) = (Backend::echo("first"), Backend::echo("second"));
    let endpoints = json!([{"path": "/slow", "backends": [
        {"name": "first", "cluster": "first", "path": "/x?delay_ms=300", "group": "first", "allow": ["service"]},
        {"name": "second", "cluster": "second", "path": "/y/{first.service}", "group": "second", "allow": ["service"]}
    ]}]);
    let envoy = gateway(endpoints, &[("first", &[first.port()]), ("second", &[second.port()])]);
    let address = envoy.url().trim_start_matches("http://").to_string();
    const LEAVING: u64 = 10;
    for _ in 0..LEAVING {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        std::io::Write::write_all(&mut stream, b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        // Gone before the first stage answers.
        std::thread::sleep(Duration::from_millis(20));
        drop(stream);
    }
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(first.hits(), LEAVING, "every first-stage call was sent");
    assert_eq!(envoy.stat("cluster.first.upstream_rq_200"), LEAVING, "and ran to its answer, not cancelled");
    assert_eq!(second.hits(), 0, "no later stage starts for a client that left");
    let answer = get(&envoy, "/slow", &[]);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), json!({"first": {"service": "first"}, "second": {"service": "second"}}));
    let log = envoy.log();
    assert!(!log.contains("panicked") && !log.contains("critical"), "{log}");
}

#[test]
fn a_backend_that_answers_slowly_and_large_does_not_block_others() {
    // Many concurrent aggregations over both workers all complete with the right body.
    let users = Backend::start(
        "127.0.0.1:0",
        Arc::new(|request: &BackendRequest| BackendResponse::json(200, &json!({"path": request.path}))),
    )
    .unwrap();
    let endpoints =
        json!([{"path": "/u/{id}", "backends": [{"name": "u", "cluster": "users", "path": "/users/{id}"}]}]);
    let envoy = gateway(endpoints, &[("users", &[users.port()])]);
    let url = envoy.url();
    let threads: Vec<_> = (0..16)
        .map(|thread| {
            let url = url.clone();
            std::thread::spawn(move || {
                for request in 0..10 {
                    let id = format!("{thread}-{request}");
                    let answer = client::get(&format!("{url}/u/{id}"));
                    assert_eq!(answer.json(), json!({"path": format!("/users/{id}")}));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(users.hits(), 160);
}

#[test]
fn a_bad_configuration_is_refused_with_the_field_named() {
    let backend = Backend::echo("api");
    for (endpoints, expected) in [
        (
            json!([{"path": "/a/{id}", "backends": [{"name": "x", "cluster": "api", "path": "/x/{uid}"}]}]),
            "endpoints[0].backends[0].path",
        ),
        (
            json!([{"path": "/a", "backends": [{"name": "x", "cluster": "http://api", "path": "/x"}]}]),
            "endpoints[0].backends[0].cluster",
        ),
        (
            json!([{"path": "/a", "backends": [{"name": "x", "cluster": "api", "path": "/x", "colour": 1}]}]),
            "endpoints[0].backends[0].colour",
        ),
    ] {
        let gateway = Gateway::new()
            .cluster("api", &[backend.port()])
            .route("direct", "/", "api")
            .wasm_filter("aggregate", json!({"endpoints": endpoints.clone()}));
        let error = match Envoy::try_start(&gateway.render(), 1) {
            Ok(_) => panic!("Envoy accepted {endpoints}"),
            Err(log) => log,
        };
        assert!(error.contains(&format!("aggregate: invalid configuration at `{expected}`")), "{endpoints}: {error}");
    }
}
