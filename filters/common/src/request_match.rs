//! The part of a rule's `match` that every filter shares: path, methods and Envoy route name.
//! Facts are asked for only when a condition needs them (each is a host call in Envoy).

use crate::config::ConfigError;
use crate::path_match::{PathMatch, RawPathMatch};
use crate::request::{RequestFacts, RequestText};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestMatch {
    pub path: Option<PathMatch>,
    /// Upper-case methods; empty means any.
    pub methods: Vec<String>,
    /// Envoy's route name.
    pub route: Option<String>,
}

impl RequestMatch {
    /// Compiles the JSON fields of a `match` object; `field` is that object's path.
    pub fn compile(
        path: Option<&RawPathMatch>,
        methods: &[String],
        route: Option<String>,
        field: &str,
    ) -> Result<RequestMatch, ConfigError> {
        let path = path.map(|path| PathMatch::compile(path, &format!("{field}.path"))).transpose()?;
        let methods = methods
            .iter()
            .enumerate()
            .map(|(index, method)| method_name(method, &format!("{field}.methods[{index}]")))
            .collect::<Result<_, _>>()?;
        Ok(RequestMatch { path, methods, route })
    }

    pub fn matches(&self, facts: &mut dyn RequestFacts) -> bool {
        if !self.methods.is_empty() {
            let method = facts.method().unwrap_or_default();
            if !self.methods.iter().any(|allowed| allowed == method) {
                return false;
            }
        }
        if let Some(path) = &self.path {
            if !facts.path().is_some_and(|actual| path.matches(actual)) {
                return false;
            }
        }
        if let Some(route) = &self.route {
            if facts.route() != Some(route.as_str()) {
                return false;
            }
        }
        true
    }
}

/// An HTTP method name (letters only), upper-cased.
pub fn method_name(text: &str, field: &str) -> Result<String, ConfigError> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_alphabetic()) {
        return Err(ConfigError::field(field, format!("`{text}` is not a method")));
    }
    Ok(text.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::request::ROUTE_NAME;
    use crate::testing::FakeRequest;

    fn facts(method: &str, path: &str, route: Option<&str>) -> FakeRequest {
        let request = FakeRequest::default().header(":method", method).header(":path", path);
        match route {
            Some(route) => request.property(&ROUTE_NAME, route),
            None => request,
        }
    }

    #[test]
    fn every_condition_must_hold_and_only_needed_facts_are_read() {
        let template = RawPathMatch::Template("/orders/{id}".into());
        let matcher = RequestMatch::compile(Some(&template), &["post".into()], Some("orders".into()), "m").unwrap();
        assert!(matcher.matches(&mut facts("POST", "/orders/1?x=1", Some("orders"))));
        assert!(!matcher.matches(&mut facts("GET", "/orders/1", Some("orders"))));
        assert!(!matcher.matches(&mut facts("POST", "/orders", Some("orders"))));
        assert!(!matcher.matches(&mut facts("POST", "/orders/1", None)));
        let mut any = facts("GET", "/", None);
        assert!(RequestMatch::default().matches(&mut any));
        assert!(any.asked.is_empty());
    }

    #[test]
    fn methods_are_checked() {
        assert_eq!(method_name("get", "f"), Ok("GET".to_string()));
        for bad in ["", "G ET", "GET1"] {
            assert_eq!(method_name(bad, "rules[0].match.methods[0]").unwrap_err().field, "rules[0].match.methods[0]");
        }
    }
}
