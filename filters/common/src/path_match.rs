//! Request path matching shared by the filters' rules: exact, prefix, or a template such as
//! `/users/{id}/orders` where `{name}` stands for exactly one non-empty path segment.
//!
//! Paths are matched as Envoy hands them to the filter (`:path`), without the query string;
//! Envoy's own path normalization, if enabled on the listener, has already run.

use crate::config::ConfigError;
use serde::Deserialize;

/// The JSON form: exactly one of `exact`, `prefix`, `template`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RawPathMatch {
    Exact(String),
    Prefix(String),
    Template(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// A named parameter: one non-empty segment.
    Parameter(String),
}

impl PathMatch {
    pub fn compile(raw: &RawPathMatch, field: &str) -> Result<PathMatch, ConfigError> {
        let (kind, text) = match raw {
            RawPathMatch::Exact(text) => ("exact", text),
            RawPathMatch::Prefix(text) => ("prefix", text),
            RawPathMatch::Template(text) => ("template", text),
        };
        let field = format!("{field}.{kind}");
        if !text.starts_with('/') {
            return Err(ConfigError::field(field, format!("`{text}` must start with `/`")));
        }
        if text.contains(['?', '#']) {
            return Err(ConfigError::field(field, "paths are matched without the query string; remove `?` and `#`"));
        }
        Ok(match raw {
            RawPathMatch::Exact(_) => PathMatch::Exact(text.clone()),
            RawPathMatch::Prefix(_) => PathMatch::Prefix(text.clone()),
            RawPathMatch::Template(_) => PathMatch::Template(compile_template(text, &field)?),
        })
    }

    /// `path` is the request's `:path` with or without its query string.
    pub fn matches(&self, path: &str) -> bool {
        let path = strip_query(path);
        match self {
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Template(_) => self.captures(path).is_some(),
        }
    }

