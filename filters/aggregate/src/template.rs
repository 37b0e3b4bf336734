//! Backend URL templates: `/users/{id}`, `/teams/{user.team_id}`,
//! `/orders?user_id={id}&page={query.page}`, `/profile/{header.x-gateway-consumer}`.
//!
//! A variable is a path parameter of the endpoint (`{id}`), a query parameter of the request
//! (`{query.page}`), a request header (`{header.name}`), or a scalar field of an earlier
//! backend's JSON answer (`{user.team_id}`, dotted; a number indexes an array: `{orders.0.sku}`). Values are percent-encoded for where they land
//! (a path segment or a query value), so a value can never add segments or parameters.

use gateway_common::config::{header_name, ConfigError};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Variable {
    PathParameter(String),
    Query(String),
    /// Lower-case header name.
    Header(String),
    /// A scalar field of backend `backend`'s answer (index into the endpoint's backends).
    Field {
        backend: usize,
        path: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Variable(Variable),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    path: Vec<Piece>,
    /// After `?`, if any.
    query: Option<Vec<Piece>>,
}

/// What the names in a template may refer to, for validating it.
pub struct Scope<'a> {
    pub path_parameters: &'a [String],
    /// Backends declared before this one, by name.
    pub earlier_backends: &'a [String],
}

/// Why a template could not be filled for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    pub kind: RenderErrorKind,
    /// Which variable, for messages, e.g. "query parameter `page`".
    pub what: String,
    /// The value comes from the client's request (path, query, header), not from a backend.
    pub client_input: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderErrorKind {
    /// A query parameter, header or field the template needs is absent (or not a scalar).
    Missing,
    /// A value that would change the path's meaning (empty, `.` or `..` as a segment).
    Invalid,
}

impl RenderError {
    fn new(kind: RenderErrorKind, variable: &Variable) -> RenderError {
        RenderError { kind, what: describe(variable), client_input: !matches!(variable, Variable::Field { .. }) }
    }
}

/// Where variable values come from for one request.
pub trait Inputs {
    /// Percent-decoded.
    fn path_parameter(&self, name: &str) -> Option<String>;
    /// Percent-decoded.
    fn query(&self, name: &str) -> Option<String>;
    fn header(&self, name: &str) -> Option<String>;
    fn field(&self, backend: usize, path: &[String]) -> Option<String>;
}

impl UrlTemplate {
    pub fn compile(text: &str, scope: &Scope, field: &str) -> Result<UrlTemplate, ConfigError> {
        if !text.starts_with('/') {
            return Err(ConfigError::field(field, format!("`{text}` must start with `/`")));
        }
        let (path, query) = match text.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (text, None),
        };
        Ok(UrlTemplate {
            path: pieces(path, scope, field)?,
            query: query.map(|query| pieces(query, scope, field)).transpose()?,
        })
    }

    pub fn variables(&self) -> impl Iterator<Item = &Variable> {
        self.path.iter().chain(self.query.iter().flatten()).filter_map(|piece| match piece {
            Piece::Variable(variable) => Some(variable),
            Piece::Literal(_) => None,
        })
    }

    pub fn render(&self, inputs: &dyn Inputs) -> Result<String, RenderError> {
        let mut url = String::new();
        for piece in &self.path {
            match piece {
                Piece::Literal(text) => url.push_str(text),
                Piece::Variable(variable) => {
                    let value = value_of(variable, inputs)?;
                    if value.is_empty() || value == "." || value == ".." {
                        return Err(RenderError::new(RenderErrorKind::Invalid, variable));
                    }
                    percent_encode_into(&value, &mut url);
                }
            }
        }
        if let Some(query) = &self.query {
            url.push('?');
            for piece in query {
                match piece {
                    Piece::Literal(text) => url.push_str(text),
                    Piece::Variable(variable) => percent_encode_into(&value_of(variable, inputs)?, &mut url),
                }
            }
        }
        Ok(url)
    }
}

fn value_of(variable: &Variable, inputs: &dyn Inputs) -> Result<String, RenderError> {
    let value = match variable {
        Variable::PathParameter(name) => inputs.path_parameter(name),
        Variable::Query(name) => inputs.query(name),
        Variable::Header(name) => inputs.header(name),
        Variable::Field { backend, path } => inputs.field(*backend, path),
    };
    value.ok_or_else(|| RenderError::new(RenderErrorKind::Missing, variable))
}

fn describe(variable: &Variable) -> String {
    match variable {
        Variable::PathParameter(name) => format!("path parameter `{name}`"),
        Variable::Query(name) => format!("query parameter `{name}`"),
        Variable::Header(name) => format!("header `{name}`"),
        Variable::Field { path, .. } => format!("field `{}`", path.join(".")),
    }
}

fn pieces(text: &str, scope: &Scope, field: &str) -> Result<Vec<Piece>, ConfigError> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let (literal, after) = rest.split_at(open);
        if literal.contains('}') {
            return Err(ConfigError::field(field, "`}` without `{`"));
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal.to_string()));
        }
        let close = after.find('}').ok_or_else(|| ConfigError::field(field, "`{` without `}`"))?;
        let name = after.get(1..close).unwrap_or_default();
        pieces.push(Piece::Variable(variable(name, scope, field)?));
        rest = after.get(close + 1..).unwrap_or_default();
    }
    if rest.contains('}') {
        return Err(ConfigError::field(field, "`}` without `{`"));
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_string()));
    }
    Ok(pieces)
}

