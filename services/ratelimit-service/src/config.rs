//! The limits file: YAML in the layout of `envoyproxy/ratelimit` (one document per domain, a
//! tree of descriptors), so the same file serves either service. One addition: `burst`.
//!
//! ```yaml
//! domain: gateway
//! descriptors:
//!   - key: rule
//!     value: per-consumer
//!     descriptors:
//!       - key: consumer              # no value: each consumer has its own counter
//!         rate_limit: {unit: minute, requests_per_unit: 100, burst: 20}
//! ```
//!
//! A request's descriptor `[(k1, v1), (k2, v2), ...]` walks the tree one entry per level: at
//! each level the node with that key and value, else the node with that key and no value. The
//! limit is the one on the node reached by the last entry; anything else has no limit.

use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;

/// The longest time a full burst may take to refill (ten years): Redis's Lua counts in doubles,
/// so a bucket's state (now + this, in microseconds) must stay well inside 2^53.
const MAX_REFILL_MICROS: u64 = 3_650 * 86_400 * 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: `<file> document N: descriptors[0].descriptors[1].rate_limit.unit`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    domain: String,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: String,
    value: Option<String>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    unit: String,
    requests_per_unit: u32,
    burst: Option<u32>,
}

/// How a rate limit unit is spelled in the protocol (`RateLimitResponse.RateLimit.Unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
        }
    }

    fn parse(text: &str) -> Option<Unit> {
        match text.to_ascii_lowercase().as_str() {
            "second" => Some(Unit::Second),
            "minute" => Some(Unit::Minute),
            "hour" => Some(Unit::Hour),
            "day" => Some(Unit::Day),
            _ => None,
        }
    }
}

/// One configured limit: GCRA with `requests_per_unit` per `unit` and `burst` at once, the
/// same algorithm as the ratelimit filter's local rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub burst: u32,
}

impl Limit {
    /// The emission interval in whole microseconds, rounded up (exact whenever the unit divides
    /// evenly, as 100 per minute does; otherwise under a microsecond slower than asked).
    pub fn interval_micros(&self) -> u64 {
        (self.unit.seconds() * 1_000_000).div_ceil(u64::from(self.requests_per_unit))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    limit: Option<Limit>,
    /// The next level, by entry key (looked up by `&str`: no allocation per request).
    children: HashMap<String, Children>,
}

/// The nodes under one entry key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Children {
    by_value: HashMap<String, Node>,
    /// The node for any other value.
    any_value: Option<Node>,
}

/// Every domain's descriptor tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    domains: HashMap<String, Node>,
}

impl Limits {
    /// Parses one file holding one YAML document per domain.
    pub fn parse(text: &str, file: &str) -> Result<Limits, ConfigError> {
        let mut limits = Limits::default();
        for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
            let at = |field: &str| {
                format!("{file} document {}{}{field}", index + 1, if field.is_empty() { "" } else { ": " })
            };
            let raw = RawDomain::deserialize(document)
                .map_err(|error| ConfigError { field: at(""), message: error.to_string() })?;
            if raw.domain.is_empty() {
                return Err(ConfigError { field: at("domain"), message: "must not be empty".into() });
            }
            if limits.domains.contains_key(&raw.domain) {
                return Err(ConfigError {
                    field: at("domain"),
                    message: format!("`{}` is configured by an earlier document too", raw.domain),
                });
            }
            let mut root = Node::default();
            compile_level(&mut root, raw.descriptors, "descriptors", &at)?;
            limits.domains.insert(raw.domain, root);
        }
        Ok(limits)
    }

    /// The limit for one descriptor of `domain`, if any.
    pub fn find(&self, domain: &str, entries: &[(String, String)]) -> Option<Limit> {
        let mut node = self.domains.get(domain)?;
        for (key, value) in entries {
            let children = node.children.get(key)?;
            node = children.by_value.get(value).or(children.any_value.as_ref())?;
        }
        node.limit
    }

    /// The configured domains, sorted.
    pub fn domains(&self) -> Vec<&str> {
        let mut domains: Vec<&str> = self.domains.keys().map(String::as_str).collect();
        domains.sort_unstable();
        domains
    }
}

fn compile_level(
    parent: &mut Node,
    descriptors: Vec<RawDescriptor>,
    field: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    for (index, raw) in descriptors.into_iter().enumerate() {
        let field = format!("{field}[{index}]");
        if raw.key.is_empty() {
            return Err(ConfigError { field: at(&format!("{field}.key")), message: "must not be empty".into() });
        }
        let mut node = Node::default();
        if let Some(rate_limit) = raw.rate_limit {
            node.limit = Some(compile_limit(&rate_limit, &format!("{field}.rate_limit"), at)?);
        }
        compile_level(&mut node, raw.descriptors, &format!("{field}.descriptors"), at)?;
        let children = parent.children.entry(raw.key.clone()).or_default();
        let taken = match &raw.value {
            Some(value) => children.by_value.insert(value.clone(), node).is_some(),
            None => children.any_value.replace(node).is_some(),
        };
        if taken {
            let key = &raw.key;
            let what = raw.value.map_or(format!("key `{key}` without a value"), |value| format!("`{key}: {value}`"));
            return Err(ConfigError { field: at(&field), message: format!("{what} appears twice at this level") });
        }
    }
    Ok(())
}

