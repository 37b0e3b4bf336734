//! The ratelimit filter's configuration: JSON in Envoy's `configuration` field, compiled once
//! into [`RateLimitConfig`].

use crate::gcra::Limit;
use crate::table::WAYS;
use gateway_common::config::{header_name, parse_json, ConfigError};
use gateway_common::duration::parse_duration;
use gateway_common::path_match::RawPathMatch;
use gateway_common::request_match::RequestMatch;
use gateway_common::CONSUMER_HEADER;
use serde::Deserialize;
use std::time::Duration;

pub const DEFAULT_CAPACITY: u32 = 65_536;
/// 16 Mi buckets: about 600 MiB of shared data when full, far past any sensible table.
pub const MAX_CAPACITY: u32 = 1 << 24;
/// At most this many requests per period (keeps the tick arithmetic far from overflow).
pub const MAX_REQUESTS: u64 = 1_000_000_000;
/// At most a year per period.
pub const MAX_PERIOD_SECONDS: u64 = 366 * 86_400;

/// The JSON Schema of this filter's configuration (`schemas/` holds it, generated).
#[cfg(feature = "schema")]
pub fn schema() -> schemars::Schema {
    let mut schema = schemars::schema_for!(RawConfig);
    schema.insert("title".into(), "ratelimit filter configuration".into());
    schema
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_consumer_header")]
    consumer_header: String,
    #[serde(default = "default_capacity")]
    capacity: u32,
    #[serde(default)]
    failure_policy: FailurePolicy,
    #[serde(default)]
    legacy_headers: bool,
    #[serde(default)]
    access_log_fields: bool,
    rate_limit_service: Option<RawService>,
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawService {
    cluster: String,
    domain: String,
    #[serde(default = "default_service_timeout")]
    timeout: String,
}

fn default_service_timeout() -> String {
    "20ms".to_string()
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default, rename = "match")]
    matcher: RawMatch,
    /// Parsed by hand ([`compile_key_part`]): a part is a name or a one-field object.
    #[cfg_attr(feature = "schema", schemars(schema_with = "key_schema"))]
    key: Vec<serde_json::Value>,
    limit: Option<RawLimit>,
    #[serde(default)]
    global: bool,
    failure_policy: Option<FailurePolicy>,
    #[serde(default)]
    shadow: bool,
    #[serde(default = "default_true")]
    headers: bool,
}

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawMatch {
    path: Option<RawPathMatch>,
    #[serde(default)]
    methods: Vec<String>,
    route: Option<String>,
    #[serde(default)]
    headers: Vec<RawHeaderMatch>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    name: String,
    present: Option<bool>,
    equals: Option<String>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawLimit {
    requests: u64,
    per: String,
    burst: Option<u64>,
}

fn default_consumer_header() -> String {
    CONSUMER_HEADER.to_string()
}

fn default_capacity() -> u32 {
    DEFAULT_CAPACITY
}

fn default_true() -> bool {
    true
}

/// What happens to a request whose limit cannot be checked: for a local rule, shared data
/// failed or every compare-and-swap attempt lost; for a global rule, the rate limit service
/// timed out, failed or answered something undecodable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Let the request through (as Envoy's rate limit filter does by default).
    #[default]
    FailOpen,
    /// Answer 503 with `Retry-After: 1`.
    FailClosed,
}

/// Where global rules are decided: a service speaking Envoy's rate limit protocol
/// (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), reached through an Envoy
/// cluster (HTTP/2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitService {
    pub cluster: String,
    /// The domain every request names; the service's limits are per domain.
    pub domain: String,
    /// How long a request waits for the answer before the rules' failure policy applies.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub consumer_header: String,
    /// Table groups (`capacity / WAYS`, rounded up).
    pub groups: u32,
    pub failure_policy: FailurePolicy,
    pub legacy_headers: bool,
    /// Publish the deciding rule and the decision as filter state for Envoy's access log (two
    /// host calls per request, so only when asked).
    pub access_log_fields: bool,
    pub rate_limit_service: Option<RateLimitService>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `[A-Za-z0-9_-]{1,64}`: it appears in metric names and response headers.
    pub name: String,
    pub matcher: Match,
    pub key: Vec<KeyPart>,
    pub scope: Scope,
    /// The rule's own `failure_policy`, else the filter's.
    pub failure_policy: FailurePolicy,
    pub shadow: bool,
    pub headers: bool,
}