fn variable(name: &str, scope: &Scope, field: &str) -> Result<Variable, ConfigError> {
    if let Some(query) = name.strip_prefix("query.") {
        if query.is_empty() {
            return Err(ConfigError::field(field, "`{query.}` names no query parameter"));
        }
        return Ok(Variable::Query(query.to_string()));
    }
    if let Some(header) = name.strip_prefix("header.") {
        return Ok(Variable::Header(header_name(header, field)?));
    }
    if let Some((backend, path)) = name.split_once('.') {
        let index = scope.earlier_backends.iter().position(|earlier| earlier == backend).ok_or_else(|| {
            ConfigError::field(field, format!("`{{{name}}}`: no backend named `{backend}` is declared before this one"))
        })?;
        let path: Vec<String> = path.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::field(field, format!("`{{{name}}}` has an empty field name")));
        }
        return Ok(Variable::Field { backend: index, path });
    }
    if scope.path_parameters.iter().any(|parameter| parameter == name) {
        return Ok(Variable::PathParameter(name.to_string()));
    }
    Err(ConfigError::field(
        field,
        format!("`{{{name}}}` is not a parameter of the endpoint's path (use query.NAME, header.NAME or BACKEND.FIELD for other sources)"),
    ))
}

/// Everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) is percent-encoded.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn percent_encode_into(value: &str, out: &mut String) {
    out.extend(utf8_percent_encode(value, NOT_UNRESERVED));
}

/// Decodes `%XX` sequences of a path segment; malformed sequences are kept as they are, and
/// invalid UTF-8 is replaced.
pub fn percent_decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Values {
        params: HashMap<String, String>,
        query: HashMap<String, String>,
        headers: HashMap<String, String>,
        fields: HashMap<(usize, String), String>,
    }

    impl Inputs for Values {
        fn path_parameter(&self, name: &str) -> Option<String> {
            self.params.get(name).cloned()
        }
        fn query(&self, name: &str) -> Option<String> {
            self.query.get(name).cloned()
        }
        fn header(&self, name: &str) -> Option<String> {
            self.headers.get(name).cloned()
        }
        fn field(&self, backend: usize, path: &[String]) -> Option<String> {
            self.fields.get(&(backend, path.join("."))).cloned()
        }
    }

    fn compile(text: &str) -> Result<UrlTemplate, ConfigError> {
        let params = ["id".to_string()];
        let earlier = ["user".to_string()];
        UrlTemplate::compile(text, &Scope { path_parameters: &params, earlier_backends: &earlier }, "backends[1].path")
    }

    fn values() -> Values {
        let mut values = Values::default();
        values.params.insert("id".into(), "42".into());
        values.query.insert("page".into(), "2".into());
        values.headers.insert("x-gateway-consumer".into(), "ada".into());
        values.fields.insert((0, "team.id".into()), "t1".into());
        values
    }

    #[test]
    fn fills_every_kind_of_variable() {
        let template =
            compile("/teams/{user.team.id}/members/{id}?page={query.page}&by={header.X-Gateway-Consumer}").unwrap();
        assert_eq!(template.render(&values()).unwrap(), "/teams/t1/members/42?page=2&by=ada");
        assert_eq!(template.variables().count(), 4);
    }

    #[test]
    fn values_cannot_add_segments_or_parameters() {
        let template = compile("/users/{id}?q={query.page}").unwrap();
        let mut hostile = values();
        hostile.params.insert("id".into(), "1/../admin".into());
        hostile.query.insert("page".into(), "1&admin=true#x".into());
        assert_eq!(template.render(&hostile).unwrap(), "/users/1%2F..%2Fadmin?q=1%26admin%3Dtrue%23x");
        for dots in [".", "..", ""] {
            hostile.params.insert("id".into(), dots.into());
            let error = template.render(&hostile).unwrap_err();
            assert_eq!((error.kind, error.client_input), (RenderErrorKind::Invalid, true), "{dots:?}");
        }
    }

    #[test]
    fn a_missing_value_is_named() {
        let template = compile("/x/{query.page}").unwrap();
        let error = template.render(&Values::default()).unwrap_err();
        assert_eq!(
            error,
            RenderError { kind: RenderErrorKind::Missing, what: "query parameter `page`".into(), client_input: true }
        );
        let field = compile("/x/{user.team}").unwrap().render(&Values::default()).unwrap_err();
        assert!(!field.client_input);
    }

    #[test]
    fn undefined_names_are_config_errors() {
        for (text, message) in [
            ("/users/{uid}", "is not a parameter of the endpoint's path"),
            ("/teams/{orders.team_id}", "no backend named `orders` is declared before this one"),
            ("/x/{user..id}", "empty field name"),
            ("/x/{header.bad header}", "not an HTTP header name"),
            ("/x/{query.}", "names no query parameter"),
            ("/x/{id", "`{` without `}`"),
            ("/x/id}", "`}` without `{`"),
            ("x/{id}", "must start with `/`"),
        ] {
            let error = compile(text).unwrap_err();
            assert_eq!(error.field, "backends[1].path", "{text}");
            assert!(error.message.contains(message), "{text}: {}", error.message);
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("a+b"), "a+b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%FF"), "\u{FFFD}");
    }
}
