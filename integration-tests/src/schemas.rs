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

/// Where the configuration reference generated from `module`'s schema lives.
pub fn reference_path(module: &str) -> PathBuf {
    paths::repo_root().join("docs/reference").join(format!("{module}.md"))
}

/// The configuration reference of `module`: every field of its schema, with its type, whether
/// it is required, and its default. Generated, so the reference cannot drift from the code; the
/// filter's guide explains what each field does.
pub fn reference(module: &str, schema: &serde_json::Value) -> String {
    let mut rows = Vec::new();
    walk(schema, schema, "", true, &mut Vec::new(), &mut rows);
    let mut seen = std::collections::BTreeSet::new();
    rows.retain(|row: &Row| seen.insert(row.path.clone()));
    let guide = if module == "gateway" { "bundle" } else { module };
    let mut text = format!(
        "# `{module}` configuration reference\n\n\
         Generated from [`schemas/{module}.schema.json`](../../schemas/{module}.schema.json) by\n\
         `cargo run -p integration-tests --bin schemas`; do not edit (`make test` checks it is current).\n\
         What each field does is in the [{guide} guide](../{guide}.md). `NAME` stands for a key you\n\
         choose, `[]` for each item of a list.\n\n\
         | field | type | required | default |\n|---|---|---|---|\n"
    );
    for row in rows {
        let default = row.default.map(|value| format!("`{value}`")).unwrap_or_default();
        text.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            row.path,
            row.kind,
            if row.required { "yes" } else { "" },
            default
        ));
    }
    text
}

struct Row {
    path: String,
    kind: String,
    required: bool,
    default: Option<String>,
}

fn walk(
    schema: &serde_json::Value,
    root: &serde_json::Value,
    path: &str,
    required: bool,
    stack: &mut Vec<String>,
    rows: &mut Vec<Row>,
) {
    use serde_json::Value;
    let default = schema.get("default").filter(|value| !value.is_null()).map(Value::to_string);
    let mut row = |kind: String| {
        if !path.is_empty() {
            rows.push(Row { path: path.to_string(), kind, required, default: default.clone() });
        }
    };
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or_default().to_string();
        if stack.contains(&name) {
            row("the same as the enclosing requirement (nested)".into());
            return;
        }
        let Some(definition) = root.pointer(&format!("/$defs/{name}")) else { return };
        stack.push(name);
        let mut merged = definition.clone();
        if let (Some(object), Some(default)) = (merged.as_object_mut(), schema.get("default")) {
            object.insert("default".into(), default.clone());
        }
        walk(&merged, root, path, required, stack, rows);
        stack.pop();
        return;
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let names: Vec<String> =
            values.iter().map(|value| format!("`{}`", value.as_str().unwrap_or_default())).collect();
        row(format!("one of {}", names.join(", ")));
        return;
    }
    let variants = schema.get("oneOf").or_else(|| schema.get("anyOf")).and_then(Value::as_array);
    // An optional field (`X or null`) is described as X.
    let not_null: Vec<&Value> =
        variants.into_iter().flatten().filter(|variant| variant.get("type") != Some(&Value::from("null"))).collect();
    if let ([only], Some(_)) = (not_null.as_slice(), variants) {
        walk(only, root, path, required, stack, rows);
        return;
    }
    if let Some(variants) = variants {
        let tags: Vec<&str> = variants
            .iter()
            .filter_map(|variant| {
                let properties = variant.get("properties")?.as_object()?;
                (properties.len() == 1 && variant.get("required").is_some())
                    .then(|| properties.keys().next())?
                    .map(String::as_str)
            })
            .collect();
        if tags.len() == variants.len() {
            let names: Vec<String> = tags.iter().map(|tag| format!("`{tag}`")).collect();
            row(format!("object with exactly one of {}", names.join(", ")));
            for variant in variants {
                for (name, property) in variant["properties"].as_object().into_iter().flatten() {
                    walk(property, root, &join(path, name), false, stack, rows);
                }
            }
        } else {
            let kinds: Vec<String> = variants.iter().map(|variant| kind_of(variant, root)).collect();
            row(kinds.join(" or "));
            for variant in variants {
                if variant.get("properties").is_some() || variant.get("$ref").is_some() {
                    walk_object_fields(variant, root, path, stack, rows);
                }
            }
        }
        return;
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).filter(|kind| *kind != "null").collect(),
        _ => vec![],
    };
    match types.first().copied() {
        Some("object") if schema.get("properties").is_some() => {
            row("object".into());
            walk_object_fields(schema, root, path, stack, rows);
        }
        Some("object") => match schema.get("additionalProperties") {
            Some(value) if value.is_object() => {
                row(format!("map of {}", kind_of(value, root)));
                walk(value, root, &join(path, "NAME"), false, stack, rows);
            }
            _ => row("object".into()),
        },
        Some("array") => {
            let items = schema.get("items").cloned().unwrap_or(Value::Null);
            row(format!("list of {}", kind_of(&items, root)));
            walk_nested(&items, root, &format!("{path}[]"), stack, rows);
        }
        Some(kind) => row(scalar(kind, schema)),
        None => row("any JSON".into()),
    }
}