/// Where a rule's requests are counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// In this Envoy's shared data, with the rule's own limit.
    Local { limit: Limit },
    /// By the rate limit service, which holds the limit: one count for every Envoy that asks.
    Global,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// Path, methods, route name.
    pub request: RequestMatch,
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub condition: HeaderCondition,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderCondition {
    Present,
    Absent,
    Equals(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// Envoy's trusted client address, masked to a network.
    ClientIp(ClientIpMask),
    Consumer,
    Path,
    Route,
    /// Lower-case header name (after compiling).
    Header(String),
    Fixed(String),
}

/// How much of the client address keys a bucket (Envoy's `masked_remote_address` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClientIpMask {
    #[serde(default = "default_v4_prefix")]
    pub v4_prefix_mask_len: u8,
    #[serde(default = "default_v6_prefix")]
    pub v6_prefix_mask_len: u8,
}

/// One IPv4 address is one client.
fn default_v4_prefix() -> u8 {
    32
}

/// An IPv6 client usually holds a whole /64 (RFC 6177), so its addresses are one key.
fn default_v6_prefix() -> u8 {
    64
}

impl Default for ClientIpMask {
    fn default() -> Self {
        ClientIpMask { v4_prefix_mask_len: default_v4_prefix(), v6_prefix_mask_len: default_v6_prefix() }
    }
}

impl ClientIpMask {
    /// `ip`'s masked network as Envoy's `masked_remote_address` descriptor writes it:
    /// `198.51.100.0/24`, `2001:db8::/64`.
    pub fn network(&self, ip: std::net::IpAddr) -> String {
        let network = gateway_common::client_ip::mask(ip, self.v4_prefix_mask_len, self.v6_prefix_mask_len);
        let prefix = if network.is_ipv4() { self.v4_prefix_mask_len } else { self.v6_prefix_mask_len };
        format!("{network}/{prefix}")
    }

    /// The key part for `ip`: its masked network, then the prefix length.
    pub fn key(&self, ip: std::net::IpAddr) -> Vec<u8> {
        let network = gateway_common::client_ip::mask(ip, self.v4_prefix_mask_len, self.v6_prefix_mask_len);
        let (mut bytes, prefix) = match network {
            std::net::IpAddr::V4(v4) => (v4.octets().to_vec(), self.v4_prefix_mask_len),
            std::net::IpAddr::V6(v6) => (v6.octets().to_vec(), self.v6_prefix_mask_len),
        };
        bytes.push(prefix);
        bytes
    }
}

impl RateLimitConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        compile(parse_json(bytes)?)
    }
}

fn compile(raw: RawConfig) -> Result<RateLimitConfig, ConfigError> {
    let consumer_header = header_name(&raw.consumer_header, "consumer_header")?;
    if !(1..=MAX_CAPACITY).contains(&raw.capacity) {
        return Err(ConfigError::field("capacity", format!("must be between 1 and {MAX_CAPACITY}")));
    }
    let groups = raw.capacity.div_ceil(WAYS as u32);
    if raw.rules.is_empty() {
        return Err(ConfigError::field("rules", "must list at least one rule"));
    }
    let rate_limit_service = raw.rate_limit_service.map(compile_service).transpose()?;
    let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
    for (index, rule) in raw.rules.into_iter().enumerate() {
        let field = format!("rules[{index}]");
        if rule.global && rate_limit_service.is_none() {
            return Err(ConfigError::field(
                format!("{field}.global"),
                "a global rule needs `rate_limit_service` (the cluster and domain to ask)",
            ));
        }
        let rule = compile_rule(rule, &field, raw.failure_policy)?;
        if rules.iter().any(|other| other.name == rule.name) {
            return Err(ConfigError::field(
                format!("rules[{index}].name"),
                format!("`{}` names another rule too", rule.name),
            ));
        }
        rules.push(rule);
    }
    Ok(RateLimitConfig {
        consumer_header,
        groups,
        failure_policy: raw.failure_policy,
        legacy_headers: raw.legacy_headers,
        access_log_fields: raw.access_log_fields,
        rate_limit_service,
        rules,
    })
}

