//! A real Prometheus server scrapes Envoy's admin endpoint, and PromQL over the metrics
//! filter's series returns exactly what was sent.

use integration_tests::backend::Backend;
use integration_tests::client;
use integration_tests::envoy::Envoy;
use integration_tests::gateway::Gateway;
use integration_tests::paths;
use integration_tests::process;
use integration_tests::scratch::ScratchDir;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An instant-query result: each series' labels and its value.
type Samples = BTreeMap<BTreeMap<String, String>, f64>;

struct Prometheus {
    child: Child,
    url: String,
    scratch: ScratchDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port) at `/stats/prometheus` every second.
    fn start(target: &str) -> Prometheus {
        let binary = paths::tool("prometheus", "PROMETHEUS_BIN", "apt-get install prometheus");
        let scratch = ScratchDir::new("prometheus");
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: envoy\n    metrics_path: /stats/prometheus\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(scratch.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(scratch.path().join("prometheus.log")).unwrap();
        let child = process::spawn_tied(
            Command::new(binary)
                .arg(format!("--config.file={}", scratch.path().join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", scratch.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .expect("start prometheus");
        Prometheus { child, url: format!("http://127.0.0.1:{port}"), scratch }
    }

    /// The instant-query result as (labels → value).
    fn query(&self, promql: &str) -> Option<Samples> {
        let url = format!("{}/api/v1/query?query={}", self.url, encode(promql));
        let response = client::get(&url);
        if response.status != 200 {
            return None;
        }
        let body = response.json();
        let result = body["data"]["result"].as_array()?;
        result
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = series["value"][1].as_str()?.parse().ok()?;
                Some((labels, value))
            })
            .collect()
    }

    /// Polls `promql` (up to 60 s) until it returns `expected`; returns the last result.
    fn eventually(&self, promql: &str, expected: &Samples) -> Option<Samples> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(promql);
            if result.as_ref() == Some(expected) || Instant::now() > deadline {
                return result;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- Prometheus log -----\n{}", self.log());
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

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
