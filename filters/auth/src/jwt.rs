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
        return Err(Rejection::Invalid("the token is not three base64url segments"));
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
    Ok(Verified { claims, payload: (*payload).to_string() })
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
    for (name, wanted) in &provider.required_claims {
        let present = match claim(claims, name) {
            Some(Value::String(text)) => text == wanted || text.split(' ').any(|item| item == wanted),
            Some(Value::Array(items)) => items.iter().any(|item| item.as_str() == Some(wanted.as_str())),
            Some(Value::Bool(flag)) => flag.to_string() == *wanted,
            Some(Value::Number(number)) => number.to_string() == *wanted,
            _ => false,
        };
        if !present {
            return Err(Rejection::Forbidden(format!("the token's `{name}` claim does not grant `{wanted}`")));
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
