//! The Envoy configurations under `envoy/`, as users get them: each passes
//! `envoy --mode validate`, the demo one runs for real, and the compose one stays the same
//! gateway as the demo.

use integration_tests::client;
use integration_tests::envoy;
use integration_tests::gateway::{stats_tag_regex, GATEWAY_LABELS};
use integration_tests::paths;
use integration_tests::scratch::ScratchDir;
use integration_tests::shipped::{self, with_built_modules, DemoServices, ShippedGateway};

fn shipped_configs() -> Vec<std::path::PathBuf> {
    let mut configs: Vec<_> = std::fs::read_dir(paths::repo_root().join("envoy"))
        .expect("envoy/ exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    configs.sort();
    assert!(configs.len() >= 2, "expected the demo and compose configs, found {configs:?}");
    configs
}

#[test]
fn every_shipped_config_passes_envoy_validate() {
    let scratch = ScratchDir::new("validate");
    for config in shipped_configs() {
        let yaml = std::fs::read_to_string(&config).unwrap();
        let rendered = scratch.path().join(config.file_name().unwrap());
        // The EDS files as shipped (`make demo` copies them to .run/endpoints).
        let endpoints = paths::repo_root().join("envoy/endpoints");
        let yaml = with_built_modules(&yaml)
            .replace(".run/endpoints", &endpoints.display().to_string())
            .replace(".run/access.log", &scratch.path().join("access.log").display().to_string())
            .replace("/etc/envoy/wasm/catalog.pb", ".run/catalog.pb")
            .replace(".run/catalog.pb", &shipped::write_descriptor_set(scratch.path()).display().to_string());
        std::fs::write(&rendered, yaml).unwrap();
        if let Err(output) = envoy::validate(&rendered) {
            panic!("{} does not validate:\n{output}", config.display());
        }
    }
}

#[test]
fn shipped_stats_tags_match_the_filters_labels() {
    for config in shipped_configs() {
        let yaml = std::fs::read_to_string(&config).unwrap();
        for label in GATEWAY_LABELS {
            let entry = format!("- tag_name: {label}\n      regex: '{}'", stats_tag_regex(label));
            assert!(yaml.contains(&entry), "{} lacks the stats tag for `{label}`:\n{entry}", config.display());
        }
    }
}

/// compose.yaml is demo.yaml with only what docker-compose needs changed: listen on all
/// interfaces, modules and the descriptor set in the image's path, services found by DNS
/// instead of EDS files or fixed addresses, the cache in a tmpfs, the access log on stdout.
#[test]
fn compose_config_is_the_demo_gateway() {
    let root = paths::repo_root();
    let demo = std::fs::read_to_string(root.join("envoy/demo.yaml")).unwrap();
    let compose = std::fs::read_to_string(root.join("envoy/compose.yaml")).unwrap();
    let without_header = |text: &str| text.lines().skip_while(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n");
    // How a cluster finds its endpoints (the lines between its name and connect_timeout) is
    // the one thing that differs by design.
    let without_discovery = |text: &str| {
        let mut kept = Vec::new();
        let mut skipping = false;
        for line in text.lines() {
            if line.starts_with("  - name: ") && kept.contains(&"  clusters:") {
                skipping = true;
                kept.push(line);
                continue;
            }
            if line.starts_with("    connect_timeout:") {
                skipping = false;
            }
            if !skipping {
                kept.push(line);
            }
        }
        kept.join("\n")
    };
    let normalized = without_discovery(&without_header(&compose))
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
        .replace("/etc/envoy/wasm/catalog.pb", ".run/catalog.pb")
        .replace("cache_path: /var/cache/envoy", "cache_path: .run/cache")
        .replace("address: catalog,", "address: 127.0.0.1,")
        .replace("address: ratelimit,", "address: 127.0.0.1,")
        .replace("/etc/envoy/wasm/", "target/wasm32-wasip1/release/")
        .replace("path: /dev/stdout", "path: .run/access.log")
        .replace("address: idp,", "address: 127.0.0.1,")
        .replace("address: jaeger,", "address: 127.0.0.1,");
    assert_eq!(normalized, without_discovery(&without_header(&demo)));
    assert!(compose.contains("address: api-services, port_value: 8081") && compose.contains("type: STRICT_DNS"));
    assert!(demo.contains("path: .run/endpoints/users.yaml") && demo.contains("type: EDS"));
}

#[test]
fn demo_config_serves_the_demo_backends() {
    let services = DemoServices::start();
    let gateway = ShippedGateway::start(&services.endpoints(), services.singles());
    let envoy = &gateway.envoy;
    let url = |path: &str| format!("{}{path}", envoy.url());
    // A token from the demo identity provider, through the gateway, with one curl.
    let token_for = |scope: &str| client::get(&url(&format!("/token?sub=ada&scope={scope}&format=raw"))).text();
    let reader = format!("Bearer {}", token_for("orders:read"));
    let writer = format!("Bearer {}", token_for("orders:read%20orders:write"));
    // The key set is fetched from the identity provider on the first tick after start.
    let started = std::time::Instant::now();
    let user = loop {
        let answer = client::request("GET", &url("/users/1"), &[("authorization", &reader)]);
        if answer.status != 401 || started.elapsed() > std::time::Duration::from_secs(5) {
            break answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(user.status, 200, "{}", user.text());
    assert_eq!(user.json()["name"], "Ada Lovelace");
    // A client cannot claim to be someone: its consumer header is removed.
    let orders = client::request("GET", &url("/orders?user_id=1"), &[("x-gateway-consumer", "ada")]);
    assert_eq!(orders.json()["orders"].as_array().map(Vec::len), Some(2));
    assert_eq!(client::get(&url("/inventory/kbd-01")).json()["in_stock"], 14);
    assert_eq!(client::get(&url("/nothing")).status, 404);
    assert_eq!(client::request("GET", &url("/users/1"), &[("authorization", "Bearer forged.token.here")]).status, 401);

    // Counted in the VM and added to Envoy's counters each second: wait for the count.
    let count =
        |labels: &[(&str, &str)], expected: f64| envoy.eventually_sample("gateway_requests_total", labels, expected);
    assert_eq!(count(&[("route", "users"), ("upstream", "users"), ("code", "200"), ("consumer", "ada")], 1.0), 1.0);
    assert_eq!(count(&[("route", "orders"), ("consumer", "anonymous")], 1.0), 1.0);
    assert_eq!(count(&[("route", "inventory")], 1.0), 1.0);
    assert_eq!(count(&[("route", "none"), ("code", "404")], 1.0), 1.0);

    // Every answer states the limits that applied to it; the consumer is the token's subject.
    let state = user.header("ratelimit").unwrap();
    assert!(state.starts_with("\"per-client\";r="), "{state}");
    assert!(state.contains("\"per-consumer\";r=49;t="), "{state}");
    assert_eq!(user.header("x-ratelimit-limit"), Some("20"));
    // Writes to orders need the orders:write scope, then are limited to 3 per minute per client.
    let post = |authorization: &str| client::request("POST", &url("/orders"), &[("authorization", authorization)]);
    assert_eq!(client::request("POST", &url("/orders"), &[]).status, 401);
    let forbidden = post(&reader);
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["error"], "insufficient_scope");
    for _ in 0..3 {
        assert_eq!(post(&writer).status, 201);
    }
    let rejected = post(&writer);
    assert_eq!(rejected.status, 429);
    assert_eq!(rejected.header("retry-after"), Some("20"));
    let rejected = [("rule", "orders-writes"), ("decision", "rejected")];
    assert_eq!(envoy.eventually_sample("gateway_ratelimit_requests_total", &rejected, 1.0), 1.0);
    assert_eq!(count(&[("route", "orders"), ("code", "429")], 1.0), 1.0);

    // The composed endpoint needs a token or an API key.
    assert_eq!(client::get(&url("/api/users/1/dashboard")).status, 401);
    let with_key = client::request("GET", &url("/api/users/1/dashboard"), &[("x-api-key", "demo-key-ci-bot")]);
    assert_eq!(with_key.status, 200);
    assert_eq!(count(&[("route", "composed"), ("consumer", "ci-bot")], 1.0), 1.0);
    // The composed endpoint: three services, one answer.
    let dashboard = client::request("GET", &url("/api/users/1/dashboard"), &[("authorization", &reader)]);
    assert_eq!(dashboard.status, 200, "{}", dashboard.text());
    assert_eq!(dashboard.header("x-aggregate-complete"), Some("true"));
    let body = dashboard.json();
    assert_eq!(body["name"], "Ada Lovelace");
    assert!(body.get("email").is_none());
    assert_eq!(body["orders"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["first_item"]["stock"], 14);
    assert_eq!(client::request("GET", &url("/api/nothing"), &[("authorization", &reader)]).status, 404);
    assert_eq!(count(&[("route", "composed"), ("code", "200")], 2.0), 2.0);
}

/// Every spelling of a path is the same path for routes, auth rules and rate limits, and the
/// spellings that cannot be made one are refused: the shipped gateway normalizes paths, and
/// refuses encoded slashes and header names with underscores (which many upstreams read as
/// dashes, so `x_gateway_consumer` would be an identity nobody vouched for).
#[test]
fn demo_config_gives_each_path_one_meaning_and_refuses_underscored_headers() {
    let services = DemoServices::start();
    let gateway = ShippedGateway::start(&services.endpoints(), services.singles());
    let envoy = &gateway.envoy;
    let hits = |service: &str| services.of(service).iter().map(|backend| backend.hits()).sum::<u64>();
    let send = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: gateway");
        for (name, value) in headers {
            head.push_str(&format!("\r\n{name}: {value}"));
        }
        client::raw_request(&envoy.url(), head.as_bytes())
    };
    // Writes to /orders need a token with the orders:write scope, however the path is spelled.
    for path in ["/orders", "/./orders", "//orders", "/%6Frders", "/users/../orders", "/orders/x/.."] {
        let answer = send("POST", path, &[]);
        assert_eq!(answer.status, 401, "POST {path}: {}", answer.text());
        assert_eq!(answer.json()["error"], "unauthorized", "POST {path}");
    }
    // Counted in the VM and added to Envoy's counters each second: wait for the count.
    let count =
        |labels: &[(&str, &str)], expected: f64| envoy.eventually_sample("gateway_requests_total", labels, expected);
    assert_eq!(count(&[("route", "orders"), ("method", "POST"), ("code", "401")], 6.0), 6.0, "all on the orders route");
    // The per-client limit (burst 20) is one bucket for every spelling of a path.
    let spellings = ["/inventory/kbd-01", "/./inventory/kbd-01", "//inventory//kbd-01", "/%69nventory/kbd-01"];
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = (0..40).map(|index| send("GET", spellings[index % 4], &[]).status).collect();
    // One bucket: its burst of 20, plus the one request a second it refills meanwhile. Four
    // buckets (one per spelling) would have let all 40 through.
    let refilled = started.elapsed().as_secs() as usize + 1;
    let admitted = statuses.iter().filter(|status| **status == 200).count();
    assert!((20..=20 + refilled).contains(&admitted), "{admitted} admitted: {statuses:?}");
    assert_eq!(statuses[..20], [200; 20], "{statuses:?}");
    // An encoded slash cannot be made one meaning: refused before any filter.
    let inventory_hits = hits("inventory");
    assert_eq!(send("GET", "/inventory%2F..%2Fusers/1", &[]).status, 400);
    assert_eq!(hits("inventory"), inventory_hits);
    // A client-sent consumer header under another spelling never reaches an upstream.
    let users_hits = hits("users");
    for name in ["x_gateway_consumer", "X_Gateway-Consumer", "x-gateway_consumer"] {
        assert_eq!(send("GET", "/users/1", &[(name, "mallory")]).status, 400, "{name}");
    }
    assert_eq!(hits("users"), users_hits, "refused before any upstream");
}