fn compile_service(raw: RawService) -> Result<RateLimitService, ConfigError> {
    if raw.cluster.is_empty() {
        return Err(ConfigError::field("rate_limit_service.cluster", "must name an Envoy cluster"));
    }
    if raw.domain.is_empty() {
        return Err(ConfigError::field("rate_limit_service.domain", "must not be empty"));
    }
    let timeout =
        parse_duration(&raw.timeout).map_err(|message| ConfigError::field("rate_limit_service.timeout", message))?;
    if timeout.is_zero() || timeout > Duration::from_secs(10) {
        return Err(ConfigError::field("rate_limit_service.timeout", "must be more than 0 and at most 10s"));
    }
    Ok(RateLimitService { cluster: raw.cluster, domain: raw.domain, timeout })
}

fn compile_rule(raw: RawRule, field: &str, default_failure_policy: FailurePolicy) -> Result<Rule, ConfigError> {
    let valid_name = (1..=64).contains(&raw.name.len())
        && raw.name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if !valid_name {
        return Err(ConfigError::field(
            format!("{field}.name"),
            format!("`{}` is not [A-Za-z0-9_-]{{1,64}}", raw.name),
        ));
    }
    if raw.key.is_empty() {
        return Err(ConfigError::field(
            format!("{field}.key"),
            "must list at least one part (use [{\"fixed\": \"all\"}] for one limit shared by every client)",
        ));
    }
    let key = raw
        .key
        .into_iter()
        .enumerate()
        .map(|(index, part)| compile_key_part(part, &format!("{field}.key[{index}]")))
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let matcher = compile_match(raw.matcher, &format!("{field}.match"))?;
    let scope = match (raw.global, &raw.limit) {
        (false, Some(limit)) => {
            let limit = compile_limit(limit, &format!("{field}.limit"))?;
            // A local rule's policy never changes, so its header item is made once, here.
            Scope::Local { limit }
        }
        (false, None) => return Err(ConfigError::field(format!("{field}.limit"), "a local rule needs a limit")),
        (true, Some(_)) => {
            return Err(ConfigError::field(
                format!("{field}.limit"),
                "a global rule's limit is set in the rate limit service's limits file, not here",
            ))
        }
        (true, None) if raw.shadow => {
            return Err(ConfigError::field(format!("{field}.shadow"), "shadow mode is for local rules only"))
        }
        (true, None) => Scope::Global,
    };
    Ok(Rule {
        name: raw.name,
        matcher,
        key,
        scope,
        failure_policy: raw.failure_policy.unwrap_or(default_failure_policy),
        shadow: raw.shadow,
        headers: raw.headers,
    })
}

const KEY_PART_FORMS: &str = "use `client_ip`, `consumer`, `path`, `route`, {\"header\": NAME}, {\"fixed\": TEXT} or {\"client_ip\": {\"v4_prefix_mask_len\": N, \"v6_prefix_mask_len\": N}}";

/// A key part: a name (`"client_ip"`) or an object with one field (`{"header": "x-tenant"}`).
/// The forms [`compile_key_part`] accepts, for the JSON Schema.
#[cfg(feature = "schema")]
fn key_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mask = generator.subschema_for::<ClientIpMask>();
    let one = |name: &str, value: schemars::Schema| {
        schemars::json_schema!({
            "type": "object",
            "properties": {name: value},
            "required": [name],
            "additionalProperties": false
        })
    };
    let text = schemars::json_schema!({"type": "string"});
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "items": {"oneOf": [
            {"enum": ["client_ip", "consumer", "path", "route"]},
            one("header", text.clone()),
            one("fixed", text),
            one("client_ip", mask)
        ]}
    })
}

