//! Checking one JWT against one provider: structure, header, algorithm and key, signature
//! (RSA with keys prepared once per key set, the others by `jsonwebtoken`), then the claims
//! against the host's clock.
//!
//! What is refused, and why (RFC 8725):
//! - anything but three base64url segments, tokens over `MAX_TOKEN_BYTES`;
//! - `alg: none` in any spelling (not an algorithm here at all), algorithms the provider does
//!   not list, keys whose type or own `alg` disagree with the token's (algorithm confusion);
//! - `crit` header parameters (none are understood, so RFC 7515 4.1.11 requires refusal);
//!   keys embedded or referenced in the header (`jwk`, `jku`, `x5u`, `x5c`) are never used;
//! - non-numeric time claims, expired or not-yet-valid tokens (with `clock_skew_seconds`),
//!   lifetimes over `max_lifetime_seconds`, wrong issuer or audience;
//! - valid tokens without a required claim value are *forbidden* (403), not invalid.

use crate::config::{Provider, MAX_TOKEN_BYTES};
use crate::jwks::Key;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Validation};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub claims: Value,
    /// The payload segment as it came (base64url), for `forward_payload_header`.
    pub payload: String,
    /// The provider's `consumer_claim` as header text. This and `claim_headers` are read once,
    /// when the token is verified, not again for every request that repeats it.
    pub consumer: Option<String>,
    /// The provider's `claim_to_headers`: each header with its claim's text, where it has one.
    pub claim_headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 401 `invalid_token`; the text is the `error_description` (never contains the token).
    Invalid(&'static str),
    /// The token is unusable only because it names a key the set does not have (a key
    /// rotation the gateway has not seen yet).
    UnknownKey,
    /// The provider has no keys at all (its remote set was never fetched, or went stale).
    NoKeys,
    /// 403 `insufficient_scope`: the claim that is missing or wrong.
    Forbidden(String),
}

/// Why a token that is not `header.payload.signature` in base64url is refused.
pub const NOT_THREE_SEGMENTS: &str = "the token is not three base64url segments";

/// Verifies `token` for `provider` with the provider's current `keys`.
pub fn verify(token: &str, provider: &Provider, keys: &[Key], now_seconds: u64) -> Result<Verified, Rejection> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::Invalid("the token is too large"));
    }
    let segments: Vec<&str> = token.split('.').collect();
    let well_formed = segments.len() == 3
        && segments.iter().all(|segment| segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        && segments.iter().take(2).all(|segment| !segment.is_empty());
    let (Some(header_segment), Some(payload), true) = (segments.first(), segments.get(1), well_formed) else {
        return Err(Rejection::Invalid(NOT_THREE_SEGMENTS));
    };
    let header_json: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header_segment)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(Rejection::Invalid("the token header is not base64url JSON"))?;
    if header_json.get("crit").is_some() {
        return Err(Rejection::Invalid("the token has critical header parameters"));
    }
    let header = decode_header(token)
        .map_err(|_| Rejection::Invalid("the token header is malformed or its algorithm unsupported"))?;
    let alg = header.alg;
    if !provider.algorithms.contains(&alg) {
        return Err(Rejection::Invalid("the token's algorithm is not allowed"));
    }
    if keys.is_empty() {
        return Err(Rejection::NoKeys);
    }
    let candidates: Vec<_> = keys
        .iter()
        .filter(|key| key.accepts(alg))
        .filter(|key| header.kid.is_none() || key.kid == header.kid)
        .collect();
    if candidates.is_empty() {
        return Err(if header.kid.is_some() && !keys.iter().any(|key| key.kid == header.kid) {
            Rejection::UnknownKey
        } else {
            Rejection::Invalid("no key of the provider can verify the token")
        });
    }
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    // RSA keys come prepared (see `rsa_key`): the signature is checked with them, and
    // `jsonwebtoken` then only reads the signed payload.
    let mut payload_only = validation.clone();
    // The replacement (`dangerous::insecure_decode`) skips the typed read of the registered
    // claims that refuses a repeated `exp` (see `payload_error`); this keeps it.
    #[allow(deprecated)]
    payload_only.insecure_disable_signature_validation();
    let (signed, signature) = token.rsplit_once('.').unwrap_or_default();
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).unwrap_or_default();
    let mut payload_problem = None;
    let claims = candidates
        .iter()
        .find_map(|key| {
            let decoded = match &key.rsa {
                Some(rsa) => {
                    if !rsa.verifies(alg, signed.as_bytes(), &signature) {
                        return None;
                    }
                    decode::<Value>(token, &key.decoding, &payload_only)
                }
                None => decode::<Value>(token, &key.decoding, &validation),
            };
            match decoded {
                Ok(data) => Some(data.claims),
                Err(error) => {
                    // The signature is checked first, so any other error is about a signed payload.
                    if !matches!(error.kind(), ErrorKind::InvalidSignature) {
                        payload_problem = Some(payload_error(error.kind()));
                    }
                    None
                }
            }
        })
        .ok_or(Rejection::Invalid(payload_problem.unwrap_or("the token's signature is invalid")))?;
    check_claims(&claims, provider, now_seconds)?;
    let consumer = claim(&claims, &provider.consumer_claim).and_then(claim_text);
    let claim_headers = provider
        .claim_to_headers
        .iter()
        .filter_map(|(header, name)| Some((header.clone(), claim(&claims, name).and_then(claim_text)?)))
        .collect();
    Ok(Verified { claims, payload: (*payload).to_string(), consumer, claim_headers })
}

