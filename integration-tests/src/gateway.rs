//! Envoy configurations for tests and the benchmark, built as JSON (which Envoy reads as
//! YAML): one HTTP listener on a kernel-chosen port, named routes to STATIC clusters on
//! loopback, and any chain of HTTP filters.

use serde_json::{json, Value};
use std::path::Path;

/// Labels our filters' metrics carry: the metrics filter's (plus its overflow counter's
/// `label`), the ratelimit filter's `rule`, `decision` and `reason`, and the auth filter's
/// `result` and `provider`.
pub const GATEWAY_LABELS: [&str; 12] = [
    "route", "upstream", "method", "code", "consumer", "label", "rule", "decision", "reason", "result", "provider",
    "plugin",
];

pub struct Gateway {
    routes: Vec<Value>,
    clusters: Vec<Value>,
    filters: Vec<Value>,
    tag_labels: Vec<String>,
    /// `(use_remote_address, xff_num_trusted_hops)` of the connection manager.
    client_address: Option<u32>,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            routes: vec![],
            clusters: vec![],
            filters: vec![],
            tag_labels: GATEWAY_LABELS.map(String::from).to_vec(),
            client_address: None,
        }
    }
}

impl Gateway {
    pub fn new() -> Gateway {
        Gateway::default()
    }

    /// A cluster of loopback endpoints (round robin).
    pub fn cluster(mut self, name: &str, ports: &[u16]) -> Gateway {
        let endpoints: Vec<Value> = ports
            .iter()
            .map(|port| json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}))
            .collect();
        self.clusters.push(json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}
        }));
        self
    }

    /// A cluster of loopback endpoints that speak HTTP/2 (a gRPC service).
    pub fn grpc_cluster(mut self, name: &str, ports: &[u16]) -> Gateway {
        self = self.cluster(name, ports);
        if let Some(cluster) = self.clusters.last_mut() {
            cluster["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            });
        }
        self
    }

    /// A route given whole, as Envoy's `RouteConfiguration` route JSON.
    pub fn raw_route(mut self, route: Value) -> Gateway {
        self.routes.push(route);
        self
    }

    /// A named route: requests whose path starts with `prefix` go to `cluster`.
    pub fn route(mut self, name: &str, prefix: &str, cluster: &str) -> Gateway {
        self.routes.push(json!({"name": name, "match": {"prefix": prefix}, "route": {"cluster": cluster}}));
        self
    }

    /// A named route that Envoy answers itself with `status` (no upstream), for tests that
    /// measure the filters and nothing else.
    pub fn direct_route(mut self, name: &str, prefix: &str, status: u16) -> Gateway {
        self.routes.push(json!({"name": name, "match": {"prefix": prefix}, "direct_response": {"status": status}}));
        self
    }

    /// One of our wasm filters, by module name (`metrics`, `noop`, …) with its JSON config.
    pub fn wasm_filter(self, module: &str, configuration: Value) -> Gateway {
        let path = crate::paths::wasm_module(module);
        self.wasm_filter_at(module, &path, configuration, "FAIL_CLOSED")
    }

    pub fn wasm_filter_at(mut self, name: &str, path: &Path, configuration: Value, failure_policy: &str) -> Gateway {
        self.filters.push(json!({
            "name": name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": name,
                    "root_id": name,
                    "failure_policy": failure_policy,
                    "vm_config": {
                        "vm_id": "gateway",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": path.display().to_string()}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": configuration.to_string()
                    }
                }
            }
        }));
        self
    }

    /// Makes Envoy take the client address from the TCP peer (`use_remote_address: true`),
    /// trusting `xff_num_trusted_hops` proxies' entries in `x-forwarded-for`, as at an edge.
    pub fn use_remote_address(mut self, xff_num_trusted_hops: u32) -> Gateway {
        self.client_address = Some(xff_num_trusted_hops);
        self
    }

    /// One of Envoy's own HTTP filters, by name and typed config (for comparisons).
    pub fn native_filter(mut self, name: &str, typed_config: Value) -> Gateway {
        self.filters.push(json!({"name": name, "typed_config": typed_config}));
        self
    }

    /// Adds a stats tag for an extra metrics label (built-in labels are always tagged).
    pub fn tag_label(mut self, label: &str) -> Gateway {
        self.tag_labels.push(label.to_string());
        self
    }

    pub fn render(&self) -> String {
        let mut filters = self.filters.clone();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let mut connection_manager = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "gateway",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": self.routes}]},
            "http_filters": filters
        });
        if let Some(hops) = self.client_address {
            connection_manager["use_remote_address"] = json!(true);
            connection_manager["xff_num_trusted_hops"] = json!(hops);
        }
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "stats_config": {"stats_tags": stats_tags(&self.tag_labels)},
            // Histograms are merged when the admin endpoint is read, so a test sees every sample.
            "stats_flush_on_admin": true,
            "static_resources": {
                "listeners": [{
                    "name": "gateway",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": connection_manager
                    }]}]
                }],
                "clusters": self.clusters
            }
        })
        .to_string()
    }
}

/// The `stats_config.stats_tags` entries that turn the metrics filter's dotted stat names
/// into Prometheus labels. The pairs before the label are skipped two dot-separated
/// segments at a time, so only a label name in a name position can match (never a value).
pub fn stats_tags(labels: &[String]) -> Value {
    labels.iter().map(|label| json!({"tag_name": label, "regex": stats_tag_regex(label)})).collect::<Vec<_>>().into()
}

pub fn stats_tag_regex(label: &str) -> String {
    format!(r"^wasmcustom\.gateway_[a-z_]+(?:\.[^.]+\.[^.]+)*?(\.{label}\.([^.]+))(?:\.|$)")
}