fn compile_limit(raw: &RawRateLimit, field: &str, at: &dyn Fn(&str) -> String) -> Result<Limit, ConfigError> {
    let unit = Unit::parse(&raw.unit).ok_or_else(|| ConfigError {
        field: at(&format!("{field}.unit")),
        message: format!("`{}` is not a unit: use second, minute, hour or day", raw.unit),
    })?;
    if raw.requests_per_unit == 0 {
        return Err(ConfigError {
            field: at(&format!("{field}.requests_per_unit")),
            message: "must be at least 1".into(),
        });
    }
    let burst = raw.burst.unwrap_or(raw.requests_per_unit);
    if burst == 0 {
        return Err(ConfigError { field: at(&format!("{field}.burst")), message: "must be at least 1".into() });
    }
    let limit = Limit { requests_per_unit: raw.requests_per_unit, unit, burst };
    if u64::from(raw.requests_per_unit) > unit.seconds() * 1_000_000 {
        return Err(ConfigError {
            field: at(&format!("{field}.requests_per_unit")),
            message: "more than one request per microsecond cannot be counted".into(),
        });
    }
    if limit.interval_micros().saturating_mul(u64::from(burst)) > MAX_REFILL_MICROS {
        return Err(ConfigError {
            field: at(&format!("{field}.burst")),
            message: "a full burst would take more than ten years to refill".into(),
        });
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
domain: gateway
descriptors:
  - key: rule
    value: per-consumer
    descriptors:
      - key: consumer
        value: vip
        rate_limit: {unit: second, requests_per_unit: 1000}
      - key: consumer
        rate_limit: {unit: minute, requests_per_unit: 100, burst: 20}
  - key: rule
    value: everyone
    rate_limit: {unit: HOUR, requests_per_unit: 7}
---
domain: other
descriptors:
  - key: generic_key
    rate_limit: {unit: day, requests_per_unit: 1}
";

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    #[test]
    fn descriptors_walk_the_tree_preferring_an_exact_value() {
        let limits = Limits::parse(FILE, "limits.yaml").unwrap();
        assert_eq!(limits.domains(), ["gateway", "other"]);
        let per_consumer =
            |consumer| limits.find("gateway", &entries(&[("rule", "per-consumer"), ("consumer", consumer)]));
        assert_eq!(per_consumer("ada"), Some(Limit { requests_per_unit: 100, unit: Unit::Minute, burst: 20 }));
        assert_eq!(per_consumer("vip"), Some(Limit { requests_per_unit: 1000, unit: Unit::Second, burst: 1000 }));
        assert_eq!(
            limits.find("gateway", &entries(&[("rule", "everyone")])),
            Some(Limit { requests_per_unit: 7, unit: Unit::Hour, burst: 7 })
        );
        assert_eq!(limits.find("gateway", &entries(&[("rule", "per-consumer")])), None, "no limit on the inner node");
        assert_eq!(limits.find("gateway", &entries(&[("rule", "everyone"), ("extra", "x")])), None, "too deep");
        assert_eq!(limits.find("gateway", &entries(&[("rule", "unknown")])), None);
        assert_eq!(limits.find("nowhere", &entries(&[("rule", "everyone")])), None);
        assert!(limits.find("other", &entries(&[("generic_key", "anything")])).is_some());
    }

    #[test]
    fn intervals_are_whole_microseconds_rounded_up() {
        let limit = |requests_per_unit, unit| Limit { requests_per_unit, unit, burst: 1 };
        assert_eq!(limit(100, Unit::Minute).interval_micros(), 600_000);
        assert_eq!(limit(3, Unit::Second).interval_micros(), 333_334);
        assert_eq!(limit(1_000_000, Unit::Second).interval_micros(), 1);
    }

    #[test]
    fn bad_files_name_the_document_and_field() {
        let cases = [
            (
                "domain: a\ndescriptors: [{key: k, rate_limit: {unit: week, requests_per_unit: 1}}]",
                "limits.yaml document 1: descriptors[0].rate_limit.unit",
                "not a unit",
            ),
            (
                "domain: a\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 0}}]",
                "limits.yaml document 1: descriptors[0].rate_limit.requests_per_unit",
                "at least 1",
            ),
            (
                "domain: a\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 5, burst: 0}}]",
                "limits.yaml document 1: descriptors[0].rate_limit.burst",
                "at least 1",
            ),
            (
                "domain: a\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 2000000}}]",
                "limits.yaml document 1: descriptors[0].rate_limit.requests_per_unit",
                "microsecond",
            ),
            ("domain: a\ndescriptors: [{key: k}, {key: k}]", "limits.yaml document 1: descriptors[1]", "appears twice"),
            (
                "domain: a\ndescriptors: [{key: k, descriptors: [{key: ''}]}]",
                "limits.yaml document 1: descriptors[0].descriptors[0].key",
                "empty",
            ),
            ("domain: ''", "limits.yaml document 1: domain", "empty"),
            ("domain: a\n---\ndomain: a", "limits.yaml document 2: domain", "earlier document"),
            ("domain: a\nshadow_mode: true", "limits.yaml document 1", "unknown field `shadow_mode`"),
            (
                "domain: a\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: -1}}]",
                "limits.yaml document 1",
                "requests_per_unit",
            ),
        ];
        for (text, field, message) in cases {
            let error = Limits::parse(text, "limits.yaml").unwrap_err();
            assert_eq!(error.field, field, "{text}: {error}");
            assert!(error.message.contains(message), "{text}: {error}");
        }
    }
}