/// What is wrong with a signed payload that could not be read. A registered claim given twice
/// is named: RFC 7519 §4 lets a parser refuse duplicate claim names, and for the claims that
/// decide validity this one does (which `exp` would count is exactly what must not be guessed).
fn payload_error(kind: &ErrorKind) -> &'static str {
    let ErrorKind::Json(error) = kind else { return "the token's payload cannot be read" };
    let message = error.to_string();
    let Some(name) = message.strip_prefix("duplicate field `").and_then(|rest| rest.split('`').next()) else {
        return "the token's payload is not JSON";
    };
    match name {
        "exp" => "the token's payload repeats the `exp` claim",
        "nbf" => "the token's payload repeats the `nbf` claim",
        "iat" => "the token's payload repeats the `iat` claim",
        "iss" => "the token's payload repeats the `iss` claim",
        "aud" => "the token's payload repeats the `aud` claim",
        "sub" => "the token's payload repeats the `sub` claim",
        _ => "the token's payload repeats a registered claim",
    }
}

fn check_claims(claims: &Value, provider: &Provider, now: u64) -> Result<(), Rejection> {
    let Value::Object(object) = claims else {
        return Err(Rejection::Invalid("the token's payload is not a JSON object"));
    };
    let time = |name: &str| -> Result<Option<u64>, Rejection> {
        match object.get(name) {
            None => Ok(None),
            // Fractions are allowed by RFC 7519 (NumericDate); they are truncated.
            Some(Value::Number(number)) => match number.as_f64() {
                Some(value) if value >= 0.0 && value.is_finite() => Ok(Some(value as u64)),
                _ => Err(Rejection::Invalid("a time claim is not a valid NumericDate")),
            },
            Some(_) => Err(Rejection::Invalid("a time claim is not a number")),
        }
    };
    let (exp, nbf, iat) = (time("exp")?, time("nbf")?, time("iat")?);
    let skew = provider.clock_skew_seconds;
    match exp {
        Some(exp) if now > exp.saturating_add(skew) => return Err(Rejection::Invalid("the token has expired")),
        None if provider.require_expiration || provider.max_lifetime_seconds.is_some() => {
            return Err(Rejection::Invalid("the token has no expiration"))
        }
        _ => {}
    }
    if matches!(nbf, Some(nbf) if nbf > now.saturating_add(skew)) {
        return Err(Rejection::Invalid("the token is not valid yet"));
    }
    if let (Some(max), Some(exp)) = (provider.max_lifetime_seconds, exp) {
        let start = iat.or(nbf).unwrap_or(now);
        if exp.saturating_sub(start) > max {
            return Err(Rejection::Invalid("the token's lifetime is longer than allowed"));
        }
    }
    if let Some(issuer) = &provider.issuer {
        if object.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(Rejection::Invalid("the token's issuer is not accepted"));
        }
    }
    if !provider.audiences.is_empty() {
        let audiences: Vec<&str> = match object.get("aud") {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let accepted = audiences
            .iter()
            .any(|aud| provider.audiences.iter().any(|wanted| normalize_audience(wanted) == normalize_audience(aud)));
        if !accepted {
            return Err(Rejection::Invalid("the token's audience is not accepted"));
        }
    }
    grants(claims, &provider.required_claims).map_err(Rejection::Forbidden)
}

