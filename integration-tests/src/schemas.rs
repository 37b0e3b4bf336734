//! The JSON Schemas of the filters' configurations, generated from the configuration types
//! (`schemars`, feature `schema` of each filter crate) and committed under `schemas/`:
//! `cargo run -p integration-tests --bin schemas` writes them, and a test fails when a
//! committed one differs from what the code generates.

use crate::paths;
use std::path::PathBuf;

/// The modules whose configuration has a schema, by module name (`<name>.wasm`).
pub const MODULES: [&str; 5] = ["metrics", "auth", "ratelimit", "aggregate", "gateway"];

/// The schema of a module's configuration, as the code defines it today.
pub fn generated(module: &str) -> Option<serde_json::Value> {
    let schema = match module {
        "metrics" => metrics_filter::config::schema(),
        "auth" => auth_filter::config::schema(),
        "ratelimit" => ratelimit_filter::config::schema(),
        "aggregate" => aggregate_filter::config::schema(),
        "gateway" => gateway::schema(),
        _ => return None,
    };
    Some(schema.to_value())
}

/// Where the committed schema of `module` lives.
pub fn committed_path(module: &str) -> PathBuf {
    paths::repo_root().join("schemas").join(format!("{module}.schema.json"))
}

/// The text written to `schemas/`: pretty JSON and a final newline.
pub fn render(schema: &serde_json::Value) -> String {
    serde_json::to_string_pretty(schema).unwrap_or_default() + "\n"
}
