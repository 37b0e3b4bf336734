//! `gateway.wasm`: the bundle. One Envoy filter that runs the configured stages in the order
//! of the documented chain (metrics, auth, ratelimit, aggregate) in one context, so a request
//! pays one VM context and one set of callbacks instead of four, every request fact is read
//! once for all stages, and the consumer that auth establishes reaches metrics and ratelimit
//! without a header read. Each section of its configuration is exactly the configuration of
//! the separate filter of that name, and runs the same code.

use gateway_common::host::Host;
use gateway_common::stage::{Stage, StageBuilder};
use serde::Deserialize;
use serde_json::Value;

gateway_host::module!("gateway", stages);

/// The bundle's configuration: one optional section per filter.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(extend("minProperties" = 1)))]
#[serde(deny_unknown_fields)]
struct BundleConfig {
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "section_schema::metrics"))]
    metrics: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "section_schema::auth"))]
    auth: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "section_schema::ratelimit"))]
    ratelimit: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "section_schema::aggregate"))]
    aggregate: Option<Value>,
}

/// The JSON Schema of the bundle's configuration (`schemas/` holds it, generated).
#[cfg(feature = "schema")]
pub fn schema() -> schemars::Schema {
    let mut schema = schemars::schema_for!(BundleConfig);
    schema.insert("title".into(), "gateway.wasm (bundle) configuration".into());
    schema
}

/// Each section's schema is its filter's, embedded as a resource of its own (`$id`), so the
/// references inside it resolve within it.
#[cfg(feature = "schema")]
mod section_schema {
    use schemars::{Schema, SchemaGenerator};

    fn embedded(mut schema: Schema, id: &str) -> Schema {
        schema.remove("$schema");
        schema.insert("$id".into(), id.into());
        schema
    }

    pub fn metrics(_: &mut SchemaGenerator) -> Schema {
        embedded(metrics_filter::config::schema(), "metrics.schema.json")
    }

    pub fn auth(_: &mut SchemaGenerator) -> Schema {
        embedded(auth_filter::config::schema(), "auth.schema.json")
    }

    pub fn ratelimit(_: &mut SchemaGenerator) -> Schema {
        embedded(ratelimit_filter::config::schema(), "ratelimit.schema.json")
    }

    pub fn aggregate(_: &mut SchemaGenerator) -> Schema {
        embedded(aggregate_filter::config::schema(), "aggregate.schema.json")
    }
}

/// The stages the configuration names, in chain order; an error names the section and field.
pub fn stages(configuration: &[u8], host: &dyn Host) -> Result<Vec<Box<dyn Stage>>, String> {
    let config: BundleConfig = if configuration.iter().all(u8::is_ascii_whitespace) {
        BundleConfig::default()
    } else {
        serde_json::from_slice(configuration).map_err(|error| format!("invalid configuration: {error}"))?
    };
    let sections: [(&str, Option<Value>, StageBuilder); 4] = [
        ("metrics", config.metrics, metrics_filter::stage::build),
        ("auth", config.auth, auth_filter::stage::build),
        ("ratelimit", config.ratelimit, ratelimit_filter::stage::build),
        ("aggregate", config.aggregate, aggregate_filter::stage::build),
    ];
    let mut stages = Vec::new();
    for (name, section, build) in sections {
        let Some(section) = section else { continue };
        let stage = build(section.to_string().as_bytes(), host).map_err(|error| format!("{name}: {error}"))?;
        stages.push(stage);
    }
    if stages.is_empty() {
        return Err(
            "the configuration names no stage: give at least one of `metrics`, `auth`, `ratelimit`, `aggregate`".into(),
        );
    }
    Ok(stages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::host::HeaderMap;
    use gateway_common::request::{Request, RequestMemo};
    use gateway_common::stage::Flow;
    use gateway_common::testing::FakeHost;

    fn error(configuration: &str) -> String {
        match stages(configuration.as_bytes(), &FakeHost::default()) {
            Ok(_) => panic!("{configuration} was accepted"),
            Err(error) => error,
        }
    }

    #[test]
    fn sections_are_the_separate_filters_configurations() {
        let host = FakeHost::default();
        let rule = r#"{"name": "per-ip", "key": ["client_ip"], "limit": {"requests": 5, "per": "second"}}"#;
        let config = format!(r#"{{"metrics": {{}}, "ratelimit": {{"rules": [{rule}]}}}}"#);
        assert_eq!(stages(config.as_bytes(), &host).unwrap().len(), 2);
        assert!(
            error(r#"{"aggregate": {"endpoints": []}}"#).starts_with("aggregate: invalid configuration at `endpoints`")
        );
        assert!(error(r#"{"metrics": {"labels": 1}}"#).starts_with("metrics: invalid configuration at `labels`"));
        assert!(error(r#"{"ratelimit": {"rules": [{"name": "a"}]}}"#).starts_with("ratelimit: "));
    }

    #[test]
    fn the_consumer_reaches_the_later_stages_without_a_header_read() {
        let digest = "70b76273e483b572d0434e1b7e43ea0a7f7e737bc7bb33b2eb382fe59976c72d"; // SHA-256 of `key-ada`
        let config = format!(
            r#"{{"auth": {{"api_keys": {{"keys": {{"{digest}": "ada"}}}}, "rules": [{{"requires": {{"api_key": {{}}}}}}]}},
                "ratelimit": {{"rules": [{{"name": "per-consumer", "key": ["consumer"], "limit": {{"requests": 1, "per": "minute"}}}}]}}}}"#
        );
        let host = FakeHost::default().with_clock_millis(1_764_000_000_000);
        let stages = stages(config.as_bytes(), &host).unwrap();
        let run = || -> Vec<Flow> {
            host.clear_headers();
            host.put_header(HeaderMap::Request, "x-api-key", "key-ada");
            host.put_header(HeaderMap::Request, "x-gateway-consumer", "mallory");
            let mut memo = RequestMemo::default();
            let mut streams: Vec<_> = stages.iter().map(|stage| stage.new_stream()).collect();
            streams.iter_mut().map(|stream| stream.on_request_headers(&mut Request::new(&host, &mut memo), 1)).collect()
        };
        assert_eq!(run(), [Flow::Continue, Flow::Continue]);
        assert_eq!(host.request_header("x-gateway-consumer").as_deref(), Some("ada"), "the upstream gets the identity");
        assert_eq!(host.calls_named("header"), 1, "only the API key is read: ratelimit takes the consumer auth set");
        // Ratelimit keyed the request on ada, not on the client's claim: her second is over.
        assert_eq!(run(), [Flow::Continue, Flow::Pause]);
        assert_eq!(host.replies.borrow().last().map(|reply| reply.status), Some(429));
    }

    #[test]
    fn unknown_sections_and_an_empty_bundle_are_refused() {
        assert!(error(r#"{"metric": {}}"#).contains("unknown field `metric`"));
        assert!(error("").contains("names no stage"));
        assert!(error("{}").contains("names no stage"));
        assert!(error("[").starts_with("invalid configuration"));
    }
}
