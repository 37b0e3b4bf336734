//! One request against the rules: which requirement applies, which credentials it finds, and
//! what the filter does (let the request on with identity headers, or answer 401/403). The
//! request is seen through [`RequestFacts`].

use crate::config::{ApiKeySource, AuthConfig, Provider, Requirement, TokenSource};
use crate::jwt::{self, Rejection};
use crate::keyring::KeyRing;
use gateway_common::request_match::RequestMatch;
use rsa::sha2::{Digest, Sha256};
use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use subtle::ConstantTimeEq;

pub use gateway_common::request::RequestFacts;

/// The request as text (credentials and claims are ASCII; anything else cannot be a valid
/// one). The facts behind it are read from the host at most once each.
struct Lazy<'a> {
    facts: RefCell<&'a mut dyn RequestFacts>,
    method: OnceCell<String>,
    path: OnceCell<String>,
}

impl Lazy<'_> {
    fn method(&self) -> &str {
        self.method.get_or_init(|| self.header(":method").unwrap_or_default())
    }

    fn path(&self) -> &str {
        self.path.get_or_init(|| self.header(":path").unwrap_or_default())
    }

    fn header(&self, name: &str) -> Option<String> {
        self.with_header(name, |value| Some(value.to_string()))
    }

    /// Looks at a header in place (a token is hundreds of bytes: copied once, not twice).
    fn with_header<T>(&self, name: &str, look: impl FnOnce(&str) -> Option<T>) -> Option<T> {
        self.with_header_bytes(name, |bytes| std::str::from_utf8(bytes).ok().and_then(look))
    }

    fn with_header_bytes<T>(&self, name: &str, look: impl FnOnce(&[u8]) -> Option<T>) -> Option<T> {
        let mut facts = self.facts.borrow_mut();
        facts.header(name).and_then(look)
    }

    fn matches(&self, matcher: &RequestMatch) -> bool {
        matcher.matches(&mut **self.facts.borrow_mut())
    }
}

/// What to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through after these changes (the owned headers are always removed first).
    Allow(Changes),
    Deny(Denial),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    pub set_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
    /// A new `:path` without hidden query credentials.
    pub new_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u32,
    pub www_authenticate: Option<String>,
    /// The JSON body's `error`.
    pub error: &'static str,
    pub message: String,
}

