//! Shaping one backend's JSON answer and merging the answers into one document.
//!
//! Per backend, in this order (as KrakenD users know it):
//! 1. `target`: keep only the value at a dotted path (`data.user`);
//! 2. `is_collection`: an array answer becomes `{"collection": [...]}`, so the steps below
//!    (and a root merge) can work on it;
//! 3. `allow` (keep only these dotted paths) or `deny` (drop these); a path crossing an array
//!    applies to each element (`collection.id`);
//! 4. `mapping`: rename top-level fields;
//! 5. `group`: nest the result under one key; without a group it must be an object and its
//!    fields are merged at the root, backends in declaration order (a later backend's field
//!    replaces an earlier one's of the same name).

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shape {
    pub target: Option<Vec<String>>,
    pub is_collection: bool,
    pub filter: Option<Filter>,
    pub mapping: Vec<(String, String)>,
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Allow(Vec<Vec<String>>),
    Deny(Vec<Vec<String>>),
}

/// Why an answer could not be shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    TargetMissing(String),
    /// Without a `group`, the answer must be an object to merge at the root.
    NotAnObject,
}

impl Shape {
    pub fn apply(&self, mut value: Value) -> Result<Value, ShapeError> {
        if let Some(target) = &self.target {
            value = take_path(value, target).ok_or_else(|| ShapeError::TargetMissing(target.join(".")))?;
        }
        if self.is_collection && value.is_array() {
            let mut wrapped = Map::new();
            wrapped.insert("collection".to_string(), value);
            value = Value::Object(wrapped);
        }
        match &self.filter {
            Some(Filter::Allow(paths)) => value = allow(&value, paths),
            Some(Filter::Deny(paths)) => paths.iter().for_each(|path| deny(&mut value, path)),
            None => {}
        }
        if let Value::Object(object) = &mut value {
            for (from, to) in &self.mapping {
                if let Some(field) = object.remove(from) {
                    object.insert(to.clone(), field);
                }
            }
        }
        if self.group.is_none() && !value.is_object() {
            return Err(ShapeError::NotAnObject);
        }
        Ok(value)
    }
}

/// Places a shaped answer into the merged document.
pub fn merge_into(document: &mut Map<String, Value>, group: Option<&str>, value: Value) {
    match (group, value) {
        (Some(group), value) => {
            document.insert(group.to_string(), value);
        }
        (None, Value::Object(fields)) => document.extend(fields),
        // `Shape::apply` refuses non-objects without a group.
        (None, _) => {}
    }
}