fn compile_key_part(raw: serde_json::Value, field: &str) -> Result<KeyPart, ConfigError> {
    use serde_json::Value;
    let unknown = |what: &str| ConfigError::field(field, format!("{what} is not a key part: {KEY_PART_FORMS}"));
    match raw {
        Value::String(name) => match name.as_str() {
            "client_ip" => Ok(KeyPart::ClientIp(ClientIpMask::default())),
            "consumer" => Ok(KeyPart::Consumer),
            "path" => Ok(KeyPart::Path),
            "route" => Ok(KeyPart::Route),
            _ => Err(unknown(&format!("`{name}`"))),
        },
        Value::Object(object) if object.len() == 1 => {
            let Some((kind, value)) = object.into_iter().next() else { return Err(unknown("an empty object")) };
            let inner = format!("{field}.{kind}");
            match (kind.as_str(), value) {
                ("header", Value::String(name)) => Ok(KeyPart::Header(header_name(&name, &inner)?)),
                ("fixed", Value::String(text)) => Ok(KeyPart::Fixed(text)),
                ("client_ip", value) => {
                    let mask: ClientIpMask = serde_json::from_value(value)
                        .map_err(|error| ConfigError::field(inner.clone(), error.to_string()))?;
                    if mask.v4_prefix_mask_len > 32 {
                        return Err(ConfigError::field(format!("{inner}.v4_prefix_mask_len"), "must be 0 to 32"));
                    }
                    if mask.v6_prefix_mask_len > 128 {
                        return Err(ConfigError::field(format!("{inner}.v6_prefix_mask_len"), "must be 0 to 128"));
                    }
                    Ok(KeyPart::ClientIp(mask))
                }
                ("header" | "fixed", _) => Err(ConfigError::field(inner, "must be a string")),
                (other, _) => Err(unknown(&format!("`{other}`"))),
            }
        }
        other => Err(unknown(&other.to_string())),
    }
}

fn compile_match(raw: RawMatch, field: &str) -> Result<Match, ConfigError> {
    let request = RequestMatch::compile(raw.path.as_ref(), &raw.methods, raw.route, field)?;
    let mut headers = Vec::with_capacity(raw.headers.len());
    for (index, header) in raw.headers.into_iter().enumerate() {
        let field = format!("{field}.headers[{index}]");
        let name = header_name(&header.name, &format!("{field}.name"))?;
        let condition = match (header.present, header.equals) {
            (Some(true), None) => HeaderCondition::Present,
            (Some(false), None) => HeaderCondition::Absent,
            (None, Some(value)) => HeaderCondition::Equals(value),
            _ => return Err(ConfigError::field(field, "set exactly one of `present` and `equals`")),
        };
        headers.push(HeaderMatch { name, condition });
    }
    Ok(Match { request, headers })
}

fn compile_limit(raw: &RawLimit, field: &str) -> Result<Limit, ConfigError> {
    if !(1..=MAX_REQUESTS).contains(&raw.requests) {
        return Err(ConfigError::field(format!("{field}.requests"), format!("must be between 1 and {MAX_REQUESTS}")));
    }
    let period_seconds =
        parse_period(&raw.per).map_err(|message| ConfigError::field(format!("{field}.per"), message))?;
    let burst = raw.burst.unwrap_or(raw.requests);
    if !(1..=MAX_REQUESTS).contains(&burst) {
        return Err(ConfigError::field(format!("{field}.burst"), format!("must be between 1 and {MAX_REQUESTS}")));
    }
    Ok(Limit { requests: raw.requests, period_seconds, burst })
}