/// The outcome of one requirement.
#[derive(Debug, Clone, PartialEq)]
enum Check {
    Ok(Identity),
    Missing,
    Invalid(&'static str),
    Forbidden(String),
    /// The filter cannot judge the token (no clock): refuse, never guess.
    Unavailable(&'static str),
    /// The client failed too often (the brute-force guard): refused without verification.
    Throttled,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Identity {
    consumer: Option<String>,
    headers: Vec<(String, String)>,
    hide: Vec<Credential>,
    /// The verified tokens behind it (none for an API key or a missing credential).
    tokens: Vec<Rc<jwt::Verified>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    Header(String),
    Param(String),
    /// Never removed: the other cookies in the same header belong to the upstream.
    Cookie,
}

/// The `error` of the 429 a client locked out by the brute-force guard gets.
pub const THROTTLED: &str = "too_many_failed_authentications";

/// The providers whose key set should be looked at again: a token named a `kid` they lack, or
/// they have no keys.
pub type Refetch = Vec<usize>;

/// `locked`: the client is locked out by the brute-force guard, so credentials this worker
/// has not verified before are refused (429) without verifying them.
pub fn decide(
    config: &AuthConfig,
    ring: &mut KeyRing,
    request: &mut dyn RequestFacts,
    now_seconds: Option<u64>,
    locked: bool,
    refetch: &mut Refetch,
) -> Decision {
    let request = &Lazy { facts: RefCell::new(request), method: OnceCell::new(), path: OnceCell::new() };
    if config.allow_cors_preflight
        && request.method() == "OPTIONS"
        && request.header("origin").is_some()
        && request.header("access-control-request-method").is_some()
    {
        return Decision::Allow(Changes::default());
    }
    let Some(rule) = config.rules.iter().find(|rule| request.matches(&rule.matcher)) else {
        return Decision::Deny(no_rule());
    };
    let Some(requirement) = &rule.requires else { return Decision::Allow(Changes::default()) };
    let mut context = Context { config, ring, request, now: now_seconds, locked, refetch };
    let checked = match check(requirement, &mut context) {
        Check::Ok(identity) if !rule.required_claims.is_empty() => rule_claims(identity, &rule.required_claims),
        other => other,
    };
    // Each refusal is written by a function of its own, out of line: a request that passes
    // runs none of that code.
    match checked {
        Check::Ok(identity) => Decision::Allow(changes(config, identity, request)),
        Check::Missing => Decision::Deny(unauthorized(config)),
        Check::Invalid(description) => Decision::Deny(invalid_token(config, description)),
        Check::Throttled => Decision::Deny(throttled()),
        Check::Unavailable(description) => Decision::Deny(unavailable(description)),
        Check::Forbidden(description) => Decision::Deny(insufficient_scope(config, description)),
    }
}

#[cold]
fn no_rule() -> Denial {
    Denial {
        status: 403,
        www_authenticate: None,
        error: "forbidden",
        message: "no authentication rule matches this request".into(),
    }
}

#[cold]
fn unauthorized(config: &AuthConfig) -> Denial {
    Denial {
        status: 401,
        www_authenticate: Some(format!("Bearer realm=\"{}\"", config.realm)),
        error: "unauthorized",
        message: "authentication is required".into(),
    }
}

#[cold]
fn invalid_token(config: &AuthConfig, description: &str) -> Denial {
    Denial {
        status: 401,
        www_authenticate: Some(format!(
            "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{description}\"",
            config.realm
        )),
        error: "invalid_token",
        message: description.to_string(),
    }
}

#[cold]
fn throttled() -> Denial {
    Denial {
        status: 429,
        www_authenticate: None,
        error: THROTTLED,
        message: "too many failed authentications from this client; retry later".into(),
    }
}

#[cold]
fn unavailable(description: &str) -> Denial {
    Denial { status: 503, www_authenticate: None, error: "auth_unavailable", message: description.to_string() }
}

#[cold]
fn insufficient_scope(config: &AuthConfig, description: String) -> Denial {
    Denial {
        status: 403,
        www_authenticate: Some(format!(
            "Bearer realm=\"{}\", error=\"insufficient_scope\", error_description=\"{}\"",
            config.realm,
            description.replace(['"', '\\'], "'")
        )),
        error: "insufficient_scope",
        message: description,
    }
}

/// What the checks of one request share.
struct Context<'a> {
    config: &'a AuthConfig,
    ring: &'a mut KeyRing,
    request: &'a Lazy<'a>,
    /// Seconds since the epoch; `None` when the host's clock cannot be read.
    now: Option<u64>,
    locked: bool,
    refetch: &'a mut Refetch,
}

fn check(requirement: &Requirement, context: &mut Context) -> Check {
    match requirement {
        Requirement::Provider(index) => check_provider(*index, context),
        Requirement::ApiKey if context.locked => match api_key(context.config, context.request) {
            Some(_) => Check::Throttled,
            None => Check::Missing,
        },
        Requirement::ApiKey => check_api_key(context.config, context.request),
        Requirement::Any(list) => {
            // The first that passes wins, and the rest are not checked at all; if none passes,
            // the most telling failure answers: that a credential could not be judged, then a
            // present-but-insufficient credential, then an invalid one.
            let mut failure = Check::Missing;
            for requirement in list {
                match check(requirement, context) {
                    ok @ Check::Ok(_) => return ok,
                    Check::Throttled => failure = Check::Throttled,
                    unavailable @ Check::Unavailable(_) if failure != Check::Throttled => failure = unavailable,
                    forbidden @ Check::Forbidden(_)
                        if !matches!(failure, Check::Forbidden(_) | Check::Unavailable(_) | Check::Throttled) =>
                    {
                        failure = forbidden
                    }
                    invalid @ Check::Invalid(_) if matches!(failure, Check::Missing) => failure = invalid,
                    _ => {}
                }
            }
            failure
        }
        Requirement::All(list) => {
            let mut identity = Identity::default();
            for requirement in list {
                match check(requirement, context) {
                    Check::Ok(part) => {
                        identity.consumer = identity.consumer.or(part.consumer);
                        identity.headers.extend(part.headers);
                        identity.hide.extend(part.hide);
                        identity.tokens.extend(part.tokens);
                    }
                    failure => return failure,
                }
            }
            Check::Ok(identity)
        }
        Requirement::AllowMissing(inner) => match check(inner, context) {
            Check::Missing => Check::Ok(Identity::default()),
            other => other,
        },
    }
}

/// A rule's `required_claims`, on the identity its requirement gave: one of the verified
/// tokens must grant them all. No credential at all asks for one (401); an API key carries
/// no claims (403).
fn rule_claims(identity: Identity, required: &[(String, String)]) -> Check {
    if identity.tokens.is_empty() {
        return match identity.consumer {
            None => Check::Missing,
            Some(_) => Check::Forbidden("this request needs a token with claims; an API key has none".into()),
        };
    }
    let mut refusal = String::new();
    for token in &identity.tokens {
        match jwt::grants(&token.claims, required) {
            Ok(()) => return Check::Ok(identity),
            Err(why) => refusal = why,
        }
    }
    Check::Forbidden(refusal)
}

fn check_provider(index: usize, context: &mut Context) -> Check {
    let Some(provider) = context.config.providers.get(index) else {
        return Check::Invalid("the provider is not configured");
    };
    // A token this worker verified before is looked up where the request holds it: only a
    // new one is copied (a token is hundreds of bytes, and most requests repeat one).
    let (ring, now) = (&*context.ring, context.now);
    let found = find_token(provider, context.request, |token| match now {
        Some(now) => ring.cached(index, token, now).map_or_else(|| Found::New(token.to_vec(), now), Found::Verified),
        None => Found::NoClock,
    });
    let Some((found, source)) = found else { return Check::Missing };
    let verified = match found {
        Found::Verified(verified) => verified,
        // Without a clock, `exp` and `nbf` cannot be checked: an expired token must not pass.
        Found::NoClock => {
            return Check::Unavailable("the gateway cannot read its clock to check the token; retry shortly")
        }
        Found::New(..) if context.locked => return Check::Throttled,
        Found::New(token, now) => match verify_new(index, provider, token, now, context) {
            Ok(verified) => verified,
            Err(refusal) => return refusal,
        },
    };
    identity(provider, verified, source)
}

/// What a request's token is to this worker.
enum Found {
    /// Verified before, and still valid.
    Verified(Rc<jwt::Verified>),
    /// Not verified before (a copy, to verify, and the time to check it at).
    New(Vec<u8>, u64),
    /// The clock cannot be read, so the token cannot be judged.
    NoClock,
}

/// Verifies a token this worker has not verified before, and remembers it. A JWT is
/// base64url text: bytes that are not text cannot be one.
fn verify_new(
    index: usize,
    provider: &Provider,
    token: Vec<u8>,
    now: u64,
    context: &mut Context,
) -> Result<Rc<jwt::Verified>, Check> {
    let Ok(token) = String::from_utf8(token) else { return Err(Check::Invalid(jwt::NOT_THREE_SEGMENTS)) };
    match jwt::verify(&token, provider, context.ring.keys(index), now) {
        Ok(verified) => {
            let exp = verified.claims.get("exp").and_then(serde_json::Value::as_f64).map(|exp| exp as u64);
            let until = exp.map(|exp| exp.saturating_add(provider.clock_skew_seconds));
            let verified = Rc::new(verified);
            context.ring.remember(index, token, Rc::clone(&verified), until, now);
            Ok(verified)
        }
        Err(Rejection::Invalid(description)) => Err(Check::Invalid(description)),
        Err(rejection @ (Rejection::UnknownKey | Rejection::NoKeys)) => {
            if !context.refetch.contains(&index) {
                context.refetch.push(index);
            }
            Err(Check::Invalid(if rejection == Rejection::NoKeys {
                "the provider has no keys (its key set could not be fetched)"
            } else {
                "the token's key is unknown"
            }))
        }
        Err(Rejection::Forbidden(description)) => Err(Check::Forbidden(description)),
    }
}

fn identity(provider: &Provider, verified: Rc<jwt::Verified>, source: Credential) -> Check {
    let mut identity = Identity { consumer: verified.consumer.clone(), ..Identity::default() };
    identity.headers.extend(verified.claim_headers.iter().cloned());
    if let Some(header) = &provider.forward_payload_header {
        identity.headers.push((header.clone(), verified.payload.clone()));
    }
    if !provider.forward {
        identity.hide.push(source);
    }
    identity.tokens.push(verified);
    Check::Ok(identity)
}

/// The provider's token in the request, looked at as bytes by `look`: whether they are text is
/// only asked when the token is not one this worker already verified (the check reads every
/// byte, and a token is hundreds of them).
fn find_token<T>(provider: &Provider, request: &Lazy, mut look: impl FnMut(&[u8]) -> T) -> Option<(T, Credential)> {
    provider.sources.iter().find_map(|source| match source {
        TokenSource::Header { name, prefix } => request.with_header_bytes(name, |value| {
            let token = match value.get(..prefix.len()) {
                Some(start) if start.eq_ignore_ascii_case(prefix.as_bytes()) => value.get(prefix.len()..)?.trim_ascii(),
                _ => return None,
            };
            (!token.is_empty()).then(|| (look(token), Credential::Header(name.clone())))
        }),
        TokenSource::Param(name) => {
            query_param(request.path(), name).map(|token| (look(token.as_bytes()), Credential::Param(name.clone())))
        }
        TokenSource::Cookie(name) => request.with_header("cookie", |cookies| {
            cookies.split(';').find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name && !value.is_empty()).then(|| (look(value.as_bytes()), Credential::Cookie))
            })
        }),
    })
}

