//! The metrics filter's configuration: JSON in Envoy's `configuration` field, compiled once
//! into [`MetricsConfig`].

use crate::labels::OVERFLOW_VALUE;
use gateway_common::config::{header_name, parse_json, ConfigError};
use gateway_common::label_value::is_label_value;
use gateway_common::CONSUMER_HEADER;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};

pub const DEFAULT_MAX_VALUES: u32 = 100;
/// Each label's admitted values live in one shared-data value that a worker re-reads when it
/// meets a value it has not seen; the ceiling keeps that read small.
pub const MAX_VALUES_CEILING: u32 = 10_000;

/// The JSON Schema of this filter's configuration (`schemas/` holds it, generated).
#[cfg(feature = "schema")]
pub fn schema() -> schemars::Schema {
    let mut schema = schemars::schema_for!(RawConfig);
    schema.insert("title".into(), "metrics filter configuration".into());
    schema
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_consumer_header")]
    consumer_header: String,
    #[serde(default = "default_max_values")]
    default_max_values: u32,
    #[serde(default)]
    max_values: BTreeMap<String, u32>,
    #[serde(default)]
    extra_labels: Vec<RawExtraLabel>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawExtraLabel {
    name: String,
    header: String,
    #[serde(default)]
    allowed_values: Option<Vec<String>>,
    #[serde(default = "default_missing_value")]
    missing_value: String,
}

fn default_consumer_header() -> String {
    CONSUMER_HEADER.to_string()
}

fn default_max_values() -> u32 {
    DEFAULT_MAX_VALUES
}

fn default_missing_value() -> String {
    "none".to_string()
}

/// Where a label's value comes from on each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelSource {
    /// Envoy's route name (`xds.route_name`).
    Route,
    /// The upstream cluster (`xds.cluster_name`).
    Upstream,
    Method,
    /// The response status, local replies included.
    Code,
    /// The consumer identity header set by the auth filter.
    Consumer,
    /// A request header (lower-case name).
    Header(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSpec {
    pub name: String,
    pub source: LabelSource,
    /// Distinct values admitted across all workers before the rest become `other`.
    pub max_values: u32,
    /// When set, only these values are admitted; anything else is `other`.
    pub allowed_values: Option<HashSet<String>>,
    /// Used when the request does not carry the value at all.
    pub missing_value: String,
}

/// The compiled, immutable configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Lower-case name of the consumer identity header.
    pub consumer_header: String,
    /// Labels of `gateway_requests_total`, in the order they appear in the stat name.
    pub labels: Vec<LabelSpec>,
}

/// Built-in labels: name, source, value used when the request has none.
const BUILT_IN: [(&str, LabelSource, &str); 5] = [
    ("route", LabelSource::Route, "none"),
    ("upstream", LabelSource::Upstream, "none"),
    ("method", LabelSource::Method, "none"),
    // 0 is what Envoy's access log prints for a stream that ended without a response.
    ("code", LabelSource::Code, "0"),
    ("consumer", LabelSource::Consumer, "anonymous"),
];

/// Label names that cannot be used for extra labels: Prometheus' own, and the overflow
/// counter's.
const RESERVED_LABELS: [&str; 2] = ["le", "label"];

impl MetricsConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        compile(parse_json(bytes)?)
    }
}

fn compile(raw: RawConfig) -> Result<MetricsConfig, ConfigError> {
    let consumer_header = header_name(&raw.consumer_header, "consumer_header")?;
    check_max_values(raw.default_max_values, "default_max_values")?;

    let mut labels: Vec<LabelSpec> = BUILT_IN
        .iter()
        .map(|(name, source, missing)| LabelSpec {
            name: (*name).to_string(),
            source: source.clone(),
            max_values: raw.default_max_values,
            allowed_values: None,
            missing_value: (*missing).to_string(),
        })
        .collect();

    for (index, extra) in raw.extra_labels.into_iter().enumerate() {
        let field = |name: &str| format!("extra_labels[{index}].{name}");
        if !is_label_name(&extra.name) {
            return Err(ConfigError::field(
                field("name"),
                format!("`{}` is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)", extra.name),
            ));
        }
        if RESERVED_LABELS.contains(&extra.name.as_str()) || labels.iter().any(|label| label.name == extra.name) {
            return Err(ConfigError::field(field("name"), format!("label `{}` is already defined", extra.name)));
        }
        let header = header_name(&extra.header, &field("header"))?;
        check_value(&extra.missing_value, &field("missing_value"))?;
        let allowed_values = match extra.allowed_values {
            None => None,
            Some(values) => {
                if values.is_empty() {
                    return Err(ConfigError::field(field("allowed_values"), "must list at least one value"));
                }
                for (value_index, value) in values.iter().enumerate() {
                    check_value(value, &format!("extra_labels[{index}].allowed_values[{value_index}]"))?;
                }
                Some(values.into_iter().collect())
            }
        };
        labels.push(LabelSpec {
            name: extra.name,
            source: LabelSource::Header(header),
            max_values: raw.default_max_values,
            allowed_values,
            missing_value: extra.missing_value,
        });
    }

    for (name, max_values) in raw.max_values {
        let field = format!("max_values.{name}");
        check_max_values(max_values, &field)?;
        match labels.iter_mut().find(|label| label.name == name) {
            Some(label) => label.max_values = max_values,
            None => return Err(ConfigError::field(field, format!("no label is named `{name}`"))),
        }
    }

    Ok(MetricsConfig { consumer_header, labels })
}

