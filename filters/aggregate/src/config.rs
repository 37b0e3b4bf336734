//! The aggregate filter's configuration: JSON in Envoy's `configuration` field, compiled once
//! into [`AggregateConfig`].

use crate::shape::{Filter, Shape};
use crate::template::{Scope, UrlTemplate, Variable};
use gateway_common::config::{header_name, parse_json, ConfigError};
use gateway_common::duration::parse_duration;
use gateway_common::path_match::{PathMatch, RawPathMatch};
use gateway_common::request_match::method_name;
use gateway_common::CONSUMER_HEADER;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Forwarded to every backend unless the backend lists its own.
pub const DEFAULT_FORWARD_HEADERS: [&str; 4] = ["authorization", "x-request-id", "traceparent", CONSUMER_HEADER];
/// Headers that frame the client's own body: copied onto a bodiless call, they would describe
/// a body that is not there.
const FRAMING_HEADERS: [&str; 3] = ["content-length", "transfer-encoding", "content-encoding"];
/// Connection-specific headers (RFC 9110 §7.6.1, and those HTTP/2 forbids).
const HOP_BY_HOP_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// The JSON Schema of this filter's configuration (`schemas/` holds it, generated).
#[cfg(feature = "schema")]
pub fn schema() -> schemars::Schema {
    let mut schema = schemars::schema_for!(RawConfig);
    schema.insert("title".into(), "aggregate filter configuration".into());
    schema
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawConfig {
    endpoints: Vec<RawEndpoint>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    #[serde(default = "default_method")]
    method: String,
    path: String,
    timeout: Option<String>,
    backends: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: String,
    cluster: String,
    #[serde(default = "default_method")]
    method: String,
    path: String,
    host: Option<String>,
    forward_headers: Option<Vec<String>>,
    timeout: Option<String>,
    #[serde(default = "default_true")]
    required: bool,
    #[serde(default)]
    pass_status: bool,
    fallback: Option<serde_json::Value>,
    max_response_bytes: Option<usize>,
    target: Option<String>,
    #[serde(default)]
    is_collection: bool,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    #[serde(default)]
    mapping: BTreeMap<String, String>,
    group: Option<String>,
}

fn default_method() -> String {
    "GET".to_string()
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq)]
pub struct AggregateConfig {
    /// Shared with the requests in flight, each of which holds its endpoint until it answers.
    pub endpoints: Vec<Rc<Endpoint>>,
}

/// An endpoint that matched a request, with the request's path parameters (name, raw value).
pub type Found<'a, 'p> = (&'a Rc<Endpoint>, Vec<(&'a str, &'p str)>);

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub method: String,
    pub path: PathMatch,
    /// What every path the endpoint matches starts with, up to its first non-ASCII character
    /// (see [`PathMatch::literal_start`]).
    pub path_start: String,
    /// The whole aggregation's deadline; past it the answer is 504.
    pub timeout: Duration,
    pub backends: Vec<Backend>,
    /// Backend indexes per stage: a backend's stage is one more than the latest stage of the
    /// backends whose answers its URL uses, so independent backends run together.
    pub stages: Vec<Vec<usize>>,
    /// Every request header the backends forward or use in their URLs, read once per request.
    pub request_headers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub name: String,
    pub cluster: String,
    pub method: String,
    pub url: UrlTemplate,
    /// `:authority` of the call (default: the cluster name).
    pub host: String,
    pub forward_headers: Vec<String>,
    pub timeout: Duration,
    pub required: bool,
    /// A required backend's non-2xx status becomes the answer's status (instead of 502).
    pub pass_status: bool,
    /// Used in place of an optional backend's answer when it fails.
    pub fallback: Option<serde_json::Value>,
    pub max_response_bytes: usize,
    pub shape: Shape,
}

impl AggregateConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = parse_json(bytes)?;
        if raw.endpoints.is_empty() {
            return Err(ConfigError::field("endpoints", "must list at least one endpoint"));
        }
        let endpoints = raw
            .endpoints
            .into_iter()
            .enumerate()
            .map(|(index, endpoint)| compile_endpoint(endpoint, &format!("endpoints[{index}]")).map(Rc::new))
            .collect::<Result<_, _>>()?;
        Ok(AggregateConfig { endpoints })
    }

    /// Whether some endpoint could match: its method, and the start of its path. Asked first,
    /// on the bytes: most requests through the gateway are for no endpoint, and this leaves
    /// them without looking at the path as text.
    pub fn may_match(&self, method: &[u8], path: &[u8]) -> bool {
        self.endpoints
            .iter()
            .any(|endpoint| endpoint.method.as_bytes() == method && path.starts_with(endpoint.path_start.as_bytes()))
    }

    /// The endpoint for a request and its path parameters (still percent-encoded).
    pub fn find<'a, 'p>(&'a self, method: &str, path: &'p str) -> Option<Found<'a, 'p>> {
        self.endpoints
            .iter()
            .filter(|endpoint| endpoint.method == method)
            .find_map(|endpoint| endpoint.path.captures(path).map(|captures| (endpoint, captures)))
    }
}

