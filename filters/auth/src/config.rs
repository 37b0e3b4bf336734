//! The auth filter's configuration: JSON in Envoy's `configuration` field, compiled once into
//! [`AuthConfig`]. Field names follow Envoy's `jwt_authn` where the concept is the same.

use crate::guard::GuardSettings;
use crate::jwks::{self, Key};
use gateway_common::config::{header_name, parse_json, ConfigError};
use gateway_common::duration::parse_duration;
use gateway_common::path_match::RawPathMatch;
use gateway_common::request_match::RequestMatch;
use gateway_common::CONSUMER_HEADER;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The JSON Schema of this filter's configuration (`schemas/` holds it, generated).
#[cfg(feature = "schema")]
pub fn schema() -> schemars::Schema {
    let mut schema = schemars::schema_for!(RawConfig);
    schema.insert("title".into(), "auth filter configuration".into());
    schema
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_consumer_header")]
    consumer_header: String,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    allow_cors_preflight: bool,
    #[serde(default)]
    access_log_fields: bool,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    api_keys: Option<RawApiKeys>,
    brute_force_guard: Option<RawGuard>,
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawGuard {
    max_failures: u32,
    window: String,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawProvider {
    issuer: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    algorithms: Option<Vec<String>>,
    from_headers: Option<Vec<RawHeaderSource>>,
    #[serde(default)]
    from_params: Vec<String>,
    #[serde(default)]
    from_cookies: Vec<String>,
    #[serde(default = "default_clock_skew")]
    clock_skew_seconds: u64,
    #[serde(default)]
    require_expiration: bool,
    max_lifetime_seconds: Option<u64>,
    /// Envoy's spelling of `max_lifetime_seconds`: a duration (`"86400s"`).
    max_lifetime: Option<String>,
    #[serde(default)]
    required_claims: BTreeMap<String, String>,
    local_jwks: Option<RawLocalJwks>,
    remote_jwks: Option<RawRemoteJwks>,
    #[serde(default)]
    claim_to_headers: Vec<RawClaimToHeader>,
    forward_payload_header: Option<String>,
    #[serde(default)]
    forward: bool,
    #[serde(default = "default_consumer_claim")]
    consumer_claim: String,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawHeaderSource {
    name: String,
    #[serde(default)]
    value_prefix: String,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawLocalJwks {
    inline_string: String,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRemoteJwks {
    http_uri: RawHttpUri,
    cache_duration: Option<String>,
    max_staleness: Option<String>,
    refetch_cooldown: Option<String>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawHttpUri {
    uri: String,
    cluster: String,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawClaimToHeader {
    header_name: String,
    claim_name: String,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawApiKeys {
    from_header: Option<String>,
    from_param: Option<String>,
    /// SHA-256 (hex) of each key, to the consumer it identifies.
    keys: BTreeMap<String, String>,
    #[serde(default)]
    forward: bool,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default, rename = "match")]
    matcher: RawMatch,
    requires: Option<RawRequirement>,
    /// Claims the verified token must grant on this rule, as a provider's `required_claims`.
    #[serde(default)]
    required_claims: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawMatch {
    path: Option<RawRulePath>,
    /// Envoy's route-match spelling of `path: {prefix}` (`{"prefix": "/api"}`).
    prefix: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    route: Option<String>,
}

/// `path: {"prefix": …}` (ours), or Envoy's route-match `path: "/exact"`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
enum RawRulePath {
    Exact(String),
    Match(RawPathMatch),
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawRequirement {
    ProviderName(String),
    ApiKey(EmptyObject),
    RequiresAny(RawRequirementList),
    RequiresAll(RawRequirementList),
    AllowMissing(RawAllowMissing),
}

/// A list of requirements: a plain array, or Envoy's `{"requirements": [...]}`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
enum RawRequirementList {
    Plain(Vec<RawRequirement>),
    Envoy(RawRequirements),
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRequirements {
    requirements: Vec<RawRequirement>,
}

/// `allow_missing: {requirement}` (ours: that requirement, or no credential at all), or
/// Envoy's `allow_missing: {}` (a token from any provider, or none).
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
enum RawAllowMissing {
    AnyProvider(EmptyObject),
    Requirement(Box<RawRequirement>),
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct EmptyObject {}

fn default_consumer_header() -> String {
    CONSUMER_HEADER.to_string()
}
fn default_realm() -> String {
    "gateway".to_string()
}
fn default_clock_skew() -> u64 {
    60
}
fn compile_guard(raw: RawGuard) -> Result<GuardSettings, ConfigError> {
    if !(1..=1_000_000).contains(&raw.max_failures) {
        return Err(ConfigError::field("brute_force_guard.max_failures", "must be between 1 and 1000000"));
    }
    let window = parse_duration(&raw.window).map_err(|e| ConfigError::field("brute_force_guard.window", e))?;
    if window < Duration::from_secs(1) || window > Duration::from_secs(86_400) {
        return Err(ConfigError::field("brute_force_guard.window", "must be between 1s and 1d"));
    }
    Ok(GuardSettings { max_failures: raw.max_failures, window })
}

fn default_consumer_claim() -> String {
    "sub".to_string()
}

#[derive(Debug)]
pub struct AuthConfig {
    pub consumer_header: String,
    pub realm: String,
    pub allow_cors_preflight: bool,
    /// Publish the outcome and the consumer as filter state for Envoy's access log (two host
    /// calls per request, so only when asked).
    pub access_log_fields: bool,
    pub providers: Vec<Provider>,
    pub api_keys: Option<ApiKeys>,
    /// Failed authentications allowed per client and window before its credentials are refused
    /// unverified (see [`crate::guard`]).
    pub brute_force_guard: Option<GuardSettings>,
    pub rules: Vec<Rule>,
    /// Every header this filter sets (consumer, claim headers, payload headers): removed from
    /// every request first, so a client can never supply them.
    pub owned_headers: Vec<String>,
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub sources: Vec<TokenSource>,
    pub clock_skew_seconds: u64,
    pub require_expiration: bool,
    pub max_lifetime_seconds: Option<u64>,
    /// Claim name to the value it must be or contain.
    pub required_claims: Vec<(String, String)>,
    pub jwks: JwksSource,
    pub claim_to_headers: Vec<(String, String)>,
    pub forward_payload_header: Option<String>,
    pub forward: bool,
    pub consumer_claim: String,
}

#[derive(Debug)]
pub enum JwksSource {
    /// Keys from the configuration (`local_jwks`).
    Local(Vec<Key>),
    /// Keys fetched from an Envoy cluster (`remote_jwks`).
    Remote(RemoteJwks),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    /// How long a fetched key set is fresh; it is refreshed before that.
    pub cache_duration: Duration,
    /// How long past `cache_duration` the last good set is still used while refreshes fail.
    pub max_staleness: Duration,
    /// The least time between two fetches triggered by tokens with an unknown `kid`.
    pub refetch_cooldown: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Lower-case header name and the prefix before the token (`Bearer `).
    Header {
        name: String,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

#[derive(Debug)]
pub struct ApiKeys {
    pub source: ApiKeySource,
    /// SHA-256 digest to consumer name.
    pub digests: Vec<([u8; 32], String)>,
    pub forward: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    Header(String),
    Param(String),
}

#[derive(Debug)]
pub struct Rule {
    pub matcher: RequestMatch,
    /// `None`: no authentication.
    pub requires: Option<Requirement>,
    /// Claims a token that met `requires` must grant (name, wanted value).
    pub required_claims: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// Index into `AuthConfig::providers`.
    Provider(usize),
    ApiKey,
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// Passes when the inner requirement finds no credential at all; a credential that is
    /// present must still be valid.
    AllowMissing(Box<Requirement>),
}

/// The algorithms a provider accepts unless it lists its own: every asymmetric one. HMAC
/// (a shared secret) must be asked for explicitly.
pub const DEFAULT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl AuthConfig {
    pub fn parse(bytes: &[u8]) -> Result<AuthConfig, ConfigError> {
        let raw: RawConfig = parse_json(bytes)?;
        let consumer_header = header_name(&raw.consumer_header, "consumer_header")?;
        if raw.realm.is_empty() || raw.realm.contains(['"', '\\']) || !raw.realm.is_ascii() {
            return Err(ConfigError::field("realm", "must be non-empty ASCII without quotes or backslashes"));
        }
        let mut owned_headers = vec![consumer_header.clone()];
        let mut providers = Vec::new();
        for (name, provider) in raw.providers {
            let provider = compile_provider(&name, provider, &format!("providers.{name}"))?;
            for header in
                provider.claim_to_headers.iter().map(|(header, _)| header).chain(&provider.forward_payload_header)
            {
                if !owned_headers.contains(header) {
                    owned_headers.push(header.clone());
                }
            }
            providers.push(provider);
        }
        let api_keys = raw.api_keys.map(|keys| compile_api_keys(keys, "api_keys")).transpose()?;
        let brute_force_guard = raw.brute_force_guard.map(compile_guard).transpose()?;
        if raw.rules.is_empty() {
            return Err(ConfigError::field(
                "rules",
                "must list at least one rule (use `{}` for a rule that needs no authentication)",
            ));
        }
        let mut rules = Vec::new();
        for (index, rule) in raw.rules.into_iter().enumerate() {
            let field = format!("rules[{index}]");
            let path = match (rule.matcher.path, rule.matcher.prefix) {
                (Some(RawRulePath::Match(path)), None) => Some(path),
                (Some(RawRulePath::Exact(exact)), None) => Some(RawPathMatch::Exact(exact)),
                (None, Some(prefix)) => Some(RawPathMatch::Prefix(prefix)),
                (None, None) => None,
                (Some(_), Some(_)) => {
                    return Err(ConfigError::field(format!("{field}.match"), "set one of `path` and `prefix`"))
                }
            };
            let matcher = RequestMatch::compile(
                path.as_ref(),
                &rule.matcher.methods,
                rule.matcher.route,
                &format!("{field}.match"),
            )?;
            let requires = rule
                .requires
                .map(|requirement| {
                    compile_requirement(requirement, &providers, api_keys.is_some(), &format!("{field}.requires"))
                })
                .transpose()?;
            if !rule.required_claims.is_empty() && requires.is_none() {
                return Err(ConfigError::field(
                    format!("{field}.required_claims"),
                    "needs `requires`: a rule without authentication has no claims to check",
                ));
            }
            let required_claims = rule.required_claims.into_iter().collect();
            rules.push(Rule { matcher, requires, required_claims });
        }
        Ok(AuthConfig {
            consumer_header,
            realm: raw.realm,
            allow_cors_preflight: raw.allow_cors_preflight,
            access_log_fields: raw.access_log_fields,
            providers,
            api_keys,
            brute_force_guard,
            rules,
            owned_headers,
        })
    }
}

fn compile_provider(name: &str, raw: RawProvider, field: &str) -> Result<Provider, ConfigError> {
    let valid_name = (1..=64).contains(&name.len())
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if !valid_name {
        // The name appears in metric names, where dots would split it.
        return Err(ConfigError::field(field, format!("`{name}` is not a provider name ([A-Za-z0-9_-]{{1,64}})")));
    }
    let algorithms = match raw.algorithms {
        None => DEFAULT_ALGORITHMS.to_vec(),
        Some(names) if names.is_empty() => {
            return Err(ConfigError::field(format!("{field}.algorithms"), "must list at least one algorithm"))
        }
        Some(names) => names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                // `Algorithm::from_str` knows no `none`, in any spelling: unsigned tokens are
                // impossible to allow.
                Algorithm::from_str(name).map_err(|_| {
                    ConfigError::field(
                        format!("{field}.algorithms[{index}]"),
                        format!("`{name}` is not a supported signature algorithm"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let mut sources = Vec::new();
    for (index, header) in raw
        .from_headers
        .unwrap_or_else(|| vec![RawHeaderSource { name: "authorization".into(), value_prefix: "Bearer ".into() }])
        .into_iter()
        .enumerate()
    {
        let name = header_name(&header.name, &format!("{field}.from_headers[{index}].name"))?;
        sources.push(TokenSource::Header { name, prefix: header.value_prefix });
    }
    sources.extend(raw.from_params.into_iter().map(TokenSource::Param));
    sources.extend(raw.from_cookies.into_iter().map(TokenSource::Cookie));
    let jwks = match (raw.local_jwks, raw.remote_jwks) {
        (Some(local), None) => {
            let (keys, skipped) = jwks::parse(local.inline_string.as_bytes())
                .map_err(|message| ConfigError::field(format!("{field}.local_jwks.inline_string"), message))?;
            if !skipped.is_empty() {
                log::warn!("auth: provider `{name}`: skipped keys: {}", skipped.join("; "));
            }
            JwksSource::Local(keys)
        }
        (None, Some(remote)) => JwksSource::Remote(compile_remote(remote, &format!("{field}.remote_jwks"))?),
        _ => return Err(ConfigError::field(field, "set exactly one of `local_jwks` and `remote_jwks`")),
    };
    let claim_to_headers = raw
        .claim_to_headers
        .into_iter()
        .enumerate()
        .map(|(index, mapping)| {
            let header = header_name(&mapping.header_name, &format!("{field}.claim_to_headers[{index}].header_name"))?;
            if mapping.claim_name.is_empty() {
                return Err(ConfigError::field(
                    format!("{field}.claim_to_headers[{index}].claim_name"),
                    "must not be empty",
                ));
            }
            Ok((header, mapping.claim_name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let forward_payload_header = raw
        .forward_payload_header
        .map(|header| header_name(&header, &format!("{field}.forward_payload_header")))
        .transpose()?;
    let max_lifetime_seconds = match (raw.max_lifetime_seconds, raw.max_lifetime) {
        (seconds, None) => seconds,
        (None, Some(text)) => Some(
            parse_duration(&text)
                .map_err(|message| ConfigError::field(format!("{field}.max_lifetime"), message))?
                .as_secs(),
        ),
        (Some(_), Some(_)) => {
            return Err(ConfigError::field(field, "set one of `max_lifetime_seconds` and `max_lifetime`"))
        }
    };
    Ok(Provider {
        name: name.to_string(),
        issuer: raw.issuer,
        audiences: raw.audiences,
        algorithms,
        sources,
        clock_skew_seconds: raw.clock_skew_seconds,
        require_expiration: raw.require_expiration,
        max_lifetime_seconds,
        required_claims: raw.required_claims.into_iter().collect(),
        jwks,
        claim_to_headers,
        forward_payload_header,
        forward: raw.forward,
        consumer_claim: raw.consumer_claim,
    })
}

fn compile_remote(raw: RawRemoteJwks, field: &str) -> Result<RemoteJwks, ConfigError> {
    let uri_field = format!("{field}.http_uri.uri");
    let rest = raw
        .http_uri
        .uri
        .strip_prefix("http://")
        .or_else(|| raw.http_uri.uri.strip_prefix("https://"))
        .ok_or_else(|| ConfigError::field(&uri_field, "must start with http:// or https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(ConfigError::field(uri_field, "has no host"));
    }
    if raw.http_uri.cluster.is_empty() {
        return Err(ConfigError::field(format!("{field}.http_uri.cluster"), "must name an Envoy cluster"));
    }
    let duration = |text: Option<String>, default: Duration, name: &str| -> Result<Duration, ConfigError> {
        match text {
            None => Ok(default),
            Some(text) => parse_duration(&text)
                .and_then(|d| if d.is_zero() { Err("must be more than zero".to_string()) } else { Ok(d) })
                .map_err(|message| ConfigError::field(format!("{field}.{name}"), message)),
        }
    };
    Ok(RemoteJwks {
        cluster: raw.http_uri.cluster,
        authority: authority.to_string(),
        path: path.to_string(),
        timeout: duration(raw.http_uri.timeout, Duration::from_secs(1), "http_uri.timeout")?,
        cache_duration: duration(raw.cache_duration, Duration::from_secs(300), "cache_duration")?,
        max_staleness: duration(raw.max_staleness, Duration::from_secs(3600), "max_staleness")?,
        refetch_cooldown: duration(raw.refetch_cooldown, Duration::from_secs(10), "refetch_cooldown")?,
    })
}

fn compile_api_keys(raw: RawApiKeys, field: &str) -> Result<ApiKeys, ConfigError> {
    let source = match (raw.from_header, raw.from_param) {
        (Some(header), None) => ApiKeySource::Header(header_name(&header, &format!("{field}.from_header"))?),
        (None, Some(param)) if !param.is_empty() => ApiKeySource::Param(param),
        (None, None) => ApiKeySource::Header("x-api-key".into()),
        _ => return Err(ConfigError::field(field, "set one of `from_header` and `from_param`")),
    };
    if raw.keys.is_empty() {
        return Err(ConfigError::field(format!("{field}.keys"), "must list at least one key digest"));
    }
    let mut digests = Vec::new();
    for (digest, consumer) in raw.keys {
        let mut array = [0u8; 32];
        hex::decode_to_slice(&digest, &mut array).map_err(|_| {
            // The digest is not secret, but a key pasted by mistake would be: never echo it.
            ConfigError::field(format!("{field}.keys"), "every key must be a SHA-256 digest (64 hex digits), not a key")
        })?;
        if consumer.is_empty() {
            return Err(ConfigError::field(format!("{field}.keys.{digest}"), "the consumer name must not be empty"));
        }
        digests.push((array, consumer));
    }
    Ok(ApiKeys { source, digests, forward: raw.forward })
}

fn compile_requirement(
    raw: RawRequirement,
    providers: &[Provider],
    has_api_keys: bool,
    field: &str,
) -> Result<Requirement, ConfigError> {
    Ok(match raw {
        RawRequirement::ProviderName(name) => {
            Requirement::Provider(providers.iter().position(|provider| provider.name == name).ok_or_else(|| {
                ConfigError::field(format!("{field}.provider_name"), format!("no provider is named `{name}`"))
            })?)
        }
        RawRequirement::ApiKey(_) => {
            if !has_api_keys {
                return Err(ConfigError::field(format!("{field}.api_key"), "`api_keys` is not configured"));
            }
            Requirement::ApiKey
        }
        RawRequirement::RequiresAny(list) => {
            let (list, field) = list.with_field(&format!("{field}.requires_any"));
            let allow_missing = list.iter().any(RawRequirement::is_allow_missing_any);
            let list: Vec<RawRequirement> =
                list.into_iter().filter(|requirement| !requirement.is_allow_missing_any()).collect();
            // Envoy's `requires_any: [A, {allow_missing: {}}]`: A, or no token at all.
            let any = match (list.is_empty(), allow_missing) {
                (true, false) => return Err(ConfigError::field(field, "must list at least one requirement")),
                (true, true) => any_provider(providers, &field)?,
                (false, _) => Requirement::Any(compile_list(list, providers, has_api_keys, &field)?),
            };
            if allow_missing {
                Requirement::AllowMissing(Box::new(any))
            } else {
                any
            }
        }
        RawRequirement::RequiresAll(list) => {
            let (list, field) = list.with_field(&format!("{field}.requires_all"));
            if list.is_empty() {
                return Err(ConfigError::field(field, "must list at least one requirement"));
            }
            if list.iter().any(RawRequirement::is_allow_missing_any) {
                return Err(ConfigError::field(field, "`allow_missing: {}` belongs in `requires_any` or alone"));
            }
            Requirement::All(compile_list(list, providers, has_api_keys, &field)?)
        }
        RawRequirement::AllowMissing(RawAllowMissing::AnyProvider(_)) => {
            Requirement::AllowMissing(Box::new(any_provider(providers, &format!("{field}.allow_missing"))?))
        }
        RawRequirement::AllowMissing(RawAllowMissing::Requirement(inner)) => Requirement::AllowMissing(Box::new(
            compile_requirement(*inner, providers, has_api_keys, &format!("{field}.allow_missing"))?,
        )),
    })
}

impl RawRequirement {
    fn is_allow_missing_any(&self) -> bool {
        matches!(self, RawRequirement::AllowMissing(RawAllowMissing::AnyProvider(_)))
    }
}

impl RawRequirementList {
    /// The requirements, and the field path their indices follow.
    fn with_field(self, field: &str) -> (Vec<RawRequirement>, String) {
        match self {
            RawRequirementList::Plain(list) => (list, field.to_string()),
            RawRequirementList::Envoy(RawRequirements { requirements }) => {
                (requirements, format!("{field}.requirements"))
            }
        }
    }
}

fn compile_list(
    list: Vec<RawRequirement>,
    providers: &[Provider],
    has_api_keys: bool,
    field: &str,
) -> Result<Vec<Requirement>, ConfigError> {
    list.into_iter()
        .enumerate()
        .map(|(index, raw)| compile_requirement(raw, providers, has_api_keys, &format!("{field}[{index}]")))
        .collect()
}

/// A token from any provider: what Envoy's `allow_missing: {}` checks when one is present.
fn any_provider(providers: &[Provider], field: &str) -> Result<Requirement, ConfigError> {
    if providers.is_empty() {
        return Err(ConfigError::field(field, "`allow_missing: {}` needs at least one provider"));
    }
    Ok(Requirement::Any((0..providers.len()).map(Requirement::Provider).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(config: Value) -> Result<AuthConfig, ConfigError> {
        AuthConfig::parse(config.to_string().as_bytes())
    }

    fn error(config: Value) -> ConfigError {
        parse(config).err().unwrap()
    }

    fn hmac_jwks() -> String {
        json!({"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0zMi1ieXRlcw"}]})
            .to_string()
    }

    fn with_provider(provider: Value) -> Value {
        json!({"providers": {"idp": provider}, "rules": [{"requires": {"provider_name": "idp"}}]})
    }

    #[test]
    fn envoy_jwt_authn_spellings_mean_the_same() {
        let local = json!({"local_jwks": {"inline_string": hmac_jwks()}});
        let providers = json!({"idp": local, "other": local});
        let requires = |requires: Value| {
            let config = parse(json!({"providers": providers, "rules": [{"requires": requires}]})).unwrap();
            config.rules[0].requires.clone()
        };
        let (idp, other) = (json!({"provider_name": "idp"}), json!({"provider_name": "other"}));
        assert_eq!(
            requires(json!({"requires_any": {"requirements": [idp, other]}})),
            requires(json!({"requires_any": [idp, other]}))
        );
        assert_eq!(
            requires(json!({"requires_all": {"requirements": [idp, other]}})),
            requires(json!({"requires_all": [idp, other]}))
        );
        // `[A, {allow_missing: {}}]`: A, or no token at all.
        assert_eq!(
            requires(json!({"requires_any": {"requirements": [idp, {"allow_missing": {}}]}})),
            requires(json!({"allow_missing": {"requires_any": [idp]}}))
        );
        // Alone: a token from any provider, or none.
        assert_eq!(
            requires(json!({"allow_missing": {}})),
            Some(Requirement::AllowMissing(Box::new(Requirement::Any(vec![
                Requirement::Provider(0),
                Requirement::Provider(1)
            ]))))
        );
        let matcher = |rule: Value| parse(json!({"rules": [rule]})).unwrap().rules[0].matcher.clone();
        assert_eq!(
            matcher(json!({"match": {"prefix": "/api"}})),
            matcher(json!({"match": {"path": {"prefix": "/api"}}}))
        );
        assert_eq!(matcher(json!({"match": {"path": "/api"}})), matcher(json!({"match": {"path": {"exact": "/api"}}})));
        let lifetime = |provider: Value| parse(with_provider(provider)).unwrap().providers[0].max_lifetime_seconds;
        let mut provider = local.clone();
        provider["max_lifetime"] = json!("3600s");
        assert_eq!(lifetime(provider), Some(3600));
        let mut provider = local.clone();
        provider["max_lifetime"] = json!("1.5s");
        assert_eq!(lifetime(provider), Some(1));
    }

    #[test]
    fn jwt_authn_fields_without_a_meaning_here_are_refused_by_name() {
        let local = json!({"local_jwks": {"inline_string": hmac_jwks()}});
        let message = |config: Value| error(config).to_string();
        let providers = json!({"idp": local});
        assert!(message(json!({"providers": providers, "rules": [{"requires": {"allow_missing_or_failed": {}}}]}))
            .contains("allow_missing_or_failed"));
        assert!(message(with_provider(json!({"local_jwks": {"filename": "/etc/jwks.json"}}))).contains("filename"));
        let mut cached = local.clone();
        cached["jwt_cache_config"] = json!({"jwt_cache_size": 100});
        assert!(message(with_provider(cached)).contains("jwt_cache_config"));
    }

    #[test]
    fn envoy_durations_with_a_fraction_are_accepted() {
        let remote = json!({"remote_jwks": {
            "http_uri": {"uri": "http://idp/jwks", "cluster": "idp", "timeout": "1.5s"},
            "cache_duration": "300.5s"
        }});
        let config = parse(with_provider(remote)).unwrap();
        let JwksSource::Remote(remote) = &config.providers[0].jwks else { panic!("remote") };
        assert_eq!(remote.timeout, Duration::from_millis(1500));
        assert_eq!(remote.cache_duration, Duration::from_millis(300_500));
    }

    #[test]
    fn defaults() {
        let config = parse(json!({"rules": [{}]})).unwrap();
        assert_eq!(config.consumer_header, "x-gateway-consumer");
        assert_eq!(config.realm, "gateway");
        assert_eq!(config.owned_headers, ["x-gateway-consumer"]);
        assert!(config.brute_force_guard.is_none() && config.api_keys.is_none() && !config.access_log_fields);
        assert!(config.rules[0].requires.is_none());
        let config = parse(with_provider(json!({"local_jwks": {"inline_string": hmac_jwks()}}))).unwrap();
        let provider = &config.providers[0];
        assert_eq!(provider.algorithms, DEFAULT_ALGORITHMS, "HMAC only when asked for");
        assert_eq!(provider.sources, [TokenSource::Header { name: "authorization".into(), prefix: "Bearer ".into() }]);
        assert_eq!((provider.clock_skew_seconds, provider.consumer_claim.as_str()), (60, "sub"));
    }

    #[test]
    fn remote_key_sets_have_envoys_defaults_and_their_uri_split() {
        let uri = json!({"uri": "https://idp.example/.well-known/jwks.json", "cluster": "idp"});
        let config = parse(with_provider(json!({"remote_jwks": {"http_uri": uri}}))).unwrap();
        let JwksSource::Remote(remote) = &config.providers[0].jwks else { panic!("not remote") };
        assert_eq!((remote.authority.as_str(), remote.path.as_str()), ("idp.example", "/.well-known/jwks.json"));
        assert_eq!(remote.timeout, Duration::from_secs(1));
        assert_eq!(remote.cache_duration, Duration::from_secs(300));
        assert_eq!(remote.max_staleness, Duration::from_secs(3600));
        assert_eq!(remote.refetch_cooldown, Duration::from_secs(10));
    }

    #[test]
    fn headers_the_filter_sets_are_owned_so_clients_cannot_send_them() {
        let config = parse(with_provider(json!({
            "local_jwks": {"inline_string": hmac_jwks()},
            "claim_to_headers": [{"header_name": "X-Team", "claim_name": "org.team"}],
            "forward_payload_header": "x-payload"
        })))
        .unwrap();
        assert_eq!(config.owned_headers, ["x-gateway-consumer", "x-team", "x-payload"]);
    }

    #[test]
    fn errors_name_the_field() {
        let local = json!({"local_jwks": {"inline_string": hmac_jwks()}});
        let cases = [
            (json!({"rules": []}), "rules"),
            (json!({"rules": [{}], "realm": "a\"b"}), "realm"),
            (json!({"rules": [{}], "consumer_header": "bad header"}), "consumer_header"),
            (json!({"providers": {"a.b": local}, "rules": [{}]}), "providers.a.b"),
            (with_provider(json!({})), "providers.idp"),
            (
                with_provider(json!({"local_jwks": {"inline_string": hmac_jwks()}, "algorithms": ["none"]})),
                "providers.idp.algorithms[0]",
            ),
            (with_provider(json!({"local_jwks": {"inline_string": "{}"}})), "providers.idp.local_jwks.inline_string"),
            (
                with_provider(json!({"remote_jwks": {"http_uri": {"uri": "ftp://x/", "cluster": "c"}}})),
                "providers.idp.remote_jwks.http_uri.uri",
            ),
            (
                with_provider(
                    json!({"remote_jwks": {"http_uri": {"uri": "http://x/", "cluster": "c"}, "cache_duration": "0s"}}),
                ),
                "providers.idp.remote_jwks.cache_duration",
            ),
            (json!({"rules": [{"requires": {"provider_name": "nobody"}}]}), "rules[0].requires.provider_name"),
            (json!({"rules": [{"requires": {"api_key": {}}}]}), "rules[0].requires.api_key"),
            (json!({"rules": [{"requires": {"requires_any": []}}]}), "rules[0].requires.requires_any"),
            (json!({"rules": [{"match": {"methods": ["G T"]}}]}), "rules[0].match.methods[0]"),
            (json!({"rules": [{"match": {"prefix": "/a", "path": "/b"}}]}), "rules[0].match"),
            (json!({"rules": [{"required_claims": {"scope": "a"}}]}), "rules[0].required_claims"),
            (
                with_provider(
                    json!({"local_jwks": {"inline_string": hmac_jwks()}, "max_lifetime": "1h", "max_lifetime_seconds": 5}),
                ),
                "providers.idp",
            ),
            (
                with_provider(json!({"local_jwks": {"inline_string": hmac_jwks()}, "max_lifetime": "soon"})),
                "providers.idp.max_lifetime",
            ),
            (json!({"rules": [{"requires": {"allow_missing": {}}}]}), "rules[0].requires.allow_missing"),
            (
                json!({"rules": [{"requires": {"requires_any": {"requirements": []}}}]}),
                "rules[0].requires.requires_any.requirements",
            ),
            (
                json!({"rules": [{}], "brute_force_guard": {"max_failures": 0, "window": "1m"}}),
                "brute_force_guard.max_failures",
            ),
            (
                json!({"rules": [{}], "brute_force_guard": {"max_failures": 5, "window": "2d"}}),
                "brute_force_guard.window",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(error(config.clone()).field, field, "{config}");
        }
        let unknown = error(json!({"rules": [{}], "realms": "x"}));
        assert!(unknown.message.contains("unknown field `realms`"), "{unknown}");
    }

    #[test]
    fn a_key_pasted_instead_of_its_digest_is_refused_without_echoing_it() {
        let error = error(json!({"api_keys": {"keys": {"my-secret-key": "ada"}}, "rules": [{}]}));
        assert_eq!(error.field, "api_keys.keys");
        assert!(!error.to_string().contains("my-secret-key"));
    }
}