fn check_max_values(value: u32, field: &str) -> Result<(), ConfigError> {
    if (1..=MAX_VALUES_CEILING).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::field(field, format!("must be between 1 and {MAX_VALUES_CEILING}, got {value}")))
    }
}

fn check_value(value: &str, field: &str) -> Result<(), ConfigError> {
    if value == OVERFLOW_VALUE {
        return Err(ConfigError::field(field, format!("`{OVERFLOW_VALUE}` is reserved for values over the cap")));
    }
    if is_label_value(value) {
        Ok(())
    } else {
        Err(ConfigError::field(field, format!("`{value}` must be 1 to 64 characters of [A-Za-z0-9_-]")))
    }
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'));
    first_ok && !name.starts_with("__") && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    impl MetricsConfig {
        fn label(&self, name: &str) -> Option<&LabelSpec> {
            self.labels.iter().find(|label| label.name == name)
        }
    }

    fn error_of(json: &str) -> ConfigError {
        MetricsConfig::parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn defaults_give_the_five_built_in_labels_in_stat_name_order() {
        let config = MetricsConfig::parse(b"").unwrap();
        assert_eq!(config.consumer_header, "x-gateway-consumer");
        let names: Vec<_> = config.labels.iter().map(|label| label.name.as_str()).collect();
        assert_eq!(names, ["route", "upstream", "method", "code", "consumer"]);
        assert!(config.labels.iter().all(|label| label.max_values == DEFAULT_MAX_VALUES));
        assert_eq!(config.label("consumer").unwrap().missing_value, "anonymous");
        assert_eq!(config.label("code").unwrap().missing_value, "0");
    }

    #[test]
    fn full_configuration_compiles() {
        let config = MetricsConfig::parse(
            br#"{
                "consumer_header": "X-Consumer",
                "default_max_values": 50,
                "max_values": {"consumer": 3, "tenant": 7},
                "extra_labels": [
                    {"name": "tenant", "header": "X-Tenant", "missing_value": "unknown"},
                    {"name": "plan", "header": "x-plan", "allowed_values": ["free", "pro"]}
                ]
            }"#,
        )
        .unwrap();
        assert_eq!(config.consumer_header, "x-consumer");
        assert_eq!(config.label("route").unwrap().max_values, 50);
        assert_eq!(config.label("consumer").unwrap().max_values, 3);
        let tenant = config.label("tenant").unwrap();
        assert_eq!(tenant.source, LabelSource::Header("x-tenant".into()));
        assert_eq!(tenant.max_values, 7);
        assert_eq!(tenant.missing_value, "unknown");
        let plan = config.label("plan").unwrap();
        assert_eq!(plan.missing_value, "none");
        assert_eq!(plan.allowed_values, Some(["free".to_string(), "pro".to_string()].into_iter().collect()));
    }

    #[test]
    fn unknown_fields_are_named() {
        assert_eq!(error_of(r#"{"consumer_heder": "x"}"#).field, "consumer_heder");
        assert_eq!(
            error_of(r#"{"extra_labels": [{"name": "a", "header": "b", "max": 1}]}"#).field,
            "extra_labels[0].max"
        );
    }

    #[test]
    fn wrong_types_are_named() {
        let error = error_of(r#"{"default_max_values": "many"}"#);
        assert_eq!(error.field, "default_max_values");
        assert!(error.message.contains("invalid type"));
        assert_eq!(error_of(r#"{"max_values": {"consumer": -1}}"#).field, "max_values.consumer");
        assert_eq!(error_of(r#"{"extra_labels": [{"name": "a"}]}"#).field, "extra_labels[0]");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            (r#"{"consumer_header": "bad header"}"#, "consumer_header"),
            (r#"{"consumer_header": ""}"#, "consumer_header"),
            (r#"{"default_max_values": 0}"#, "default_max_values"),
            (r#"{"default_max_values": 10001}"#, "default_max_values"),
            (r#"{"max_values": {"colour": 3}}"#, "max_values.colour"),
            (r#"{"max_values": {"route": 0}}"#, "max_values.route"),
            (r#"{"extra_labels": [{"name": "1st", "header": "x"}]}"#, "extra_labels[0].name"),
            (r#"{"extra_labels": [{"name": "__x", "header": "x"}]}"#, "extra_labels[0].name"),
            (r#"{"extra_labels": [{"name": "route", "header": "x"}]}"#, "extra_labels[0].name"),
            (r#"{"extra_labels": [{"name": "le", "header": "x"}]}"#, "extra_labels[0].name"),
            (
                r#"{"extra_labels": [{"name": "a", "header": "x"}, {"name": "a", "header": "y"}]}"#,
                "extra_labels[1].name",
            ),
            (r#"{"extra_labels": [{"name": "a", "header": "x:y"}]}"#, "extra_labels[0].header"),
            (
                r#"{"extra_labels": [{"name": "a", "header": "x", "allowed_values": []}]}"#,
                "extra_labels[0].allowed_values",
            ),
            (
                r#"{"extra_labels": [{"name": "a", "header": "x", "allowed_values": ["ok", "a.b"]}]}"#,
                "extra_labels[0].allowed_values[1]",
            ),
            (
                r#"{"extra_labels": [{"name": "a", "header": "x", "allowed_values": ["other"]}]}"#,
                "extra_labels[0].allowed_values[0]",
            ),
            (
                r#"{"extra_labels": [{"name": "a", "header": "x", "missing_value": ""}]}"#,
                "extra_labels[0].missing_value",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(error_of(json).field, field, "{json}");
        }
    }
}