fn compile_endpoint(raw: RawEndpoint, field: &str) -> Result<Endpoint, ConfigError> {
    let method = method_name(&raw.method, &format!("{field}.method"))?;
    let path = PathMatch::compile(&RawPathMatch::Template(raw.path), &format!("{field}.path"))
        .map_err(|error| ConfigError::field(format!("{field}.path"), error.message))?;
    let timeout = duration(raw.timeout.as_deref(), DEFAULT_TIMEOUT, &format!("{field}.timeout"))?;
    if raw.backends.is_empty() {
        return Err(ConfigError::field(format!("{field}.backends"), "must list at least one backend"));
    }
    let path_parameters: Vec<String> = path.parameters().map(str::to_string).collect();
    let mut names: Vec<String> = Vec::new();
    let mut backends = Vec::new();
    for (index, backend) in raw.backends.into_iter().enumerate() {
        let field = format!("{field}.backends[{index}]");
        let scope = Scope { path_parameters: &path_parameters, earlier_backends: &names };
        let backend = compile_backend(backend, &scope, timeout, &field)?;
        if names.contains(&backend.name) || backend.name == "query" || backend.name == "header" {
            return Err(ConfigError::field(format!("{field}.name"), format!("`{}` is already taken", backend.name)));
        }
        names.push(backend.name.clone());
        backends.push(backend);
    }
    let stages = stages(&backends);
    let mut request_headers: Vec<String> = Vec::new();
    for backend in &backends {
        let used = backend.url.variables().filter_map(|variable| match variable {
            Variable::Header(name) => Some(name),
            _ => None,
        });
        for name in backend.forward_headers.iter().chain(used) {
            if !request_headers.contains(name) {
                request_headers.push(name.clone());
            }
        }
    }
    // Only its ASCII part: a path that is not UTF-8 is matched as replaced characters, and
    // those never stand for ASCII bytes, so the test on bytes stays a necessary condition.
    let mut path_start = path.literal_start();
    path_start.truncate(path_start.bytes().take_while(u8::is_ascii).count());
    Ok(Endpoint { method, path, path_start, timeout, backends, stages, request_headers })
}

fn compile_backend(
    raw: RawBackend,
    scope: &Scope,
    endpoint_timeout: Duration,
    field: &str,
) -> Result<Backend, ConfigError> {
    let valid_name = !raw.name.is_empty()
        && raw.name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if !valid_name {
        return Err(ConfigError::field(format!("{field}.name"), format!("`{}` is not [A-Za-z0-9_-]+", raw.name)));
    }
    // Envoy cluster names are free-form, but these characters never belong in one and usually
    // mean a URL or a typo was pasted in.
    let valid_cluster = !raw.cluster.is_empty()
        && raw.cluster.len() <= 255
        && raw.cluster.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"_-.:|".contains(&byte));
    if !valid_cluster {
        return Err(ConfigError::field(
            format!("{field}.cluster"),
            format!("`{}` is not an Envoy cluster name ([A-Za-z0-9_.:|-], at most 255)", raw.cluster),
        ));
    }
    let forward_headers = match raw.forward_headers {
        Some(names) => names
            .iter()
            .enumerate()
            .map(|(index, name)| header_name(name, &format!("{field}.forward_headers[{index}]")))
            .collect::<Result<Vec<_>, _>>()?,
        None => DEFAULT_FORWARD_HEADERS.iter().map(|name| name.to_string()).collect(),
    };
    for (index, name) in forward_headers.iter().enumerate() {
        let refused = if name.starts_with(':') || name == "host" {
            Some("is set by the filter")
        } else if FRAMING_HEADERS.contains(&name.as_str()) {
            Some("describes the framing of the client's body; the backend call has no body")
        } else if HOP_BY_HOP_HEADERS.contains(&name.as_str()) {
            Some("is a hop-by-hop header (RFC 9110 §7.6.1): it belongs to one connection, not to the call")
        } else {
            None
        };
        if let Some(reason) = refused {
            return Err(ConfigError::field(format!("{field}.forward_headers[{index}]"), format!("`{name}` {reason}")));
        }
    }
    let timeout = duration(raw.timeout.as_deref(), endpoint_timeout, &format!("{field}.timeout"))?;
    if raw.fallback.is_some() && raw.required {
        return Err(ConfigError::field(
            format!("{field}.fallback"),
            "only an optional backend (`required: false`) can have a fallback",
        ));
    }
    if let Some(fallback) = &raw.fallback {
        if raw.group.is_none() && !fallback.is_object() {
            return Err(ConfigError::field(
                format!("{field}.fallback"),
                "without a `group`, the fallback must be an object",
            ));
        }
    }
    let max_response_bytes = raw.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
    if max_response_bytes == 0 {
        return Err(ConfigError::field(format!("{field}.max_response_bytes"), "must be at least 1"));
    }
    let dotted = |text: &str, field: String| -> Result<Vec<String>, ConfigError> {
        let path: Vec<String> = text.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::field(field, format!("`{text}` is not a dotted field path")));
        }
        Ok(path)
    };
    let paths = |list: &[String], name: &str| -> Result<Vec<Vec<String>>, ConfigError> {
        list.iter().enumerate().map(|(index, text)| dotted(text, format!("{field}.{name}[{index}]"))).collect()
    };
    let filter = match (&raw.allow, &raw.deny) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::field(format!("{field}.deny"), "use either `allow` or `deny`, not both"))
        }
        (Some(allow), None) => Some(Filter::Allow(paths(allow, "allow")?)),
        (None, Some(deny)) => Some(Filter::Deny(paths(deny, "deny")?)),
        (None, None) => None,
    };
    if let Some(group) = &raw.group {
        if group.is_empty() {
            return Err(ConfigError::field(format!("{field}.group"), "must not be empty"));
        }
    }
    let shape = Shape {
        target: raw.target.as_deref().map(|target| dotted(target, format!("{field}.target"))).transpose()?,
        is_collection: raw.is_collection,
        filter,
        mapping: raw.mapping.into_iter().collect(),
        group: raw.group,
    };
    Ok(Backend {
        host: raw.host.unwrap_or_else(|| raw.cluster.clone()),
        url: UrlTemplate::compile(&raw.path, scope, &format!("{field}.path"))?,
        name: raw.name,
        cluster: raw.cluster,
        method: method_name(&raw.method, &format!("{field}.method"))?,
        forward_headers,
        timeout,
        required: raw.required,
        pass_status: raw.pass_status,
        fallback: raw.fallback,
        max_response_bytes,
        shape,
    })
}

