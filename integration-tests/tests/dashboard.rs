//! The Grafana dashboard (`docker/grafana/dashboards/gateway.json`): every panel's PromQL,
//! run by a real Prometheus scraping the shipped gateway after traffic that touches every
//! panel, returns the series the panel is meant to show.

use integration_tests::client;
use integration_tests::paths;
use integration_tests::prometheus::{Prometheus, Samples};
use integration_tests::shipped::{DemoServices, ShippedGateway};
use serde_json::Value;
use std::collections::BTreeSet;

/// Every (panel title, PromQL) of the dashboard.
fn panel_queries() -> Vec<(String, String)> {
    let path = paths::repo_root().join("docker/grafana/dashboards/gateway.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard")).expect("JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for target in panel["targets"].as_array().expect("targets") {
            queries.push((title.clone(), target["expr"].as_str().expect("expr").to_string()));
        }
    }
    queries
}

/// The values one label takes across a result.
fn values(samples: &Samples, label: &str) -> BTreeSet<String> {
    samples.keys().filter_map(|labels| labels.get(label).cloned()).collect()
}

/// Requests that give every panel something to show: reads with and without a token, a
/// forged token (401), a write without the scope (403), writes past the global limit (429),
/// and the composed dashboard endpoint. `writes` POSTs (the global rule allows 3 a minute);
/// few enough requests in all for the per-client rule (bursts of 20) to let them through.
fn traffic(gateway: &ShippedGateway, writer: &str, reader: &str, writes: usize) {
    let send = |method: &str, path: &str, authorization: Option<&str>| {
        let headers: Vec<(&str, &str)> = authorization.map(|value| ("authorization", value)).into_iter().collect();
        client::request(method, &gateway.url(path), &headers).status
    };
    assert_eq!(send("GET", "/users/1", None), 200);
    assert_eq!(send("GET", "/orders?user_id=1", Some(writer)), 200);
    assert_eq!(send("GET", "/users/1", Some("Bearer not.a.token")), 401);
    assert_eq!(send("POST", "/orders", Some(reader)), 403);
    let writes: Vec<u16> = (0..writes).map(|_| send("POST", "/orders", Some(writer))).collect();
    assert_eq!(writes.last(), Some(&429), "the global rule allows 3 writes a minute: {writes:?}");
    assert_eq!(send("GET", "/api/users/1/dashboard", Some(writer)), 200);
}

#[test]
fn every_panel_query_returns_its_series_after_traffic() {
    let services = DemoServices::start();
    let gateway = ShippedGateway::start(&services.endpoints(), services.singles());
    let prometheus = Prometheus::start(gateway.envoy.admin_url().trim_start_matches("http://"));
    let up = prometheus.until("up", |samples| samples.values().any(|&value| value == 1.0));
    assert!(up.is_some_and(|samples| !samples.is_empty()), "Prometheus never scraped Envoy");

    let token =
        |query: &str| format!("Bearer {}", client::get(&gateway.url(&format!("/token?{query}&format=raw"))).text());
    let writer = token("sub=ada&scope=orders:read%20orders:write");
    let reader = token("sub=grace&scope=orders:read");
    gateway.bearer("ada"); // waits until the gateway has the key set
                           // Two rounds a few scrapes apart, so every rate has an increase to show.
    traffic(&gateway, &writer, &reader, 4);
    std::thread::sleep(std::time::Duration::from_secs(5));
    traffic(&gateway, &writer, &reader, 1);

    let queries = panel_queries();
    assert!(queries.len() >= 12, "the dashboard has {} queries", queries.len());
    for (title, promql) in queries {
        let check = |samples: &Samples| -> Result<(), String> {
            let want = |label: &str, expected: &[&str]| {
                let found = values(samples, label);
                let missing: Vec<&&str> = expected.iter().filter(|value| !found.contains(**value)).collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("no {label} {missing:?} in {found:?}"))
                }
            };
            if samples.is_empty() {
                return Err("no series".into());
            }
            if promql.contains("sum by (route)") {
                want("route", &["users", "orders"])?;
            }
            if promql.contains("sum by (consumer)") {
                want("consumer", &["ada", "anonymous"])?;
            }
            if promql.contains("sum by (code)") && !promql.contains("code=~") {
                want("code", &["200", "401", "403", "429"])?;
            }
            if promql.contains("code=~") {
                want("code", &["401", "403", "429"])?;
                if values(samples, "code").len() != 3 {
                    return Err(format!("only refusals belong here: {samples:?}"));
                }
            }
            if promql.contains("histogram_quantile") {
                want("route", &["users"])?;
                if samples.values().any(|value| !value.is_finite()) {
                    return Err(format!("a quantile is not a number: {samples:?}"));
                }
            }
            if promql.contains("gateway_ratelimit_requests_total") {
                want("decision", &["allowed", "rejected"])?;
                want("rule", &["orders-writes", "per-client"])?;
            }
            if promql.contains("gateway_ratelimit_failures_total") {
                want("reason", &["service_timeout", "table_full"])?;
            }
            if promql.contains("gateway_auth_requests_total") {
                want("result", &["allowed", "invalid", "forbidden"])?;
            }
            if promql.contains("gateway_auth_jwks_fetches_total") {
                want("provider", &["demo"])?;
                let fetched = samples
                    .iter()
                    .any(|(labels, &value)| labels.get("result").map(String::as_str) == Some("success") && value > 0.0);
                if !fetched {
                    return Err(format!("no successful fetch: {samples:?}"));
                }
            }
            if promql.contains("gateway_aggregate_requests_total") {
                want("result", &["complete"])?;
            }
            Ok(())
        };
        let result = prometheus.until(&promql, |samples| check(samples).is_ok());
        let verdict = result.as_ref().map_or(Err("Prometheus refused the query".to_string()), &check);
        assert!(verdict.is_ok(), "panel `{title}`: {promql}\n{}", verdict.err().unwrap_or_default());
    }
}