/// The scalar at a dotted path as text (strings as they are, numbers and booleans printed), for
/// filling URL templates. A number segment indexes an array (`orders.0.sku`).
pub fn scalar_at(value: &Value, path: &[String]) -> Option<String> {
    let mut current = value;
    for key in path {
        current = match current {
            Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
            _ => current.get(key.as_str())?,
        };
    }
    match current {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn take_path(mut value: Value, path: &[String]) -> Option<Value> {
    for key in path {
        value = match value {
            Value::Object(mut object) => object.remove(key)?,
            _ => return None,
        };
    }
    Some(value)
}

fn allow(value: &Value, paths: &[Vec<String>]) -> Value {
    let mut kept = match value {
        Value::Array(_) => Value::Array(Vec::new()),
        _ => Value::Object(Map::new()),
    };
    for path in paths {
        copy_path(value, &mut kept, path);
    }
    kept
}

/// Copies the value at `path` in `from` into the same place in `into`, through arrays.
fn copy_path(from: &Value, into: &mut Value, path: &[String]) {
    match from {
        Value::Array(items) => {
            let Value::Array(kept) = into else { return };
            kept.resize(items.len(), Value::Object(Map::new()));
            for (item, kept_item) in items.iter().zip(kept.iter_mut()) {
                copy_path(item, kept_item, path);
            }
        }
        Value::Object(object) => {
            let Some((key, rest)) = path.split_first() else { return };
            let Some(child) = object.get(key) else { return };
            let Value::Object(kept) = into else { return };
            if rest.is_empty() {
                kept.insert(key.clone(), child.clone());
                return;
            }
            let empty = if child.is_array() { Value::Array(Vec::new()) } else { Value::Object(Map::new()) };
            let slot = kept.entry(key.clone()).or_insert(empty);
            copy_path(child, slot, rest);
        }
        _ => {}
    }
}

fn deny(value: &mut Value, path: &[String]) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|item| deny(item, path)),
        Value::Object(object) => match path {
            [] => {}
            [last] => {
                object.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = object.get_mut(first) {
                    deny(child, rest);
                }
            }
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(text: &str) -> Vec<String> {
        text.split('.').map(String::from).collect()
    }

    #[test]
    fn target_takes_a_sub_object() {
        let shape = Shape { target: Some(path("data.user")), ..Shape::default() };
        assert_eq!(shape.apply(json!({"data": {"user": {"id": 1}}, "meta": 2})), Ok(json!({"id": 1})));
        assert_eq!(shape.apply(json!({"data": {}})), Err(ShapeError::TargetMissing("data.user".into())));
    }

    #[test]
    fn allow_keeps_only_listed_paths_through_arrays() {
        let shape = Shape {
            is_collection: true,
            filter: Some(Filter::Allow(vec![path("collection.id"), path("collection.owner.name")])),
            ..Shape::default()
        };
        let answer = json!([
            {"id": 1, "secret": "x", "owner": {"name": "ada", "email": "a@x"}},
            {"id": 2, "secret": "y"}
        ]);
        assert_eq!(shape.apply(answer), Ok(json!({"collection": [{"id": 1, "owner": {"name": "ada"}}, {"id": 2}]})));
    }

    #[test]
    fn deny_drops_listed_paths() {
        let shape = Shape {
            filter: Some(Filter::Deny(vec![path("email"), path("address.zip"), path("nope.x")])),
            ..Shape::default()
        };
        assert_eq!(
            shape.apply(json!({"name": "ada", "email": "a@x", "address": {"city": "L", "zip": "1"}})),
            Ok(json!({"name": "ada", "address": {"city": "L"}}))
        );
    }

    #[test]
    fn mapping_renames_and_group_nests() {
        let shape = Shape {
            mapping: vec![("collection".into(), "orders".into()), ("missing".into(), "x".into())],
            is_collection: true,
            group: Some("history".into()),
            ..Shape::default()
        };
        let value = shape.apply(json!([{"id": "o-1"}])).unwrap();
        let mut document = Map::new();
        merge_into(&mut document, shape.group.as_deref(), value);
        assert_eq!(Value::Object(document), json!({"history": {"orders": [{"id": "o-1"}]}}));
    }

    #[test]
    fn root_merge_needs_an_object_and_later_fields_win() {
        assert_eq!(Shape::default().apply(json!([1, 2])), Err(ShapeError::NotAnObject));
        assert_eq!(Shape::default().apply(json!("text")), Err(ShapeError::NotAnObject));
        let grouped = Shape { group: Some("raw".into()), ..Shape::default() };
        assert_eq!(grouped.apply(json!([1, 2])), Ok(json!([1, 2])));
        let mut document = Map::new();
        merge_into(&mut document, None, json!({"a": 1, "b": 1}));
        merge_into(&mut document, None, json!({"b": 2}));
        assert_eq!(Value::Object(document), json!({"a": 1, "b": 2}));
    }

    #[test]
    fn scalars_for_templates() {
        let value = json!({"team": {"id": "t1", "size": 4, "open": true, "tags": ["x"]}});
        assert_eq!(scalar_at(&value, &path("team.id")), Some("t1".into()));
        assert_eq!(scalar_at(&value, &path("team.size")), Some("4".into()));
        assert_eq!(scalar_at(&value, &path("team.open")), Some("true".into()));
        assert_eq!(scalar_at(&value, &path("team.tags")), None);
        assert_eq!(scalar_at(&value, &path("team.nope")), None);
        let orders = json!({"orders": [{"sku": "kbd-01"}, {"sku": "mon-27"}]});
        assert_eq!(scalar_at(&orders, &path("orders.1.sku")), Some("mon-27".into()));
        assert_eq!(scalar_at(&orders, &path("orders.2.sku")), None);
        assert_eq!(scalar_at(&orders, &path("orders.x.sku")), None);
    }
}