/// The API key the request presents, and where.
fn api_key(config: &AuthConfig, request: &Lazy) -> Option<(String, Credential)> {
    match &config.api_keys.as_ref()?.source {
        ApiKeySource::Header(name) => request
            .header(name)
            .filter(|value| !value.is_empty())
            .map(|value| (value, Credential::Header(name.clone()))),
        ApiKeySource::Param(name) => {
            query_param(request.path(), name).map(|value| (value, Credential::Param(name.clone())))
        }
    }
}

fn check_api_key(config: &AuthConfig, request: &Lazy) -> Check {
    let Some(keys) = &config.api_keys else { return Check::Invalid("API keys are not configured") };
    let Some((presented, credential)) = api_key(config, request) else { return Check::Missing };
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Every digest is compared in full and in constant time, so timing does not tell how
    // close a guess came, nor which key it was near.
    let mut found = None;
    for (known, consumer) in &keys.digests {
        if bool::from(known.ct_eq(&digest)) {
            found = Some(consumer);
        }
    }
    match found {
        Some(consumer) => Check::Ok(Identity {
            consumer: Some(consumer.clone()),
            headers: vec![],
            hide: if keys.forward { vec![] } else { vec![credential] },
            ..Identity::default()
        }),
        None => Check::Invalid("the API key is not valid"),
    }
}