/// `second`, `minute`, `hour`, `day`, or a whole number of seconds, minutes, hours or days
/// (`30s`, `5m`, `12h`, `7d`).
fn parse_period(text: &str) -> Result<u64, String> {
    let seconds = match text {
        "second" => 1,
        "minute" => 60,
        "hour" => 3_600,
        "day" => 86_400,
        _ => {
            let duration = parse_duration(text).map_err(|_| {
                format!("`{text}` is not a period: use second, minute, hour, day, or a number with s, m, h or d")
            })?;
            if duration.subsec_millis() != 0 {
                return Err("the period must be a whole number of seconds".to_string());
            }
            duration.as_secs()
        }
    };
    match seconds {
        0 => Err("the period must be at least one second".to_string()),
        seconds if seconds > MAX_PERIOD_SECONDS => Err("the period must be at most 366 days".to_string()),
        seconds => Ok(seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<RateLimitConfig, ConfigError> {
        RateLimitConfig::parse(value.to_string().as_bytes())
    }

    fn one_rule(rule: serde_json::Value) -> serde_json::Value {
        json!({"rules": [rule]})
    }

    fn minimal_rule() -> serde_json::Value {
        json!({"name": "per-ip", "key": ["client_ip"], "limit": {"requests": 10, "per": "second"}})
    }

    #[test]
    fn a_minimal_rule_gets_the_documented_defaults() {
        let config = parse(one_rule(minimal_rule())).unwrap();
        assert_eq!(config.consumer_header, "x-gateway-consumer");
        assert_eq!(config.groups, DEFAULT_CAPACITY / WAYS as u32);
        assert_eq!(config.failure_policy, FailurePolicy::FailOpen);
        assert!(!config.legacy_headers);
        assert!(!config.access_log_fields);
        let rule = &config.rules[0];
        let limit = Limit { requests: 10, period_seconds: 1, burst: 10 };
        assert_eq!(rule.scope, Scope::Local { limit });
        assert_eq!(rule.failure_policy, FailurePolicy::FailOpen);
        assert_eq!(config.rate_limit_service, None);
        assert_eq!(rule.matcher, Match::default());
        assert!(!rule.shadow);
        assert!(rule.headers);
    }

    #[test]
    fn every_field_is_read() {
        let config = parse(json!({
            "consumer_header": "X-Consumer",
            "capacity": 100,
            "failure_policy": "fail_closed",
            "legacy_headers": true,
            "access_log_fields": true,
            "rules": [{
                "name": "orders_Writes-1",
                "match": {
                    "path": {"template": "/orders/{id}"},
                    "methods": ["post", "PUT"],
                    "route": "orders",
                    "headers": [{"name": "X-Plan", "equals": "free"}, {"name": "x-debug", "present": false}]
                },
                "key": ["client_ip", "consumer", "path", "route", {"header": "X-Api-Key"}, {"fixed": "all"},
                        {"client_ip": {"v4_prefix_mask_len": 24}}],
                "limit": {"requests": 5, "per": "90s", "burst": 2},
                "shadow": true,
                "headers": false
            }]
        }))
        .unwrap();
        assert_eq!(config.consumer_header, "x-consumer");
        assert_eq!(config.groups, 13);
        assert_eq!(config.failure_policy, FailurePolicy::FailClosed);
        assert!(config.legacy_headers);
        assert!(config.access_log_fields);
        let rule = &config.rules[0];
        assert_eq!(rule.matcher.request.methods, ["POST", "PUT"]);
        assert_eq!(rule.matcher.request.route.as_deref(), Some("orders"));
        assert!(rule.matcher.request.path.as_ref().unwrap().matches("/orders/7"));
        assert_eq!(
            rule.matcher.headers,
            [
                HeaderMatch { name: "x-plan".into(), condition: HeaderCondition::Equals("free".into()) },
                HeaderMatch { name: "x-debug".into(), condition: HeaderCondition::Absent },
            ]
        );
        assert_eq!(
            rule.key,
            [
                KeyPart::ClientIp(ClientIpMask { v4_prefix_mask_len: 32, v6_prefix_mask_len: 64 }),
                KeyPart::Consumer,
                KeyPart::Path,
                KeyPart::Route,
                KeyPart::Header("x-api-key".into()),
                KeyPart::Fixed("all".into()),
                KeyPart::ClientIp(ClientIpMask { v4_prefix_mask_len: 24, v6_prefix_mask_len: 64 }),
            ]
        );
        let Scope::Local { limit, .. } = &rule.scope else { panic!("a local rule") };
        assert_eq!(*limit, Limit { requests: 5, period_seconds: 90, burst: 2 });
        assert_eq!(rule.failure_policy, FailurePolicy::FailClosed, "the filter's");
        assert!(rule.shadow);
        assert!(!rule.headers);
    }

    #[test]
    fn global_rules_name_the_service_and_keep_their_own_failure_policy() {
        let config = parse(json!({
            "failure_policy": "fail_closed",
            "rate_limit_service": {"cluster": "ratelimit", "domain": "gateway", "timeout": "150ms"},
            "rules": [
                {"name": "shared", "global": true, "key": ["consumer"]},
                {"name": "lenient", "global": true, "key": ["client_ip"], "failure_policy": "fail_open"},
            ]
        }))
        .unwrap();
        assert_eq!(
            config.rate_limit_service,
            Some(RateLimitService {
                cluster: "ratelimit".into(),
                domain: "gateway".into(),
                timeout: Duration::from_millis(150)
            })
        );
        assert_eq!(config.rules[0].scope, Scope::Global);
        assert_eq!(config.rules[0].failure_policy, FailurePolicy::FailClosed);
        assert_eq!(config.rules[1].failure_policy, FailurePolicy::FailOpen);
        let default_timeout = parse(json!({
            "rate_limit_service": {"cluster": "c", "domain": "d"},
            "rules": [{"name": "g", "global": true, "key": ["consumer"]}]
        }))
        .unwrap();
        assert_eq!(default_timeout.rate_limit_service.unwrap().timeout, Duration::from_millis(20), "Envoy's default");
    }

    #[test]
    fn bad_global_configs_name_the_field() {
        let service = json!({"cluster": "ratelimit", "domain": "gateway"});
        let global = json!({"name": "g", "global": true, "key": ["consumer"]});
        let cases = [
            (json!({"rules": [global.clone()]}), "rules[0].global", "needs `rate_limit_service`"),
            (
                json!({"rate_limit_service": service, "rules": [{"name": "g", "global": true, "key": ["consumer"], "limit": {"requests": 1, "per": "second"}}]}),
                "rules[0].limit",
                "limits file",
            ),
            (
                json!({"rate_limit_service": service, "rules": [{"name": "g", "global": true, "key": ["consumer"], "shadow": true}]}),
                "rules[0].shadow",
                "local rules only",
            ),
            (json!({"rules": [{"name": "l", "key": ["consumer"]}]}), "rules[0].limit", "needs a limit"),
            (
                json!({"rate_limit_service": {"cluster": "", "domain": "d"}, "rules": [global.clone()]}),
                "rate_limit_service.cluster",
                "cluster",
            ),
            (
                json!({"rate_limit_service": {"cluster": "c", "domain": ""}, "rules": [global.clone()]}),
                "rate_limit_service.domain",
                "empty",
            ),
            (
                json!({"rate_limit_service": {"cluster": "c", "domain": "d", "timeout": "0s"}, "rules": [global.clone()]}),
                "rate_limit_service.timeout",
                "more than 0",
            ),
            (
                json!({"rate_limit_service": {"cluster": "c", "domain": "d", "timeout": "soon"}, "rules": [global.clone()]}),
                "rate_limit_service.timeout",
                "",
            ),
            (
                json!({"rate_limit_service": {"cluster": "c", "domain": "d", "grpc": true}, "rules": [global.clone()]}),
                "rate_limit_service.grpc",
                "unknown field",
            ),
            (
                json!({"rate_limit_service": service, "rules": [{"name": "g", "global": true, "key": ["consumer"], "failure_policy": "maybe"}]}),
                "rules[0].failure_policy",
                "unknown variant",
            ),
        ];
        for (config, field, message) in cases {
            let error = parse(config.clone()).unwrap_err();
            assert_eq!(error.field, field, "{config}: {error}");
            assert!(error.message.contains(message), "{config}: {error}");
        }
    }

    #[test]
    fn periods() {
        for (text, seconds) in [
            ("second", 1),
            ("minute", 60),
            ("hour", 3600),
            ("day", 86400),
            ("1s", 1),
            ("15m", 900),
            ("2h", 7200),
            ("7d", 604800),
        ] {
            assert_eq!(parse_period(text), Ok(seconds), "{text}");
        }
        for text in ["", "0s", "s", "1", "1w", "1.5s", "-1s", "seconds", "367d", "99999999999999999999s", "1500ms"] {
            assert!(parse_period(text).is_err(), "{text}");
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        let with = |patch: serde_json::Value| {
            let mut rule = minimal_rule();
            for (key, value) in patch.as_object().unwrap() {
                rule[key] = value.clone();
            }
            one_rule(rule)
        };
        let cases = [
            (json!({"rules": []}), "rules", "at least one rule"),
            (json!({}), ".", "missing field `rules`"),
            (json!({"capacity": 0, "rules": [minimal_rule()]}), "capacity", "between 1"),
            (json!({"failure_policy": "maybe", "rules": [minimal_rule()]}), "failure_policy", "unknown variant"),
            (json!({"rules": [minimal_rule()], "extra": 1}), "extra", "unknown field"),
            (json!({"rules": [minimal_rule(), minimal_rule()]}), "rules[1].name", "names another rule"),
            (with(json!({"name": "a.b"})), "rules[0].name", "is not"),
            (with(json!({"name": ""})), "rules[0].name", "is not"),
            (with(json!({"key": []})), "rules[0].key", "at least one part"),
            (with(json!({"key": ["ip"]})), "rules[0].key[0]", "`ip` is not a key part"),
            (
                with(json!({"key": [{"client_ip": {"v6_prefix_mask_len": 129}}]})),
                "rules[0].key[0].client_ip.v6_prefix_mask_len",
                "0 to 128",
            ),
            (
                with(json!({"key": [{"client_ip": {"v4_prefix_mask_len": 33}}]})),
                "rules[0].key[0].client_ip.v4_prefix_mask_len",
                "0 to 32",
            ),
            (with(json!({"key": [{"client_ip": {"v4": 24}}]})), "rules[0].key[0].client_ip", "unknown field `v4`"),
            (with(json!({"key": [{"header": 7}]})), "rules[0].key[0].header", "must be a string"),
            (with(json!({"key": [{"header": "a", "fixed": "b"}]})), "rules[0].key[0]", "is not a key part"),
            (with(json!({"key": [{"header": "bad header"}]})), "rules[0].key[0].header", "not an HTTP header name"),
            (with(json!({"limit": {"requests": 0, "per": "second"}})), "rules[0].limit.requests", "between 1"),
            (with(json!({"limit": {"requests": 1, "per": "0s"}})), "rules[0].limit.per", "at least one second"),
            (with(json!({"limit": {"requests": 1, "per": "fortnight"}})), "rules[0].limit.per", "is not a period"),
            (with(json!({"limit": {"requests": 1, "per": "second", "burst": 0}})), "rules[0].limit.burst", "between 1"),
            (
                with(json!({"limit": {"requests": 1, "per": "second", "brust": 2}})),
                "rules[0].limit.brust",
                "unknown field",
            ),
            (with(json!({"match": {"methods": ["G ET"]}})), "rules[0].match.methods[0]", "not a method"),
            (with(json!({"match": {"path": {"template": "/a/{"}}})), "rules[0].match.path.template", "parameter"),
            (with(json!({"match": {"headers": [{"name": "x"}]}})), "rules[0].match.headers[0]", "exactly one"),
            (
                with(json!({"match": {"headers": [{"name": "x", "present": true, "equals": "y"}]}})),
                "rules[0].match.headers[0]",
                "exactly one",
            ),
        ];
        for (config, field, message) in cases {
            let error = parse(config.clone()).unwrap_err();
            assert_eq!(error.field, field, "{config}: {error}");
            assert!(error.message.contains(message), "{config}: {error}");
        }
    }
}
