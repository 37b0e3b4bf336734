//! The configuration schemas under `schemas/`: current with the code, and every configuration
//! the project ships (`envoy/`, `examples/`) or documents (`docs/` JSON blocks) valid against
//! them, checked by an independent validator (the `jsonschema` crate, not the generator).

use integration_tests::paths;
use integration_tests::schemas::{committed_path, generated, reference, reference_path, render, MODULES};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator(module: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&read(&committed_path(module))).expect("a schema is JSON");
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schemas/{module}.schema.json: {e}"))
}

/// The validation errors of `config` against `module`'s committed schema, one per line.
fn errors(module: &str, config: &Value) -> Vec<String> {
    validator(module).iter_errors(config).map(|error| format!("{} at {}", error, error.instance_path())).collect()
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(paths::repo_root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}/: {e}"))
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every wasm filter configuration in an Envoy YAML file: (module name, its JSON).
fn wasm_configurations(yaml: &str) -> Vec<(String, Value)> {
    fn walk(node: &Value, found: &mut Vec<(String, Value)>) {
        match node {
            Value::Object(map) => {
                let config = map.get("config");
                let filename =
                    config.and_then(|config| config.pointer("/vm_config/code/local/filename")).and_then(Value::as_str);
                let value = config.and_then(|config| config.pointer("/configuration/value")).and_then(Value::as_str);
                if let (Some(filename), Some(value)) = (filename, value) {
                    let module = filename.rsplit('/').next().unwrap_or_default().trim_end_matches(".wasm");
                    let json = serde_json::from_str(value).unwrap_or_else(|e| panic!("{module}: not JSON: {e}"));
                    found.push((module.to_string(), json));
                }
                map.values().for_each(|child| walk(child, found));
            }
            Value::Array(items) => items.iter().for_each(|child| walk(child, found)),
            _ => {}
        }
    }
    let document: Value = serde_norway::from_str(yaml).expect("an Envoy config is YAML");
    let mut found = Vec::new();
    walk(&document, &mut found);
    found
}

/// The ```json blocks of a markdown file: each is a complete configuration.
fn json_blocks(markdown: &str) -> Vec<Value> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```json") => current = Some(String::new()),
            (Some(text), "```") => {
                blocks.push(
                    serde_json::from_str(text).unwrap_or_else(|e| panic!("a ```json block is not JSON: {e}\n{text}")),
                );
                current = None;
            }
            (Some(text), line) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_committed_schemas_are_what_the_code_generates() {
    for module in MODULES {
        let schema = generated(module).expect("every module has a schema");
        let path = committed_path(module);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == render(&schema),
            "{} is stale: run `cargo run -p integration-tests --bin schemas` and commit the result",
            path.display()
        );
        let docs = reference_path(module);
        assert!(
            std::fs::read_to_string(&docs).unwrap_or_default() == reference(module, &schema),
            "{} is stale: run `cargo run -p integration-tests --bin schemas` and commit the result",
            docs.display()
        );
    }
}

#[test]
fn the_reference_lists_every_field_with_its_default() {
    let auth = std::fs::read_to_string(reference_path("auth")).unwrap();
    for row in [
        "| `providers.NAME.remote_jwks.http_uri.cluster` | string | yes |  |",
        "| `consumer_header` | string |  | `\"x-gateway-consumer\"` |",
        "| `rules[].required_claims` | map of string |  | `{}` |",
    ] {
        assert!(auth.contains(row), "docs/reference/auth.md lacks {row}");
    }
    let ratelimit = std::fs::read_to_string(reference_path("ratelimit")).unwrap();
    assert!(ratelimit.contains("| `rules[].limit.per` | string | yes |  |"));
}

#[test]
fn every_shipped_and_example_configuration_is_valid() {
    let mut checked = 0;
    for file in yaml_files("envoy").into_iter().chain(yaml_files("examples")) {
        for (module, config) in wasm_configurations(&read(&file)) {
            let problems = errors(&module, &config);
            assert!(problems.is_empty(), "{} ({module}): {}", file.display(), problems.join("; "));
            checked += 1;
        }
    }
    // demo and compose have four filters each, the examples one each.
    assert!(checked >= 13, "only {checked} configurations found");
}

#[test]
fn every_documented_configuration_is_valid_and_accepted_by_its_filter() {
    let mut checked = 0;
    for module in MODULES {
        let guide =
            paths::repo_root().join("docs").join(format!("{}.md", if module == "gateway" { "bundle" } else { module }));
        for config in json_blocks(&read(&guide)) {
            let problems = errors(module, &config);
            assert!(problems.is_empty(), "{} ({module}): {}\n{config:#}", guide.display(), problems.join("; "));
            let bytes = config.to_string();
            let parsed = match module {
                "metrics" => metrics_filter::config::MetricsConfig::parse(bytes.as_bytes()).map(drop),
                "auth" => auth_filter::config::AuthConfig::parse(bytes.as_bytes()).map(drop),
                "ratelimit" => ratelimit_filter::config::RateLimitConfig::parse(bytes.as_bytes()).map(drop),
                "aggregate" => aggregate_filter::config::AggregateConfig::parse(bytes.as_bytes()).map(drop),
                _ => Ok(()),
            };
            if let Err(error) = parsed {
                panic!("{} ({module}): the filter refuses it: {error}", guide.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} documented configurations found");
}

#[test]
fn the_schemas_refuse_what_the_filters_refuse() {
    let typo = serde_json::json!({"max_value": {"consumer": 10}});
    assert!(!errors("metrics", &typo).is_empty(), "an unknown field");
    let wrong_type = serde_json::json!({"rules": [{"name": "a", "key": ["client_ip"], "limit": {"requests": "many", "per": "second"}}]});
    assert!(!errors("ratelimit", &wrong_type).is_empty(), "a string where a number belongs");
    let bad_key =
        serde_json::json!({"rules": [{"name": "a", "key": ["cookie"], "limit": {"requests": 1, "per": "second"}}]});
    assert!(!errors("ratelimit", &bad_key).is_empty(), "an unknown key part");
    assert!(!errors("gateway", &serde_json::json!({})).is_empty(), "an empty bundle");
    let bad_section = serde_json::json!({"metrics": {"labels": 1}});
    assert!(!errors("gateway", &bad_section).is_empty(), "a section is checked by its filter's schema");
    let envoy_spelling = serde_json::json!({
        "providers": {"idp": {"local_jwks": {"inline_string": "{}"}, "max_lifetime": "3600s"}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [{"provider_name": "idp"}, {"allow_missing": {}}]}}}]
    });
    assert_eq!(errors("auth", &envoy_spelling), Vec::<String>::new(), "Envoy's spellings are valid");
}