/// Whether `claims` grant every (name, wanted) pair: a string claim equal to the value or
/// listing it space-separated (`scope`), an array containing it, or a number or boolean
/// printed as it. The error says which claim falls short.
pub fn grants(claims: &Value, required: &[(String, String)]) -> Result<(), String> {
    for (name, wanted) in required {
        let present = match claim(claims, name) {
            Some(Value::String(text)) => text == wanted || text.split(' ').any(|item| item == wanted),
            Some(Value::Array(items)) => items.iter().any(|item| item.as_str() == Some(wanted.as_str())),
            Some(Value::Bool(flag)) => flag.to_string() == *wanted,
            Some(Value::Number(number)) => number.to_string() == *wanted,
            _ => false,
        };
        if !present {
            return Err(format!("the token's `{name}` claim does not grant `{wanted}`"));
        }
    }
    Ok(())
}

/// Audiences compare as Envoy's jwt_authn compares them: an `http://` or `https://` prefix
/// and a trailing `/` are ignored, so `https://example_service2/` matches `example_service2`.
fn normalize_audience(audience: &str) -> &str {
    let bare = audience.strip_prefix("https://").or_else(|| audience.strip_prefix("http://")).unwrap_or(audience);
    bare.strip_suffix('/').unwrap_or(bare)
}

/// The claim at a dotted path (`realm_access.roles`).
pub fn claim<'c>(claims: &'c Value, path: &str) -> Option<&'c Value> {
    path.split('.').try_fold(claims, |value, key| value.get(key))
}