/// The fields of an object schema (or of the object a `$ref` names), under `path`.
fn walk_object_fields(
    schema: &serde_json::Value,
    root: &serde_json::Value,
    path: &str,
    stack: &mut Vec<String>,
    rows: &mut Vec<Row>,
) {
    let resolved = resolve(schema, root);
    let required: Vec<&str> = resolved
        .get("required")
        .and_then(|value| value.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    for (name, property) in resolved.get("properties").and_then(|value| value.as_object()).into_iter().flatten() {
        walk(property, root, &join(path, name), required.contains(&name.as_str()), stack, rows);
    }
}

/// Items of a list: only structured ones get rows of their own.
fn walk_nested(
    items: &serde_json::Value,
    root: &serde_json::Value,
    path: &str,
    stack: &mut Vec<String>,
    rows: &mut Vec<Row>,
) {
    let resolved = resolve(items, root);
    let structured = resolved.get("properties").is_some() || resolved.get("oneOf").is_some();
    if structured {
        let mut nested = Vec::new();
        walk(items, root, path, false, stack, &mut nested);
        // The list's own row already says what its items are.
        rows.extend(nested.into_iter().filter(|row| row.path != path));
    }
}

fn resolve<'a>(schema: &'a serde_json::Value, root: &'a serde_json::Value) -> &'a serde_json::Value {
    schema
        .get("$ref")
        .and_then(|reference| reference.as_str())
        .and_then(|reference| root.pointer(&reference.replacen('#', "", 1)))
        .unwrap_or(schema)
}

fn kind_of(schema: &serde_json::Value, root: &serde_json::Value) -> String {
    let schema = resolve(schema, root);
    if schema.get("oneOf").or_else(|| schema.get("anyOf")).is_some() || schema.get("properties").is_some() {
        return "objects".into();
    }
    if schema.get("enum").is_some() {
        return "names".into();
    }
    match schema.get("type") {
        Some(serde_json::Value::String(kind)) => scalar(kind, schema),
        Some(serde_json::Value::Array(kinds)) => kinds
            .iter()
            .filter_map(|kind| kind.as_str())
            .find(|kind| *kind != "null")
            .map_or("any JSON".into(), |kind| scalar(kind, schema)),
        _ => "any JSON".into(),
    }
}

fn scalar(kind: &str, schema: &serde_json::Value) -> String {
    match (kind, schema.get("minimum").and_then(|value| value.as_u64())) {
        ("integer", Some(0)) => "integer ≥ 0".into(),
        ("integer", Some(minimum)) => format!("integer ≥ {minimum}"),
        ("string", _) => "string".into(),
        ("boolean", _) => "boolean".into(),
        ("array", _) => "list".into(),
        ("object", _) => "object".into(),
        (other, _) => other.into(),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}