/// The first non-empty value of query parameter `name`, decoded as browsers encode forms
/// (`%XX`, `+` for a space).
fn query_param(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, value)| key == name && !value.is_empty())
        .map(|(_, value)| value.into_owned())
}

/// The decoded name of one `name=value` pair of a query string.
fn param_name(pair: &str) -> Option<String> {
    form_urlencoded::parse(pair.as_bytes()).next().map(|(name, _)| name.into_owned())
}

fn changes(config: &AuthConfig, identity: Identity, request: &Lazy) -> Changes {
    let mut changes = Changes::default();
    if let Some(consumer) = identity.consumer {
        changes.set_headers.push((config.consumer_header.clone(), consumer));
    }
    changes.set_headers.extend(identity.headers);
    let mut hidden_params = Vec::new();
    for credential in identity.hide {
        match credential {
            Credential::Header(name) => changes.remove_headers.push(name),
            Credential::Param(name) => hidden_params.push(name),
            Credential::Cookie => {}
        }
    }
    if !hidden_params.is_empty() {
        if let Some((base, query)) = request.path().split_once('?') {
            let kept: Vec<&str> = query
                .split('&')
                // Names compare decoded, as `query_param` found the credential: `%6Bey=` is
                // `key=` and goes too.
                .filter(|pair| !param_name(pair).is_some_and(|decoded| hidden_params.contains(&decoded)))
                .collect();
            changes.new_path =
                Some(if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::testing::FakeRequest;
    use rsa::sha2::{Digest, Sha256};
    use serde_json::json;

    /// API keys `key-ada` (ada) in `x-api-key`; `/public` open, `/mixed` key optional,
    /// everything else needs a key.
    fn config(extra: serde_json::Value) -> AuthConfig {
        let mut config = json!({
            "api_keys": {"keys": {hex::encode(Sha256::digest(b"key-ada")): "ada"}},
            "allow_cors_preflight": true,
            "rules": [
                {"match": {"path": {"prefix": "/public"}}},
                {"match": {"path": {"prefix": "/mixed"}}, "requires": {"allow_missing": {"api_key": {}}}},
                {"match": {"path": {"prefix": "/"}}, "requires": {"api_key": {}}}
            ]
        });
        for (key, value) in extra.as_object().unwrap() {
            config[key] = value.clone();
        }
        AuthConfig::parse(config.to_string().as_bytes()).unwrap()
    }

    fn get(path: &str) -> FakeRequest {
        FakeRequest::default().header(":method", "GET").header(":path", path)
    }

    fn decide_with(config: &AuthConfig, mut request: FakeRequest, locked: bool) -> Decision {
        decide(config, &mut KeyRing::new(config), &mut request, Some(1_764_000_000), locked, &mut Vec::new())
    }

    fn status(decision: &Decision) -> u32 {
        match decision {
            Decision::Allow(_) => 200,
            Decision::Deny(denial) => denial.status,
        }
    }

    const HS256_SECRET: &[u8] = b"secret-key-for-tests-only-32-bytes";

    /// [`config`] with provider `idp` (HS256, key `k1`) and `rules`.
    fn config_with_idp(rules: serde_json::Value) -> AuthConfig {
        use base64::Engine;
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(HS256_SECRET);
        let jwks = json!({"keys": [{"kty": "oct", "kid": "k1", "k": k}]}).to_string();
        config(json!({
            "providers": {"idp": {"algorithms": ["HS256"], "local_jwks": {"inline_string": jwks}}},
            "rules": rules
        }))
    }

    /// A token of `idp` with `claims`.
    fn idp_token(claims: serde_json::Value) -> String {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        encode(&header, &claims, &EncodingKey::from_secret(HS256_SECRET)).unwrap()
    }

    #[test]
    fn a_rule_can_require_claims_of_the_token_that_passed() {
        let config = config_with_idp(json!([{
            "match": {"prefix": "/orders"},
            "requires": {"requires_any": {"requirements": [{"provider_name": "idp"}, {"api_key": {}}, {"allow_missing": {}}]}},
            "required_claims": {"scope": "orders:write"}
        }]));
        let token = |scope: &str| idp_token(json!({"sub": "ada", "scope": scope, "exp": 1_764_000_000u64 + 600}));
        let with_token = |scope: &str| get("/orders").header("authorization", &format!("Bearer {}", token(scope)));
        assert_eq!(status(&decide_with(&config, with_token("orders:read orders:write"), false)), 200);
        let Decision::Deny(denial) = decide_with(&config, with_token("orders:read"), false) else { panic!("allowed") };
        assert_eq!((denial.status, denial.error), (403, "insufficient_scope"));
        assert!(denial.message.contains("`scope`"), "{}", denial.message);
        assert_eq!(status(&decide_with(&config, get("/orders"), false)), 401, "no credential: ask for one");
        let with_key = get("/orders").header("x-api-key", "key-ada");
        assert_eq!(status(&decide_with(&config, with_key, false)), 403, "an API key has no claims");
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let config = config(json!({}));
        assert_eq!(decide_with(&config, get("/public/x"), false), Decision::Allow(Changes::default()));
        assert_eq!(status(&decide_with(&config, get("/orders"), false)), 401);
        assert_eq!(status(&decide_with(&config, get("/mixed"), false)), 200, "no key at all is allowed there");
        let wrong = get("/mixed").header("x-api-key", "guess");
        assert_eq!(status(&decide_with(&config, wrong, false)), 401, "a key that is present must be valid");
    }

    #[test]
    fn a_valid_key_names_the_consumer_and_is_not_forwarded() {
        let config = config(json!({}));
        let Decision::Allow(changes) = decide_with(&config, get("/orders").header("x-api-key", "key-ada"), false)
        else {
            panic!("refused")
        };
        assert_eq!(changes.set_headers, [("x-gateway-consumer".to_string(), "ada".to_string())]);
        assert_eq!(changes.remove_headers, ["x-api-key"]);
    }

    #[test]
    fn a_key_in_the_query_is_removed_from_the_path() {
        let config = config(
            json!({"api_keys": {"from_param": "key", "keys": {hex::encode(Sha256::digest(b"key-ada")): "ada"}}}),
        );
        let Decision::Allow(changes) = decide_with(&config, get("/orders?a=1&key=key-ada&b=2"), false) else {
            panic!("refused")
        };
        assert_eq!(changes.new_path.as_deref(), Some("/orders?a=1&b=2"));
        // An encoded name or value is the same parameter, and is removed too.
        let Decision::Allow(changes) = decide_with(&config, get("/orders?%6Bey=key%2Dada&b=2"), false) else {
            panic!("refused")
        };
        assert_eq!(changes.new_path.as_deref(), Some("/orders?b=2"));
    }

    #[test]
    fn refusals_carry_rfc_6750_challenges() {
        let config = config(json!({}));
        let Decision::Deny(missing) = decide_with(&config, get("/orders"), false) else { panic!("allowed") };
        assert_eq!(missing.www_authenticate.as_deref(), Some("Bearer realm=\"gateway\""));
        let Decision::Deny(invalid) = decide_with(&config, get("/orders").header("x-api-key", "nope"), false) else {
            panic!("allowed")
        };
        assert_eq!((invalid.status, invalid.error), (401, "invalid_token"));
        assert!(invalid.www_authenticate.unwrap().contains("error=\"invalid_token\""));
    }

    #[test]
    fn no_rule_is_forbidden_and_cors_preflights_pass() {
        let config = AuthConfig::parse(
            br#"{"allow_cors_preflight": true, "rules": [{"match": {"path": {"prefix": "/only"}}}]}"#,
        )
        .unwrap();
        let Decision::Deny(denial) = decide_with(&config, get("/elsewhere"), false) else { panic!("allowed") };
        assert_eq!((denial.status, denial.error), (403, "forbidden"));
        let preflight = FakeRequest::default()
            .header(":method", "OPTIONS")
            .header(":path", "/elsewhere")
            .header("origin", "https://app.test")
            .header("access-control-request-method", "POST");
        assert_eq!(status(&decide_with(&config, preflight, false)), 200);
    }

    #[test]
    fn a_locked_out_client_gets_429_for_credentials_and_nothing_is_checked() {
        let config = config(json!({}));
        let Decision::Deny(denial) = decide_with(&config, get("/orders").header("x-api-key", "key-ada"), true) else {
            panic!("allowed")
        };
        assert_eq!((denial.status, denial.error), (429, THROTTLED));
        assert_eq!(status(&decide_with(&config, get("/orders"), true)), 401, "no credential: decided as usual");
        assert_eq!(status(&decide_with(&config, get("/public"), true)), 200);
    }

    #[test]
    fn a_bearer_token_is_judged_as_bytes_and_bytes_that_are_not_text_are_no_token() {
        let config = config_with_idp(json!([{"requires": {"provider_name": "idp"}}]));
        let token = idp_token(json!({"sub": "ada", "exp": 1_764_000_000u64 + 600}));
        let mut ring = KeyRing::new(&config);
        let mut run = |value: Vec<u8>| {
            let mut request = get("/orders");
            request.headers.push(("authorization".into(), value));
            decide(&config, &mut ring, &mut request, Some(1_764_000_000), false, &mut Vec::new())
        };
        let spaced = format!("bearer  {token} ").into_bytes();
        for _ in 0..2 {
            // The second time the token is the cached verification's.
            assert_eq!(status(&run(spaced.clone())), 200, "the scheme in any case, spaces around the token");
        }
        let mut not_text = format!("Bearer {token}").into_bytes();
        not_text.push(0xff);
        let Decision::Deny(denial) = run(not_text) else { panic!("allowed") };
        assert_eq!((denial.status, denial.message.as_str()), (401, jwt::NOT_THREE_SEGMENTS));
    }
}