/// A claim as header text: strings as they are, numbers and booleans printed, arrays of those
/// joined with commas. Objects and control characters are not put in headers.
pub fn claim_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|item| match item {
                    Value::Array(_) | Value::Object(_) | Value::Null => None,
                    scalar => claim_text(scalar),
                })
                .collect();
            parts?.join(",")
        }
        Value::Object(_) | Value::Null => return None,
    };
    (!text.chars().any(char::is_control)).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthConfig, JwksSource};
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"secret-key-for-tests-only-32-bytes";
    const NOW: u64 = 1_764_000_000;

    fn provider(extra: Value) -> (Provider, Vec<Key>) {
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        let mut provider = json!({
            "issuer": "https://idp.test", "audiences": ["https://orders.test/"], "algorithms": ["HS256"],
            "local_jwks": {"inline_string": json!({"keys": [{"kty": "oct", "kid": "k1", "k": k}]}).to_string()}
        });
        for (key, value) in extra.as_object().unwrap() {
            provider[key] = value.clone();
        }
        let config = json!({"providers": {"idp": provider}, "rules": [{}]});
        let config = AuthConfig::parse(config.to_string().as_bytes()).unwrap();
        let provider = config.providers.into_iter().next().unwrap();
        let JwksSource::Local(keys) = &provider.jwks else { panic!("local") };
        let keys = keys.clone();
        (provider, keys)
    }

    fn token(kid: &str, claims: Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.into());
        encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn good() -> Value {
        json!({"iss": "https://idp.test", "aud": "orders.test", "sub": "ada", "exp": NOW + 60, "scope": "a b"})
    }

    fn verdict(extra: Value, token: &str) -> Result<Verified, Rejection> {
        let (provider, keys) = provider(extra);
        verify(token, &provider, &keys, NOW)
    }

    #[test]
    fn a_good_token_gives_its_claims_and_payload() {
        let token = token("k1", good());
        let verified = verdict(json!({}), &token).unwrap();
        assert_eq!(verified.claims["sub"], "ada");
        assert_eq!(verified.payload, token.split('.').nth(1).unwrap());
    }

    #[test]
    fn claims_are_checked_against_the_clock_and_the_provider() {
        let with = |change: Value| {
            let mut claims = good();
            for (key, value) in change.as_object().unwrap() {
                claims[key] = value.clone();
            }
            token("k1", claims)
        };
        let invalid = |extra: Value, token: String| match verdict(extra, &token) {
            Err(Rejection::Invalid(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(invalid(json!({}), with(json!({"exp": NOW - 61}))), "the token has expired");
        assert!(verdict(json!({}), &with(json!({"exp": NOW - 59}))).is_ok(), "within the clock skew");
        assert_eq!(invalid(json!({}), with(json!({"nbf": NOW + 61}))), "the token is not valid yet");
        assert_eq!(invalid(json!({}), with(json!({"exp": "soon"}))), "a time claim is not a number");
        assert_eq!(invalid(json!({}), with(json!({"iss": "https://evil.test"}))), "the token's issuer is not accepted");
        assert_eq!(invalid(json!({}), with(json!({"aud": ["other"]}))), "the token's audience is not accepted");
        assert_eq!(
            invalid(json!({"max_lifetime_seconds": 30}), with(json!({"iat": NOW}))),
            "the token's lifetime is longer than allowed"
        );
        assert_eq!(
            invalid(
                json!({"require_expiration": true}),
                token("k1", json!({"iss": "https://idp.test", "aud": "orders.test"}))
            ),
            "the token has no expiration"
        );
        match verdict(json!({"required_claims": {"scope": "c"}}), &with(json!({}))) {
            Err(Rejection::Forbidden(why)) => assert!(why.contains("`scope`")),
            other => panic!("{other:?}"),
        }
        assert!(
            verdict(json!({"required_claims": {"scope": "b"}}), &with(json!({}))).is_ok(),
            "space-separated scopes"
        );
    }

    #[test]
    fn the_token_itself_must_be_well_formed_signed_and_known() {
        let signed = token("k1", good());
        let (header, rest) = signed.split_once('.').unwrap();
        let invalid = |token: &str| match verdict(json!({}), token) {
            Err(Rejection::Invalid(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(invalid("a.b"), "the token is not three base64url segments");
        assert_eq!(invalid(&format!("{header}.{rest}x")), "the token's signature is invalid");
        assert_eq!(invalid(&"a".repeat(MAX_TOKEN_BYTES + 1)), "the token is too large");
        let crit = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"alg": "HS256", "kid": "k1", "crit": ["x"]}).to_string());
        assert_eq!(invalid(&format!("{crit}.{rest}")), "the token has critical header parameters");
        let rs256 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"alg": "RS256"}).to_string());
        assert_eq!(invalid(&format!("{rs256}.{rest}")), "the token's algorithm is not allowed");
        assert_eq!(verdict(json!({}), &token("k2", good())).err(), Some(Rejection::UnknownKey));
        let (provider, _) = provider(json!({}));
        assert_eq!(verify(&signed, &provider, &[], NOW).err(), Some(Rejection::NoKeys));
    }

    #[test]
    fn a_claim_is_found_by_its_dotted_path() {
        let claims = json!({"realm_access": {"roles": ["admin"]}, "sub": "ada"});
        assert_eq!(claim(&claims, "realm_access.roles"), Some(&json!(["admin"])));
        assert_eq!(claim(&claims, "sub"), Some(&json!("ada")));
        assert_eq!(claim(&claims, "realm_access.missing"), None);
    }
}