fn stages(backends: &[Backend]) -> Vec<Vec<usize>> {
    let mut stage_of: Vec<usize> = Vec::with_capacity(backends.len());
    for backend in backends {
        let stage = backend
            .url
            .variables()
            .filter_map(|variable| match variable {
                Variable::Field { backend, .. } => stage_of.get(*backend).map(|stage| stage + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        stage_of.push(stage);
    }
    let count = stage_of.iter().max().map_or(0, |last| last + 1);
    (0..count).map(|stage| (0..backends.len()).filter(|index| stage_of.get(*index) == Some(&stage)).collect()).collect()
}

fn duration(text: Option<&str>, default: Duration, field: &str) -> Result<Duration, ConfigError> {
    let Some(text) = text else { return Ok(default) };
    let duration = parse_duration(text).map_err(|message| ConfigError::field(field, message))?;
    if duration.is_zero() {
        return Err(ConfigError::field(field, "must be more than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<AggregateConfig, ConfigError> {
        AggregateConfig::parse(value.to_string().as_bytes())
    }

    fn dashboard() -> serde_json::Value {
        json!({"endpoints": [{
            "path": "/api/users/{id}/dashboard",
            "timeout": "2s",
            "backends": [
                {"name": "user", "cluster": "users", "path": "/users/{id}"},
                {"name": "orders", "cluster": "orders", "path": "/orders?user_id={id}", "required": false, "group": "orders", "timeout": "500ms"},
                {"name": "team", "cluster": "teams", "path": "/teams/{user.team_id}", "required": false, "fallback": {}},
                {"name": "stock", "cluster": "inventory", "path": "/inventory/{orders.orders.sku}", "required": false}
            ]
        }]})
    }

    #[test]
    fn compiles_stages_from_field_references() {
        let config = parse(dashboard()).unwrap();
        let endpoint = &config.endpoints[0];
        assert_eq!(endpoint.method, "GET");
        assert_eq!(endpoint.timeout, Duration::from_secs(2));
        assert_eq!(endpoint.stages, vec![vec![0, 1], vec![2, 3]]);
        let user = &endpoint.backends[0];
        assert!(user.required);
        assert_eq!(user.timeout, Duration::from_secs(2), "defaults to the endpoint's timeout");
        assert_eq!(user.host, "users");
        assert_eq!(user.forward_headers, ["authorization", "x-request-id", "traceparent", "x-gateway-consumer"]);
        assert_eq!(user.max_response_bytes, 1 << 20);
        assert_eq!(endpoint.backends[1].timeout, Duration::from_millis(500));
        assert_eq!(endpoint.request_headers, ["authorization", "x-request-id", "traceparent", "x-gateway-consumer"]);
        assert!(!endpoint.backends[1].required);
    }

    #[test]
    fn finds_endpoints_by_method_and_template() {
        let config = parse(dashboard()).unwrap();
        let (endpoint, params) = config.find("GET", "/api/users/7/dashboard?x=1").unwrap();
        assert_eq!(endpoint.backends.len(), 4);
        assert_eq!(params, [("id", "7")]);
        assert!(config.find("POST", "/api/users/7/dashboard").is_none());
        assert!(config.find("GET", "/api/users/7").is_none());
        for (method, path) in
            [("GET", "/api/users/7/dashboard?x=1"), ("POST", "/api/users/7/dashboard"), ("GET", "/api/users/7")]
        {
            if config.find(method, path).is_some() {
                assert!(config.may_match(method.as_bytes(), path.as_bytes()), "{method} {path}");
            }
        }
        assert!(!config.may_match(b"GET", b"/health"));
        assert!(!config.may_match(b"PUT", b"/api/users/7/dashboard"));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let with_backend = |patch: serde_json::Value| {
            let mut config = dashboard();
            let backend = &mut config["endpoints"][0]["backends"][1];
            for (key, value) in patch.as_object().unwrap() {
                backend[key] = value.clone();
            }
            config
        };
        let cases = [
            (json!({"endpoints": []}), "endpoints", "at least one endpoint"),
            (json!({"endpoints": [{"path": "/x", "backends": []}]}), "endpoints[0].backends", "at least one backend"),
            (json!({"endpoints": [{"path": "x", "backends": []}]}), "endpoints[0].path", "must start with `/`"),
            (
                json!({"endpoints": [{"path": "/x", "timeout": "0s", "backends": []}]}),
                "endpoints[0].timeout",
                "more than zero",
            ),
            (
                with_backend(json!({"cluster": "http://orders:8080"})),
                "endpoints[0].backends[1].cluster",
                "not an Envoy cluster name",
            ),
            (with_backend(json!({"cluster": ""})), "endpoints[0].backends[1].cluster", "not an Envoy cluster name"),
            (with_backend(json!({"path": "/orders/{uid}"})), "endpoints[0].backends[1].path", "not a parameter"),
            (
                with_backend(json!({"path": "/orders/{team.id}"})),
                "endpoints[0].backends[1].path",
                "no backend named `team`",
            ),
            (with_backend(json!({"name": "user"})), "endpoints[0].backends[1].name", "already taken"),
            (with_backend(json!({"name": "query"})), "endpoints[0].backends[1].name", "already taken"),
            (with_backend(json!({"name": "a.b"})), "endpoints[0].backends[1].name", "is not"),
            (with_backend(json!({"timeout": "soon"})), "endpoints[0].backends[1].timeout", "not a duration"),
            (
                with_backend(json!({"required": true, "fallback": {}})),
                "endpoints[0].backends[1].fallback",
                "only an optional backend",
            ),
            (
                with_backend(json!({"group": null, "fallback": []})),
                "endpoints[0].backends[1].fallback",
                "must be an object",
            ),
            (with_backend(json!({"allow": ["a"], "deny": ["b"]})), "endpoints[0].backends[1].deny", "not both"),
            (with_backend(json!({"allow": ["a..b"]})), "endpoints[0].backends[1].allow[0]", "dotted field path"),
            (
                with_backend(json!({"forward_headers": ["host"]})),
                "endpoints[0].backends[1].forward_headers[0]",
                "set by the filter",
            ),
            (
                with_backend(json!({"forward_headers": ["authorization", "Content-Length"]})),
                "endpoints[0].backends[1].forward_headers[1]",
                "framing",
            ),
            (
                with_backend(json!({"forward_headers": ["transfer-encoding"]})),
                "endpoints[0].backends[1].forward_headers[0]",
                "framing",
            ),
            (
                with_backend(json!({"forward_headers": ["connection"]})),
                "endpoints[0].backends[1].forward_headers[0]",
                "hop-by-hop",
            ),
            (
                with_backend(json!({"forward_headers": ["upgrade"]})),
                "endpoints[0].backends[1].forward_headers[0]",
                "hop-by-hop",
            ),
            (
                with_backend(json!({"max_response_bytes": 0})),
                "endpoints[0].backends[1].max_response_bytes",
                "at least 1",
            ),
            (with_backend(json!({"colour": "red"})), "endpoints[0].backends[1].colour", "unknown field"),
            (with_backend(json!({"method": "G T"})), "endpoints[0].backends[1].method", "not a method"),
        ];
        for (config, field, message) in cases {
            let error = parse(config.clone()).unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert!(error.message.contains(message), "{error}");
        }
    }
}
