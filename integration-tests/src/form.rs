//! Which form of the filters a test run loads: the four separate modules (the default), or the
//! bundle `gateway.wasm` (`GATEWAY_FORM=bundle`). In the bundle form every Envoy config a test
//! starts, rendered or shipped, is rewritten before Envoy reads it: each run of consecutive
//! filters among metrics, auth, ratelimit and aggregate becomes ONE bundle filter whose
//! configuration has their configurations as sections. A filter named otherwise than its
//! module (a second instance, `public` or `internal`) stays its own bundle under its own name,
//! so it keeps its own shared data and `plugin` label in both forms. The tests stay the same,
//! so both forms must behave the same.

use crate::paths;
use serde_json::{json, Map, Value};

/// The modules the bundle replaces, by the name of their `.wasm` file.
const BUNDLED: [&str; 4] = ["metrics", "auth", "ratelimit", "aggregate"];

pub fn bundle() -> bool {
    std::env::var("GATEWAY_FORM").is_ok_and(|form| form == "bundle")
}

/// `config` (YAML or JSON) as this run's form needs it.
pub fn apply(config: &str) -> String {
    if !bundle() {
        return config.to_string();
    }
    let mut value: Value = serde_norway::from_str(config).unwrap_or_else(|e| panic!("config is not YAML: {e}"));
    merge_chains(&mut value);
    value.to_string()
}

fn merge_chains(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "http_filters" {
                    if let Value::Array(filters) = child {
                        *filters = merged(std::mem::take(filters));
                    }
                }
                merge_chains(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(merge_chains),
        _ => {}
    }
}

/// The bundled module a filter entry loads, if it loads one.
fn bundled_module(filter: &Value) -> Option<&'static str> {
    let config = &filter["typed_config"]["config"];
    let filename = config["vm_config"]["code"]["local"]["filename"].as_str()?;
    let file = filename.rsplit('/').next()?;
    BUNDLED.into_iter().find(|module| file == format!("{module}.wasm"))
}

/// A filter whose plugin name is not its module's: another instance, kept apart.
fn renamed(filter: &Value) -> bool {
    let name = filter["typed_config"]["config"]["name"].as_str();
    bundled_module(filter).is_some_and(|module| name.is_some_and(|name| name != module))
}

fn merged(filters: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut run: Option<(Value, Map<String, Value>)> = None;
    for filter in filters {
        match bundled_module(&filter) {
            Some(module) => {
                let joins = run.as_ref().is_some_and(|(first, sections)| {
                    !renamed(&filter) && !renamed(first) && !sections.contains_key(module)
                });
                if !joins {
                    out.extend(run.take().map(bundle_filter));
                }
                let section: Value = filter["typed_config"]["config"]["configuration"]["value"]
                    .as_str()
                    .map(|text| serde_json::from_str(if text.trim().is_empty() { "{}" } else { text }).unwrap())
                    .unwrap_or_else(|| json!({}));
                let (_, sections) = run.get_or_insert_with(|| (filter.clone(), Map::new()));
                assert!(sections.insert(module.to_string(), section).is_none(), "two {module} filters in one run");
            }
            None => {
                out.extend(run.take().map(bundle_filter));
                out.push(filter);
            }
        }
    }
    out.extend(run.take().map(bundle_filter));
    out
}

/// One bundle filter in place of the run that started with `first`.
fn bundle_filter((mut first, sections): (Value, Map<String, Value>)) -> Value {
    let config = &mut first["typed_config"]["config"];
    let name = match config["name"].as_str() {
        Some(name) if !BUNDLED.contains(&name) => name.to_string(),
        _ => "gateway".to_string(),
    };
    first["name"] = json!(name);
    let config = &mut first["typed_config"]["config"];
    config["name"] = json!(name);
    config["root_id"] = json!(name);
    config["vm_config"]["code"]["local"]["filename"] = json!(paths::wasm_module("gateway").display().to_string());
    config["configuration"]["value"] = json!(Value::Object(sections).to_string());
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_filters_become_one_bundle_and_others_stay() {
        let wasm = |module: &str, config: &str| {
            json!({"name": module, "typed_config": {"config": {
                "vm_config": {"code": {"local": {"filename": format!("/x/{module}.wasm")}}},
                "configuration": {"value": config}
            }}})
        };
        let chain = vec![
            wasm("metrics", "{}"),
            wasm("auth", r#"{"realm": "r"}"#),
            json!({"name": "envoy.filters.http.cors"}),
            wasm("ratelimit", "{\"rules\": []}"),
            wasm("noop", "{}"),
        ];
        let merged = merged(chain);
        assert_eq!(merged.len(), 4);
        assert_eq!(merged[0]["name"], "gateway");
        let sections: Value =
            serde_json::from_str(merged[0]["typed_config"]["config"]["configuration"]["value"].as_str().unwrap())
                .unwrap();
        assert_eq!(sections, json!({"metrics": {}, "auth": {"realm": "r"}}));
        assert_eq!(merged[1]["name"], "envoy.filters.http.cors");
        assert_eq!(merged[2]["name"], "gateway");
        assert_eq!(merged[3]["name"], "noop");
    }

    #[test]
    fn another_instance_stays_its_own_bundle_under_its_name() {
        let wasm = |module: &str, name: &str| {
            json!({"name": name, "typed_config": {"config": {
                "name": name,
                "vm_config": {"code": {"local": {"filename": format!("/x/{module}.wasm")}}},
                "configuration": {"value": "{}"}
            }}})
        };
        let merged = merged(vec![
            wasm("metrics", "metrics"),
            wasm("ratelimit", "public"),
            wasm("ratelimit", "internal"),
            wasm("ratelimit", "ratelimit"),
        ]);
        let names: Vec<&str> =
            merged.iter().map(|filter| filter["typed_config"]["config"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["gateway", "public", "internal", "gateway"]);
    }
}
