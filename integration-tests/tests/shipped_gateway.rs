//! The shipped gateway (`envoy/demo.yaml`) keeps serving through what production brings:
//! instances added and removed through service discovery, an instance killed under load, a
//! flaky instance, a slow service under a spike, slow and flooding clients. Every test starts
//! the shipped config itself (ports moved to free ones) in front of the demo services.
//!
//! Under load the client address is always 127.0.0.1, so tests that send more than the demo's
//! per-client rate limit raise those limits (only the limits change).

use integration_tests::backend::{Backend, BackendRequest, BackendResponse};
use integration_tests::client;
use integration_tests::demo;
use integration_tests::shipped::{without_rate_limits, DemoServices, ShippedGateway, Singles, API_SERVICES};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sends `GET url` at a fixed rate from a few threads until `stop` is set or `total`
/// requests were sent; returns each answer's send time and status (0: no answer).
fn steady_load(
    url: String,
    per_second: u64,
    total: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, u16)>> {
    std::thread::spawn(move || {
        let results = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let interval = Duration::from_nanos(1_000_000_000 / per_second);
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let (results, next, stop, url) = (results.clone(), next.clone(), stop.clone(), url.clone());
                std::thread::spawn(move || loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    if index >= total || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let due = started + interval * index as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let sent = Instant::now();
                    let status = client::get(&url).status;
                    results.lock().unwrap().push((sent, status));
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        let mut results = std::mem::take(&mut *results.lock().unwrap());
        results.sort_by_key(|(sent, _)| *sent);
        results
    })
}

fn errors(results: &[(Instant, u16)]) -> Vec<(Instant, u16)> {
    results.iter().filter(|(_, status)| *status != 200).copied().collect()
}

/// A port no one listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `demo-backends` serving one service as its own process (so it can be killed outright).
struct Instance {
    child: Child,
}

impl Instance {
    fn start(service: &str, port: u16) -> Instance {
        let offset = demo::SERVICES.iter().position(|known| *known == service).unwrap() as u16;
        let child = integration_tests::process::spawn_tied(
            Command::new(env!("CARGO_BIN_EXE_demo-backends"))
                .args(["127.0.0.1", &(port - offset).to_string(), service])
                .stdout(std::process::Stdio::null()),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{service} did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Instance { child }
    }

    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill_9();
    }
}

#[test]
fn an_instance_added_through_eds_gets_traffic_and_removing_one_costs_no_error() {
    let services = DemoServices::start();
    let gateway = ShippedGateway::start_with(&services.endpoints(), services.singles(), without_rate_limits);
    let third = Backend::start("127.0.0.1:0", demo::handler("users").unwrap()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(gateway.url("/users/1"), 200, 10_000, stop.clone());
    std::thread::sleep(Duration::from_millis(500));

    let third_address = format!("127.0.0.1:{}", third.port());
    let listed = gateway.endpoints(&["add", "users", &third_address]);
    assert!(listed.contains(&third_address), "{listed}");
    let added = Instant::now();
    while third.hits() < 20 {
        assert!(added.elapsed() < Duration::from_secs(5), "the new instance got no traffic within 5 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("the added instance took traffic {:?} after the EDS file changed", added.elapsed());

    let first = services.of("users")[0];
    gateway.endpoints(&["remove", "users", &format!("127.0.0.1:{}", first.port())]);
    std::thread::sleep(Duration::from_millis(1500));
    let hits_after_removal = first.hits();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    let results = load.join().unwrap();
    assert!(results.len() > 500, "{} requests", results.len());
    assert_eq!(errors(&results), [], "no client error while instances came and went");
    assert_eq!(first.hits(), hits_after_removal, "a removed instance gets no more requests");
    assert!(gateway.envoy.stat("cluster.users.membership_change") >= 2);
}

#[test]
fn killing_an_instance_under_load_costs_almost_no_errors_and_it_comes_back() {
    let services = DemoServices::start();
    let ports = [free_port(), free_port()];
    let mut instances: Vec<Instance> = ports.iter().map(|port| Instance::start("users", *port)).collect();
    let mut endpoints = services.endpoints();
    endpoints.retain(|(service, _)| *service != "users");
    endpoints.push(("users", ports.to_vec()));
    let gateway = ShippedGateway::start_with(&endpoints, services.singles(), without_rate_limits);
    let total: u64 = std::env::var("KILL_TEST_REQUESTS").ok().and_then(|n| n.parse().ok()).unwrap_or(3_000);
    let load = steady_load(gateway.url("/users/1"), 300, total, Arc::new(AtomicBool::new(false)));
    std::thread::sleep(Duration::from_secs(3));
    instances[0].kill_9();
    let killed = Instant::now();
    let results = load.join().unwrap();

    let errors = errors(&results);
    let rate = errors.len() as f64 / results.len() as f64;
    println!(
        "{} requests, {} errors ({:.2}%) after kill -9 of one of two instances",
        results.len(),
        errors.len(),
        rate * 100.0
    );
    assert_eq!(results.len() as u64, total);
    if !errors.is_empty() {
        // Envoy's own account of each failure (response flags, the host each last try went to).
        std::thread::sleep(Duration::from_millis(1500));
        for line in gateway.access_log().iter().filter(|line| line["status"] != 200) {
            eprintln!("failed: {line}");
        }
    }
    assert!(rate <= 0.005, "{} errors: {errors:?}", errors.len());
    // Detected within 2 s (health check every second, two failures; or two failed connects):
    // nothing fails after that.
    assert!(errors.iter().all(|(sent, _)| *sent < killed + Duration::from_secs(2)), "{errors:?}");
    let ejected = gateway.envoy.stat("cluster.users.outlier_detection.ejections_enforced_total");
    let failed_checks = gateway.envoy.stat("cluster.users.health_check.failure");
    assert!(
        ejected + failed_checks > 0,
        "Envoy's stats show the failure (ejections {ejected}, failed checks {failed_checks})"
    );

    // Restarted on the same port, it gets traffic again once it passes a health check and its
    // ejection (10 s) ends.
    instances[0] = Instance::start("users", ports[0]);
    let restarted = Instant::now();
    // Envoy's per-host count of requests the restarted instance answered.
    let served_by_restarted = || {
        let clusters = client::get(&format!("{}/clusters", gateway.envoy.admin_url())).text();
        clusters
            .lines()
            .find(|line| line.starts_with(&format!("users::127.0.0.1:{}::rq_success::", ports[0])))
            .and_then(|line| line.rsplit("::").next()?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = served_by_restarted();
    loop {
        for _ in 0..10 {
            assert_eq!(client::get(&gateway.url("/users/1")).status, 200);
        }
        if served_by_restarted() > before {
            break;
        }
        assert!(restarted.elapsed() < Duration::from_secs(25), "the restarted instance got no traffic");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("the restarted instance took traffic {:?} after it came back", restarted.elapsed());
}

#[test]
fn a_flaky_instance_gets_gets_retried_and_posts_never() {
    // One orders instance answers every other request with 503; the other is healthy.
    let answered = Arc::new(AtomicU64::new(0));
    let flaky_posts = Arc::new(AtomicU64::new(0));
    let flaky = {
        let (answered, flaky_posts) = (answered.clone(), flaky_posts.clone());
        let orders = demo::handler("orders").unwrap();
        Backend::start(
            "127.0.0.1:0",
            Arc::new(move |request: &BackendRequest| {
                if request.path == "/healthz" {
                    return orders(request);
                }
                if request.method == "POST" {
                    flaky_posts.fetch_add(1, Ordering::SeqCst);
                }
                if answered.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                    BackendResponse::json(503, &serde_json::json!({"error": "busy"}))
                } else {
                    orders(request)
                }
            }),
        )
        .unwrap()
    };
    let healthy_posts = Arc::new(AtomicU64::new(0));
    let healthy = {
        let (orders, healthy_posts) = (demo::handler("orders").unwrap(), healthy_posts.clone());
        Backend::start(
            "127.0.0.1:0",
            Arc::new(move |request: &BackendRequest| {
                if request.method == "POST" {
                    healthy_posts.fetch_add(1, Ordering::SeqCst);
                }
                orders(request)
            }),
        )
        .unwrap()
    };
    let services = DemoServices::start();
    let mut endpoints = services.endpoints();
    endpoints.retain(|(service, _)| *service != "orders");
    endpoints.push(("orders", vec![flaky.port(), healthy.port()]));
    let gateway = ShippedGateway::start_with(&endpoints, services.singles(), without_rate_limits);

    let gets: Vec<u16> = (0..60).map(|_| client::get(&gateway.url("/orders?user_id=1")).status).collect();
    assert_eq!(gets, [200; 60], "every GET succeeds: a 503 is retried on the other instance");
    assert!(gateway.envoy.stat("cluster.orders.upstream_rq_retry") > 0);

    let token = client::get(&gateway.url("/token?sub=ada&scope=orders:write&format=raw")).text();
    let authorization = format!("Bearer {token}");
    let retries_before = gateway.envoy.stat("cluster.orders.upstream_rq_retry");
    let posts: Vec<u16> = (0..40)
        .map(|_| client::request("POST", &gateway.url("/orders"), &[("authorization", &authorization)]).status)
        .collect();
    let failed = posts.iter().filter(|status| **status == 503).count() as u64;
    assert!(posts.iter().all(|status| *status == 201 || *status == 503), "{posts:?}");
    assert!(failed > 0, "the flaky instance's 503s reach the client for POSTs: {posts:?}");
    assert_eq!(gateway.envoy.stat("cluster.orders.upstream_rq_retry"), retries_before, "no POST was retried");
    let sent = flaky_posts.load(Ordering::SeqCst) + healthy_posts.load(Ordering::SeqCst);
    assert_eq!(sent, 40, "each POST reached an instance exactly once");
}

#[test]
fn a_slow_service_under_a_spike_is_cut_off_at_once_and_other_routes_stay_fast() {
    // Both inventory instances take 1 s per answer (within the route's 2 s per try).
    let slow = || {
        let inventory = demo::handler("inventory").unwrap();
        Backend::start(
            "127.0.0.1:0",
            Arc::new(move |request: &BackendRequest| {
                let mut response = inventory(request);
                if request.path != "/healthz" {
                    response.delay = Duration::from_secs(1);
                }
                response
            }),
        )
        .unwrap()
    };
    let (slow_a, slow_b) = (slow(), slow());
    let services = DemoServices::start();
    let mut endpoints = services.endpoints();
    endpoints.retain(|(service, _)| *service != "inventory");
    endpoints.push(("inventory", vec![slow_a.port(), slow_b.port()]));
    let gateway = ShippedGateway::start_with(&endpoints, services.singles(), without_rate_limits);

    let spike: Vec<_> = (0..200)
        .map(|_| {
            let url = gateway.url("/inventory/kbd-01");
            std::thread::spawn(move || {
                let sent = Instant::now();
                let answer = client::get(&url);
                (answer.status, answer.header("x-envoy-overloaded").is_some(), sent.elapsed())
            })
        })
        .collect();
    // Meanwhile another route answers as fast as ever.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(client::get(&gateway.url("/users/1")).status, 200);
        assert!(started.elapsed() < Duration::from_millis(500), "users took {:?} during the spike", started.elapsed());
    }
    let answers: Vec<(u16, bool, Duration)> = spike.into_iter().map(|thread| thread.join().unwrap()).collect();
    let overflow: Vec<_> = answers.iter().filter(|(status, _, _)| *status == 503).collect();
    let served = answers.iter().filter(|(status, _, _)| *status == 200).count();
    // On a busy machine the spike's requests arrive over a longer time, and a request that
    // waited for a connection may reach the route's timeouts (5 s, 2 s per try): Envoy answers
    // it 504, as configured, by the route's 5 s. Nothing else may come back, and nothing hangs.
    let timed_out: Vec<_> = answers.iter().filter(|(status, _, _)| *status == 504).collect();
    println!(
        "spike of 200 on a 1 s service: {served} served, {} cut off by the circuit breaker, {} at the route timeout",
        overflow.len(),
        timed_out.len()
    );
    // 100 in flight and 50 waiting for a connection at most; the rest is answered at once.
    assert!(overflow.len() >= 40, "{} overflowed", overflow.len());
    assert_eq!(served + overflow.len() + timed_out.len(), 200, "{answers:?}");
    assert!(timed_out.iter().all(|(_, _, took)| *took < Duration::from_secs(6)), "{timed_out:?}");
    assert!(
        overflow.iter().all(|(_, overloaded, took)| *overloaded && *took < Duration::from_millis(1000)),
        "{overflow:?}"
    );
    assert!(gateway.envoy.stat("cluster.inventory.upstream_rq_pending_overflow") > 0);
}

/// Waits (at most `limit`) for Envoy to end the connection: it closes it, or answers the
/// unfinished request (a slowloris gets 408 and the connection is closed after it).
/// At least one read is tried, so a connection that ended long ago is seen as ended.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let deadline = Instant::now() + limit;
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(read) => return buffer[..read].starts_with(b"HTTP/1.1 408"),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

#[test]
fn slow_and_flooding_clients_are_cut_off_while_others_are_served() {
    // The shipped limit is 5,000 connections; 250 here, so that a test can reach it.
    let with_low_limit = |yaml: String| {
        let shipped = "max_active_downstream_connections: 5000";
        assert!(yaml.contains(shipped));
        without_rate_limits(yaml.replace(shipped, "max_active_downstream_connections: 250"))
    };
    let services = DemoServices::start();
    let gateway = ShippedGateway::start_with(&services.endpoints(), services.singles(), with_low_limit);
    let address = gateway.envoy.url().trim_start_matches("http://").to_string();

    // 200 slowloris clients: request headers started, never finished.
    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream.write_all(b"GET /users/1 HTTP/1.1\r\nhost: gateway\r\nx-slow: ").unwrap();
            stream
        })
        .collect();
    // Normal clients keep getting answers meanwhile.
    for _ in 0..20 {
        assert_eq!(client::get(&gateway.url("/users/1")).status, 200);
    }
    // Oversized request headers (over 32 KiB, or over 100 fields) are refused with 431.
    let big = "x".repeat(40 * 1024);
    assert_eq!(client::request("GET", &gateway.url("/users/1"), &[("x-big", &big)]).status, 431);
    let many: Vec<(String, String)> = (0..120).map(|index| (format!("x-h{index}"), "1".to_string())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    assert_eq!(client::request("GET", &gateway.url("/users/1"), &many).status, 431);
    // Past the limit (200 slow + keep-alive ones of the client above), new connections are
    // refused at once, while an established connection keeps working.
    let mut established = TcpStream::connect(&address).unwrap();
    let mut extra: Vec<TcpStream> = (0..80).filter_map(|_| TcpStream::connect(&address).ok()).collect();
    // A refused connection is closed right after it is accepted.
    std::thread::sleep(Duration::from_millis(300));
    let refused = extra.iter_mut().map(|stream| closed_within(stream, Duration::ZERO)).filter(|closed| *closed).count();
    assert!(refused > 0, "no connection past the limit was refused");
    let overflow = client::get(&format!("{}/stats?filter=global_cx_overflow", gateway.envoy.admin_url())).text();
    let counted: u64 = overflow.lines().filter_map(|line| line.rsplit(": ").next()?.trim().parse::<u64>().ok()).sum();
    assert!(counted >= refused as u64, "Envoy counts the refused connections: {overflow}");
    established.write_all(b"GET /users/1 HTTP/1.1\r\nhost: gateway\r\n\r\n").unwrap();
    let mut answer = [0u8; 12];
    established.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200", "an established connection is still served");
    drop(extra);

    // The slow clients are closed at the request-headers timeout (10 s), not later.
    let still_open: Vec<usize> = slow
        .iter_mut()
        .enumerate()
        .filter_map(|(index, stream)| {
            (!closed_within(stream, Duration::from_secs(13).saturating_sub(opened.elapsed()))).then_some(index)
        })
        .collect();
    assert_eq!(still_open, Vec::<usize>::new(), "slowloris connections that outlived the timeout");
    let closed_after = opened.elapsed();
    println!("200 slowloris connections closed {closed_after:?} after they opened");
    assert!(closed_after >= Duration::from_secs(9), "closed before the timeout: {closed_after:?}");
    assert!(gateway.envoy.stat("http.gateway.downstream_rq_header_timeout") >= 200);
    assert_eq!(client::get(&gateway.url("/users/1")).status, 200);
}

#[test]
fn every_api_service_runs_as_two_instances_behind_health_checks() {
    let services = DemoServices::start();
    let gateway = ShippedGateway::start_with(&services.endpoints(), services.singles(), without_rate_limits);
    // Every instance passes its health check within seconds of Envoy's start.
    let started = Instant::now();
    while !API_SERVICES.iter().all(|service| gateway.envoy.stat(&format!("cluster.{service}.membership_healthy")) == 2)
    {
        assert!(started.elapsed() < Duration::from_secs(10), "instances not healthy 10 s after start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The main thread's health verdicts reach the workers' load balancers a moment later.
    std::thread::sleep(Duration::from_millis(1000));
    for service in API_SERVICES {
        for _ in 0..20 {
            assert_eq!(client::get(&gateway.url(&format!("/{service}"))).status, 200, "{service}");
        }
        let hits: Vec<u64> = services.of(service).iter().map(|backend| backend.hits()).collect();
        // Each instance also answers the health checks; both took requests.
        assert!(hits.iter().all(|hits| *hits >= 5), "{service}: {hits:?}");
        assert!(gateway.envoy.stat(&format!("cluster.{service}.health_check.success")) > 0, "{service}");
        assert_eq!(gateway.envoy.stat(&format!("cluster.{service}.membership_healthy")), 2, "{service}");
    }
}

/// A log value as text (Envoy writes numbers as numbers, absent values as null or "-").
fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) if text != "-" => text.clone(),
        serde_json::Value::Number(number) => number.to_string(),
        _ => String::new(),
    }
}

/// Polls the access log until it has a line for `request_id` (the file logger flushes each
/// second).
#[test]
fn the_access_log_says_what_happened_and_what_the_filters_decided_without_secrets() {
    let services = DemoServices::start();
    let gateway = ShippedGateway::start(&services.endpoints(), services.singles());
    let token = client::get(&gateway.url("/token?sub=ada&scope=orders:read%20orders:write&format=raw")).text();
    let bearer = format!("Bearer {token}");
    let secrets = [token.as_str(), "wrong-key-secret", "demo-key-ci-bot", "cookie-secret", "query-secret"];
    let id = |answer: &client::Response| answer.header("x-request-id").expect("x-request-id returned").to_string();

    let allowed = client::request(
        "GET",
        &gateway.url("/users/1?access_token=query-secret"),
        &[("authorization", &bearer), ("cookie", "session=cookie-secret"), ("x-request-id", "client-chosen")],
    );
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_ne!(id(&allowed), "client-chosen", "the edge makes its own request id");
    let line = gateway.access_log_line(&id(&allowed));
    let field = |name: &str| text(&line[name]);
    assert_eq!((field("method"), field("path"), field("route")), ("GET".into(), "/users/1".into(), "users".into()));
    assert_eq!((field("status"), field("upstream_cluster")), ("200".into(), "users".into()));
    let upstream_ports: Vec<String> = services.of("users").iter().map(|b| format!("127.0.0.1:{}", b.port())).collect();
    assert!(upstream_ports.contains(&field("upstream_host")), "{line}");
    assert_eq!(field("client"), "127.0.0.1");
    assert_eq!((field("consumer"), field("auth")), ("ada".into(), "allowed".into()));
    assert_eq!((field("ratelimit_rule"), field("ratelimit_decision")), ("per-consumer".into(), "allowed".into()));
    assert!(field("duration_ms").parse::<u64>().is_ok() && field("bytes_sent").parse::<u64>().unwrap() > 0, "{line}");
    assert!(!field("time").is_empty() && field("response_flags").is_empty(), "{line}");

    let unauthorized =
        client::request("GET", &gateway.url("/api/users/1/dashboard"), &[("x-api-key", "wrong-key-secret")]);
    assert_eq!(unauthorized.status, 401);
    let line = gateway.access_log_line(&id(&unauthorized));
    assert_eq!(
        (text(&line["auth"]), text(&line["consumer"]), text(&line["route"])),
        ("invalid".into(), String::new(), "composed".into())
    );
    assert_eq!(text(&line["ratelimit_decision"]), "", "refused before the rate limits");

    let post = || client::request("POST", &gateway.url("/orders"), &[("authorization", &bearer)]);
    for _ in 0..3 {
        assert_eq!(post().status, 201);
    }
    let limited = post();
    assert_eq!(limited.status, 429);
    let line = gateway.access_log_line(&id(&limited));
    assert_eq!(
        (text(&line["ratelimit_rule"]), text(&line["ratelimit_decision"])),
        ("orders-writes".into(), "rejected".into())
    );
    assert_eq!(
        (text(&line["status"]), text(&line["consumer"]), text(&line["method"])),
        ("429".into(), "ada".into(), "POST".into())
    );

    let aggregated =
        client::request("GET", &gateway.url("/api/users/1/dashboard"), &[("x-api-key", "demo-key-ci-bot")]);
    assert_eq!(aggregated.status, 200);
    let line = gateway.access_log_line(&id(&aggregated));
    assert_eq!(
        (text(&line["aggregate"]), text(&line["consumer"]), text(&line["route"])),
        ("complete".into(), "ci-bot".into(), "composed".into())
    );

    let not_found = client::get(&gateway.url("/nothing?x=query-secret"));
    assert_eq!(not_found.status, 404);
    let line = gateway.access_log_line(&id(&not_found));
    assert_eq!(
        (text(&line["route"]), text(&line["upstream_cluster"]), text(&line["path"])),
        (String::new(), String::new(), "/nothing".into())
    );
    assert_eq!(text(&line["response_flags"]), "NR", "no route");

    let log = std::fs::read_to_string(gateway.access_log_path()).unwrap();
    for secret in secrets {
        assert!(!log.contains(secret), "the access log contains a secret ({})", &secret[..secret.len().min(12)]);
    }
}

/// The OTLP/HTTP export requests a collector would get.
struct TraceReceiver {
    backend: Backend,
    exports: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl TraceReceiver {
    fn start() -> TraceReceiver {
        let exports = Arc::new(Mutex::new(Vec::new()));
        let seen = exports.clone();
        let backend = Backend::start(
            "127.0.0.1:0",
            Arc::new(move |request: &BackendRequest| {
                if request.path == "/v1/traces" {
                    seen.lock().unwrap().push(request.body.clone());
                }
                BackendResponse::json(200, &serde_json::json!({}))
            }),
        )
        .unwrap();
        TraceReceiver { backend, exports }
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
        use prost::Message;
        self.exports
            .lock()
            .unwrap()
            .iter()
            .filter_map(|body| {
                opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body.as_slice())
                    .ok()
            })
            .flat_map(|export| export.resource_spans)
            .flat_map(|resource| resource.scope_spans)
            .flat_map(|scope| scope.spans)
            .collect()
    }

    /// Waits (Envoy exports every 5 s) for the span of trace `trace_id`.
    fn span(&self, trace_id: &str) -> opentelemetry_proto::tonic::trace::v1::Span {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(span) = self.spans().into_iter().find(|span| hex(&span.trace_id) == trace_id) {
                return span;
            }
            assert!(Instant::now() < deadline, "no span of trace {trace_id} exported");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attribute(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let value = span.attributes.iter().find(|attribute| attribute.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Value::StringValue(text) => text.clone(),
        Value::IntValue(number) => number.to_string(),
        other => format!("{other:?}"),
    })
}

#[test]
fn requests_are_traced_and_an_aggregated_requests_calls_carry_its_trace() {
    let receiver = TraceReceiver::start();
    // The demo services, recording the trace context each call arrives with.
    let traceparents = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let request_ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let recording = |service: &'static str| {
        let (handler, traceparents, request_ids) =
            (demo::handler(service).unwrap(), traceparents.clone(), request_ids.clone());
        Backend::start(
            "127.0.0.1:0",
            Arc::new(move |request: &BackendRequest| {
                if let Some(id) = request.header("x-request-id") {
                    request_ids.lock().unwrap().push(id.to_string());
                }
                if let Some(traceparent) = request.header("traceparent") {
                    traceparents.lock().unwrap().push((service.to_string(), traceparent.to_string()));
                }
                handler(request)
            }),
        )
        .unwrap()
    };
    let instances: Vec<(&str, Backend)> = API_SERVICES.iter().map(|service| (*service, recording(service))).collect();
    let idp = Backend::start("127.0.0.1:0", demo::handler("idp").unwrap()).unwrap();
    let endpoints: Vec<(&str, Vec<u16>)> =
        instances.iter().map(|(service, backend)| (*service, vec![backend.port()])).collect();
    let collector_port = receiver.backend.port();
    let gateway = ShippedGateway::start_with(
        &endpoints,
        Singles { idp: idp.port(), catalog: free_port(), ratelimit: free_port() },
        move |yaml| yaml.replace("port_value: 4318", &format!("port_value: {collector_port}")),
    );

    // A plain request continues the client's trace; its span is named after the route.
    let plain_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = client::request(
        "GET",
        &gateway.url("/users/1"),
        &[("traceparent", &format!("00-{plain_trace}-00f067aa0ba902b7-01"))],
    );
    assert_eq!(answer.status, 200);
    // The request id Envoy made went upstream and came back to the client.
    let request_id = answer.header("x-request-id").expect("x-request-id in the answer").to_string();
    assert!(request_ids.lock().unwrap().contains(&request_id), "{request_id} did not reach the upstream");
    // An aggregated request: its three backend calls carry the same trace.
    let aggregated_trace = "0af7651916cd43dd8448eb211c80319c";
    let answer = client::request(
        "GET",
        &gateway.url("/api/users/1/dashboard"),
        &[("traceparent", &format!("00-{aggregated_trace}-b7ad6b7169203331-01")), ("x-api-key", "demo-key-ci-bot")],
    );
    assert_eq!(answer.status, 200);
    // Without a traceparent, Envoy starts a trace of its own.
    assert_eq!(client::get(&gateway.url("/inventory/kbd-01")).status, 200);

    let span = receiver.span(plain_trace);
    assert_eq!(span.name, "users");
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7", "a child of the client's span");
    assert_eq!(attribute(&span, "http.status_code").as_deref(), Some("200"));
    assert_eq!(attribute(&span, "consumer").as_deref(), Some("anonymous"));
    let span = receiver.span(aggregated_trace);
    assert_eq!(span.name, "composed");
    assert_eq!(attribute(&span, "consumer").as_deref(), Some("ci-bot"));
    let calls: Vec<(String, String)> = traceparents
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, traceparent)| traceparent.contains(aggregated_trace))
        .cloned()
        .collect();
    let mut services: Vec<&str> = calls.iter().map(|(service, _)| service.as_str()).collect();
    services.sort();
    assert_eq!(services, ["inventory", "orders", "users"], "every backend call of the aggregation carries its trace");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !receiver.spans().iter().any(|span| span.name == "inventory") {
        assert!(Instant::now() < deadline, "no span for the request without traceparent");
        std::thread::sleep(Duration::from_millis(250));
    }
}