    /// For a template: the value of each parameter, in template order (as they appear in the
    /// path, still percent-encoded), or `None` when the path does not match. Exact and prefix
    /// matches have no parameters.
    pub fn captures<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let path = strip_query(path);
        match self {
            PathMatch::Exact(_) | PathMatch::Prefix(_) => self.matches(path).then(Vec::new),
            PathMatch::Template(segments) => {
                let mut parts = path.split('/').skip(1);
                let mut captured = Vec::new();
                for segment in segments {
                    let part = parts.next()?;
                    match segment {
                        Segment::Literal(literal) if part == literal => {}
                        Segment::Parameter(name) if !part.is_empty() => captured.push((name.as_str(), part)),
                        _ => return None,
                    }
                }
                parts.next().is_none().then_some(captured)
            }
        }
    }

    /// What every matching path starts with: the exact path, the prefix, or a template's
    /// literal segments up to its first parameter (`/users/` for `/users/{id}/orders`). A
    /// cheap first test, made on bytes, before a path is looked at as text.
    pub fn literal_start(&self) -> String {
        match self {
            PathMatch::Exact(text) | PathMatch::Prefix(text) => text.clone(),
            PathMatch::Template(segments) => {
                let mut start = String::new();
                for segment in segments {
                    start.push('/');
                    match segment {
                        Segment::Literal(literal) => start.push_str(literal),
                        Segment::Parameter(_) => break,
                    }
                }
                start
            }
        }
    }

    /// The template's parameter names (none for exact and prefix matches).
    pub fn parameters(&self) -> impl Iterator<Item = &str> {
        let segments: &[Segment] = match self {
            PathMatch::Template(segments) => segments,
            _ => &[],
        };
        segments.iter().filter_map(|segment| match segment {
            Segment::Parameter(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }
}

/// The path without `?query` (and without a stray `#fragment`).
pub fn strip_query(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(end) => path.get(..end).unwrap_or(path),
        None => path,
    }
}

fn compile_template(text: &str, field: &str) -> Result<Vec<Segment>, ConfigError> {
    let mut segments = Vec::new();
    for part in text.split('/').skip(1) {
        if let Some(name) = part.strip_prefix('{').and_then(|rest| rest.strip_suffix('}')) {
            let valid = !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
            if !valid {
                return Err(ConfigError::field(field, format!("`{{{name}}}` is not a parameter name ([A-Za-z0-9_]+)")));
            }
            if segments.contains(&Segment::Parameter(name.to_string())) {
                return Err(ConfigError::field(field, format!("parameter `{name}` appears twice")));
            }
            segments.push(Segment::Parameter(name.to_string()));
        } else if part.contains(['{', '}']) {
            return Err(ConfigError::field(
                field,
                format!("segment `{part}`: a parameter must be a whole segment, like `/{{id}}/`"),
            ));
        } else {
            segments.push(Segment::Literal(part.to_string()));
        }
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_matching_path_starts_with_the_literal_start() {
        let cases = [
            (RawPathMatch::Template("/users/{id}/orders".into()), "/users/"),
            (RawPathMatch::Template("/dashboard".into()), "/dashboard"),
            (RawPathMatch::Template("/{id}".into()), "/"),
            (RawPathMatch::Template("/a/b/{x}/{y}".into()), "/a/b/"),
            (RawPathMatch::Exact("/health".into()), "/health"),
            (RawPathMatch::Prefix("/api".into()), "/api"),
        ];
        let paths = [
            "/users/7/orders",
            "/users//orders",
            "/dashboard",
            "/dashboard?x=1",
            "/7",
            "/",
            "/a/b/1/2",
            "/health",
            "/api/x",
        ];
        for (raw, start) in cases {
            let path_match = PathMatch::compile(&raw, "path").unwrap();
            assert_eq!(path_match.literal_start(), start, "{raw:?}");
            for path in paths {
                if path_match.matches(path) {
                    assert!(path.starts_with(start), "{raw:?} matches {path}");
                }
            }
        }
    }

    fn template(text: &str) -> PathMatch {
        PathMatch::compile(&RawPathMatch::Template(text.into()), "match.path").unwrap()
    }

    #[test]
    fn exact_and_prefix_ignore_the_query() {
        let exact = PathMatch::compile(&RawPathMatch::Exact("/login".into()), "p").unwrap();
        assert!(exact.matches("/login"));
        assert!(exact.matches("/login?next=/"));
        assert!(!exact.matches("/login/"));
        let prefix = PathMatch::compile(&RawPathMatch::Prefix("/api/".into()), "p").unwrap();
        assert!(prefix.matches("/api/users?x"));
        assert!(!prefix.matches("/api"));
        assert!(!prefix.matches("/apix/"));
    }

    #[test]
    fn template_parameters_take_exactly_one_non_empty_segment() {
        let users = template("/users/{id}/orders");
        assert!(users.matches("/users/42/orders"));
        assert!(users.matches("/users/42/orders?page=2"));
        assert!(!users.matches("/users//orders"));
        assert!(!users.matches("/users/42/orders/7"));
        assert!(!users.matches("/users/42"));
        assert!(!users.matches("/users/4/2/orders"));
        assert!(template("/").matches("/"));
        assert!(!template("/").matches("/x"));
    }

    #[test]
    fn templates_capture_their_parameters() {
        let dashboard = template("/users/{id}/teams/{team}");
        assert_eq!(dashboard.captures("/users/42/teams/t%201?x=1"), Some(vec![("id", "42"), ("team", "t%201")]));
        assert_eq!(dashboard.captures("/users/42/teams"), None);
        assert_eq!(dashboard.parameters().collect::<Vec<_>>(), ["id", "team"]);
        let exact = PathMatch::compile(&RawPathMatch::Exact("/a".into()), "p").unwrap();
        assert_eq!(exact.captures("/a"), Some(vec![]));
        assert_eq!(exact.captures("/b"), None);
    }

    #[test]
    fn bad_templates_name_the_field() {
        for (text, expected) in [
            ("users/{id}", "must start with `/`"),
            ("/users/{}", "is not a parameter name"),
            ("/users/{a-b}", "is not a parameter name"),
            ("/users/x{id}", "must be a whole segment"),
            ("/a/{id}/b/{id}", "appears twice"),
            ("/a?b", "without the query string"),
        ] {
            let error = PathMatch::compile(&RawPathMatch::Template(text.into()), "rules[0].match.path").unwrap_err();
            assert_eq!(error.field, "rules[0].match.path.template", "{text}");
            assert!(error.message.contains(expected), "{text}: {}", error.message);
        }
    }
}
