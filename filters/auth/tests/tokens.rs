//! Tokens minted here for every supported algorithm are accepted; a catalogue of hostile tokens
//! (RFC 8725 and known JWT attacks) is refused with the right status.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use auth_filter::authenticate::{decide, Decision, RequestFacts};
use auth_filter::config::AuthConfig;
use auth_filter::keyring::KeyRing;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::collections::HashMap;

const NOW: u64 = 1_764_000_000;

fn keys() -> Value {
    serde_json::from_str(include_str!("fixtures/test_keys.json")).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn signing_key(alg: Algorithm) -> EncodingKey {
    let keys = keys();
    let pem = |name: &str| keys[name]["private_pem"].as_str().unwrap().as_bytes().to_vec();
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem("rsa")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem("ec_p256")).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&pem("ec_p384")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem("ed25519")).unwrap(),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(keys["hmac"]["secret"].as_str().unwrap().as_bytes())
        }
    }
}

fn kid(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ec_p256",
        Algorithm::ES384 => "ec_p384",
        Algorithm::EdDSA => "ed-1",
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "hmac-1",
        _ => "rsa-1",
    }
}

fn claims() -> Value {
    json!({"iss": "https://issuer.test", "aud": "orders", "sub": "ada", "iat": NOW - 10, "exp": NOW + 600, "scope": "orders:read orders:write"})
}

fn mint(alg: Algorithm, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid(alg).to_string());
    encode(&header, claims, &signing_key(alg)).unwrap()
}

/// A token with a hand-made header and payload, signed (or not) as given.
fn forge(header: Value, payload: &Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(header.to_string().as_bytes()), b64(payload.to_string().as_bytes()))
}

fn config(provider: Value) -> AuthConfig {
    let keys = keys();
    let all: Vec<Value> =
        ["rsa", "ec_p256", "ec_p384", "ed25519", "hmac", "rsa_1024"].iter().map(|k| keys[*k]["jwk"].clone()).collect();
    let jwks = json!({ "keys": all });
    let mut provider_config = json!({
        "issuer": "https://issuer.test",
        "audiences": ["orders"],
        "algorithms": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512"],
        "local_jwks": {"inline_string": jwks.to_string()},
        "required_claims": {"scope": "orders:read"}
    });
    for (key, value) in provider.as_object().unwrap() {
        provider_config[key] = value.clone();
    }
    let config = json!({"providers": {"main": provider_config}, "rules": [{"requires": {"provider_name": "main"}}]});
    AuthConfig::parse(config.to_string().as_bytes()).unwrap()
}

#[derive(Clone)]
struct Request(HashMap<String, String>);

impl RequestFacts for Request {
    fn header(&mut self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(String::as_bytes)
    }
    fn property(&mut self, _: &[&str]) -> Option<&[u8]> {
        None
    }
}

fn bearer(token: &str) -> Request {
    Request(HashMap::from([
        (":method".into(), "GET".into()),
        (":path".into(), "/orders".into()),
        ("authorization".into(), format!("Bearer {token}")),
    ]))
}

/// One request with a fresh key ring (so nothing comes from the cache).
fn run(config: &AuthConfig, request: &Request) -> Decision {
    decide(config, &mut KeyRing::new(config), &mut request.clone(), Some(NOW), false, &mut Vec::new())
}

/// The status the filter answers (200 for "let through").
fn status(config: &AuthConfig, token: &str) -> (u32, String) {
    match run(config, &bearer(token)) {
        Decision::Allow(_) => (200, String::new()),
        Decision::Deny(denial) => (denial.status, denial.message),
    }
}

const ALL: [Algorithm; 12] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
];

#[test]
fn every_supported_algorithm_is_accepted() {
    let config = config(json!({}));
    for alg in ALL {
        assert_eq!(status(&config, &mint(alg, &claims())), (200, String::new()), "{alg:?}");
        // Without a kid, every key of the right type is tried.
        let token = encode(&Header::new(alg), &claims(), &signing_key(alg)).unwrap();
        assert_eq!(status(&config, &token).0, 200, "{alg:?} without kid");
    }
}

#[test]
fn the_consumer_and_claim_headers_come_from_the_token() {
    let config = config(json!({
        "claim_to_headers": [{"header_name": "x-scopes", "claim_name": "scope"}, {"header_name": "x-team", "claim_name": "org.team"}, {"header_name": "x-roles", "claim_name": "roles"}],
        "forward_payload_header": "x-jwt-payload"
    }));
    let mut claims = claims();
    claims["org"] = json!({"team": "core"});
    claims["roles"] = json!(["admin", "ops"]);
    let token = mint(Algorithm::ES256, &claims);
    let Decision::Allow(changes) = run(&config, &bearer(&token)) else { panic!() };
    let set: HashMap<String, String> = changes.set_headers.into_iter().collect();
    assert_eq!(set["x-gateway-consumer"], "ada");
    assert_eq!(set["x-scopes"], "orders:read orders:write");
    assert_eq!(set["x-team"], "core");
    assert_eq!(set["x-roles"], "admin,ops");
    assert_eq!(set["x-jwt-payload"], token.split('.').nth(1).unwrap());
    assert_eq!(changes.remove_headers, ["authorization"], "the token is not forwarded by default");
    assert!(config.owned_headers.contains(&"x-team".to_string()));
}

#[test]
fn hostile_tokens_are_refused() {
    let config = config(json!({}));
    let good = mint(Algorithm::RS256, &claims());
    let [header, payload, signature]: [&str; 3] = good.split('.').collect::<Vec<_>>().try_into().unwrap();
    let keys = keys();
    let rsa_public_n = keys["rsa"]["jwk"]["n"].as_str().unwrap();
    let attacker = EncodingKey::from_ec_pem(
        // Any key the gateway does not trust: the P-384 one signs for a P-256 header here.
        keys["ec_p384"]["private_pem"].as_str().unwrap().as_bytes(),
    )
    .unwrap();
    let mut tampered = claims();
    tampered["sub"] = json!("admin");
    let oversize_claims =
        json!({"iss": "https://issuer.test", "aud": "orders", "exp": NOW + 60, "pad": "x".repeat(9000)});

    let cases: Vec<(&str, String, u32)> = vec![
        // alg none, in every spelling, with and without a signature.
        ("alg none", forge(json!({"alg": "none"}), &claims(), ""), 401),
        ("alg None", forge(json!({"alg": "None"}), &claims(), ""), 401),
        ("alg NONE", forge(json!({"alg": "NONE"}), &claims(), ""), 401),
        ("alg nOnE", forge(json!({"alg": "nOnE", "typ": "JWT"}), &claims(), signature), 401),
        ("no alg", forge(json!({"typ": "JWT"}), &claims(), signature), 401),
        // Algorithm confusion: HS256 keyed with the RSA public key.
        (
            "HS256 with the RSA public key as secret",
            {
                let mut header = Header::new(Algorithm::HS256);
                header.kid = Some("rsa-1".into());
                encode(&header, &claims(), &EncodingKey::from_secret(rsa_public_n.as_bytes())).unwrap()
            },
            401,
        ),
        ("RS256 header on an HMAC kid", forge(json!({"alg": "RS256", "kid": "hmac-1"}), &claims(), signature), 401),
        ("ES384 on the P-256 key", forge(json!({"alg": "ES384", "kid": "ec_p256"}), &claims(), signature), 401),
        // Keys in the header are never used.
        (
            "embedded jwk",
            {
                let mut header = Header::new(Algorithm::ES256);
                header.kid = Some("ec_p256".into());
                header.jwk = serde_json::from_value(keys["ec_p384"]["jwk"].clone()).ok();
                encode(&header, &claims(), &attacker)
                    .unwrap_or_else(|_| forge(json!({"alg": "ES256", "kid": "ec_p256"}), &claims(), "AAAA"))
            },
            401,
        ),
        (
            "jku to elsewhere",
            forge(json!({"alg": "RS256", "kid": "rsa-1", "jku": "https://attacker.test/jwks"}), &claims(), signature),
            401,
        ),
        (
            "x5u to elsewhere",
            forge(json!({"alg": "RS256", "x5u": "https://attacker.test/cert"}), &claims(), signature),
            401,
        ),
        ("kid injection", forge(json!({"alg": "RS256", "kid": "../../../../dev/null"}), &claims(), signature), 401),
        (
            "the 1024-bit key",
            {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some("weak".into());
                encode(
                    &header,
                    &claims(),
                    &EncodingKey::from_rsa_pem(keys["rsa_1024"]["private_pem"].as_str().unwrap().as_bytes()).unwrap(),
                )
                .unwrap()
            },
            401,
        ),
        ("crit header", forge(json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}), &claims(), signature), 401),
        // Tampering.
        (
            "payload changed, signature kept",
            format!("{header}.{}.{signature}", b64(tampered.to_string().as_bytes())),
            401,
        ),
        ("signature stripped", format!("{header}.{payload}."), 401),
        (
            "signature of another token",
            format!("{header}.{payload}.{}", mint(Algorithm::RS256, &tampered).split('.').nth(2).unwrap()),
            401,
        ),
        (
            "signature bit flipped",
            format!(
                "{header}.{payload}.{}{}",
                &signature[..signature.len() - 2],
                if signature.ends_with('A') { "BA" } else { "AA" }
            ),
            401,
        ),
        // Malformed encodings.
        ("two segments", format!("{header}.{payload}"), 401),
        ("four segments", format!("{good}.{signature}"), 401),
        ("padding", format!("{header}=.{payload}.{signature}"), 401),
        ("standard base64 alphabet", format!("{header}.{payload}+/.{signature}"), 401),
        ("header not JSON", format!("{}.{payload}.{signature}", b64(b"not json")), 401),
        ("payload not JSON", mint_raw_payload(b"not json"), 401),
        ("payload a JSON array", mint_raw_payload(b"[1,2]"), 401),
        ("empty", String::new(), 401),
        ("oversize", mint(Algorithm::RS256, &oversize_claims), 401),
        // Time claims.
        (
            "expired",
            mint(
                Algorithm::RS256,
                &json!({"iss": "https://issuer.test", "aud": "orders", "scope": "orders:read", "exp": NOW - 61}),
            ),
            401,
        ),
        (
            "not yet valid",
            mint(
                Algorithm::RS256,
                &json!({"iss": "https://issuer.test", "aud": "orders", "scope": "orders:read", "nbf": NOW + 61}),
            ),
            401,
        ),
        (
            "exp a string",
            mint(
                Algorithm::RS256,
                &json!({"iss": "https://issuer.test", "aud": "orders", "scope": "orders:read", "exp": "tomorrow"}),
            ),
            401,
        ),
        (
            "exp negative",
            mint(
                Algorithm::RS256,
                &json!({"iss": "https://issuer.test", "aud": "orders", "scope": "orders:read", "exp": -1}),
            ),
            401,
        ),
        // Issuer and audience.
        (
            "wrong issuer",
            mint(Algorithm::RS256, &json!({"iss": "https://evil.test", "aud": "orders", "scope": "orders:read"})),
            401,
        ),
        ("no issuer", mint(Algorithm::RS256, &json!({"aud": "orders", "scope": "orders:read"})), 401),
        (
            "wrong audience",
            mint(Algorithm::RS256, &json!({"iss": "https://issuer.test", "aud": "billing", "scope": "orders:read"})),
            401,
        ),
        ("no audience", mint(Algorithm::RS256, &json!({"iss": "https://issuer.test", "scope": "orders:read"})), 401),
        // Valid token, missing scope: forbidden, not unauthorized.
        (
            "missing scope",
            mint(Algorithm::RS256, &json!({"iss": "https://issuer.test", "aud": "orders", "scope": "orders:write"})),
            403,
        ),
        (
            "scope as a prefix only",
            mint(Algorithm::RS256, &json!({"iss": "https://issuer.test", "aud": "orders", "scope": "orders:readonly"})),
            403,
        ),
    ];
    println!("{} hostile tokens", cases.len());
    for (name, token, expected) in cases {
        let (got, message) = status(&config, &token);
        assert_eq!(got, expected, "{name}: {message}");
        assert!(!message.contains(&token) || token.is_empty(), "{name}: the message must not echo the token");
    }
}

/// An RS256 token over an arbitrary payload, correctly signed.
fn mint_raw_payload(payload: &[u8]) -> String {
    let header = b64(json!({"alg": "RS256", "kid": "rsa-1"}).to_string().as_bytes());
    let signing_input = format!("{header}.{}", b64(payload));
    let signature =
        jsonwebtoken::crypto::sign(signing_input.as_bytes(), &signing_key(Algorithm::RS256), Algorithm::RS256).unwrap();
    format!("{signing_input}.{signature}")
}

#[test]
fn time_edges_respect_the_clock_skew() {
    let config = config(json!({"clock_skew_seconds": 30, "require_expiration": true, "max_lifetime_seconds": 3600}));
    let with = |extra: Value| {
        let mut claims =
            json!({"iss": "https://issuer.test", "aud": ["billing", "orders"], "scope": ["orders:read"], "iat": NOW});
        for (key, value) in extra.as_object().unwrap() {
            claims[key] = value.clone();
        }
        status(&config, &mint(Algorithm::ES256, &claims)).0
    };
    assert_eq!(with(json!({"exp": NOW - 30})), 200, "expired, within the skew");
    assert_eq!(with(json!({"exp": NOW - 31})), 401, "expired, past the skew");
    assert_eq!(with(json!({"exp": NOW + 60, "nbf": NOW + 30})), 200, "not yet valid, within the skew");
    assert_eq!(with(json!({"exp": NOW + 60, "nbf": NOW + 31})), 401);
    assert_eq!(with(json!({})), 401, "require_expiration");
    assert_eq!(with(json!({"exp": NOW + 3600})), 200, "lifetime at the maximum");
    assert_eq!(with(json!({"exp": NOW + 3601})), 401, "lifetime over the maximum");
    assert_eq!(with(json!({"exp": (NOW + 60) as f64 + 0.5})), 200, "fractional NumericDate");
}

#[test]
fn messages_follow_rfc_6750() {
    let config = config(json!({}));
    let Decision::Deny(missing) = run(&config, &Request(HashMap::from([(":path".into(), "/".into())]))) else {
        panic!()
    };
    assert_eq!((missing.status, missing.www_authenticate.as_deref()), (401, Some("Bearer realm=\"gateway\"")));
    let Decision::Deny(invalid) = run(&config, &bearer("a.b.c")) else { panic!() };
    assert_eq!(invalid.status, 401);
    assert!(invalid
        .www_authenticate
        .unwrap()
        .starts_with("Bearer realm=\"gateway\", error=\"invalid_token\", error_description=\""));
    let token = mint(Algorithm::RS256, &json!({"iss": "https://issuer.test", "aud": "orders"}));
    let Decision::Deny(forbidden) = run(&config, &bearer(&token)) else { panic!() };
    assert_eq!(forbidden.status, 403);
    assert!(forbidden.www_authenticate.unwrap().contains("error=\"insufficient_scope\""));
}

#[test]
fn verified_tokens_are_cached_until_they_expire_or_the_keys_change() {
    let config = config(json!({"clock_skew_seconds": 0}));
    let mut ring = KeyRing::new(&config);
    let mut claims = claims();
    claims["exp"] = json!(NOW + 100);
    let request = bearer(&mint(Algorithm::RS256, &claims));
    let allowed = |ring: &mut KeyRing, now: u64| {
        matches!(decide(&config, ring, &mut request.clone(), Some(now), false, &mut Vec::new()), Decision::Allow(_))
    };
    assert!(allowed(&mut ring, NOW));
    assert_eq!(ring.cached_tokens(), 1);
    assert!(allowed(&mut ring, NOW + 50), "served from the cache");
    assert!(!allowed(&mut ring, NOW + 101), "the cache honours exp");
    // New keys (a rotation) make the cached verification unusable: the token is checked again.
    assert!(allowed(&mut ring, NOW));
    ring.replace(0, Vec::new());
    assert!(!allowed(&mut ring, NOW), "the cached result is not reused after the keys changed");
}

#[test]
fn an_unknown_kid_asks_for_a_refetch() {
    let config = config(json!({}));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rotated-2".into());
    let token = encode(&header, &claims(), &signing_key(Algorithm::RS256)).unwrap();
    let mut refetch = Vec::new();
    let decision = decide(&config, &mut KeyRing::new(&config), &mut bearer(&token), Some(NOW), false, &mut refetch);
    assert!(matches!(decision, Decision::Deny(ref denial) if denial.status == 401));
    assert_eq!(refetch, [0]);
}

#[test]
fn tokens_from_query_parameters_and_cookies() {
    let config = config(json!({"from_headers": [], "from_params": ["access_token"], "from_cookies": ["session"]}));
    let token = mint(Algorithm::ES256, &claims());
    let request = |path: String, cookie: Option<String>| {
        let mut headers = HashMap::from([(":method".to_string(), "GET".to_string()), (":path".to_string(), path)]);
        if let Some(cookie) = cookie {
            headers.insert("cookie".into(), cookie);
        }
        Request(headers)
    };
    let Decision::Allow(changes) = run(&config, &request(format!("/orders?page=2&access_token={token}&x=1"), None))
    else {
        panic!("query token refused")
    };
    assert_eq!(changes.new_path.as_deref(), Some("/orders?page=2&x=1"), "the token is removed from the query");
    let Decision::Allow(changes) =
        run(&config, &request("/orders".into(), Some(format!("theme=dark; session={token}"))))
    else {
        panic!("cookie token refused")
    };
    assert!(changes.remove_headers.is_empty(), "the cookie header stays: other cookies belong to the upstream");
    assert!(matches!(run(&config, &request("/orders".into(), Some("session=".into()))), Decision::Deny(_)));
    // The Authorization header is not a source for this provider.
    assert!(matches!(run(&config, &bearer(&token)), Decision::Deny(ref denial) if denial.status == 401));
}

/// Without a clock, `exp` cannot be checked: an expired token must not pass (it did when a
/// missing clock read as 0), and a fresh one is not let through unchecked either. Requests
/// that need no token check are unaffected.
#[test]
fn without_a_clock_tokens_are_refused_not_guessed() {
    let config = config(json!({}));
    let mut expired_claims = claims();
    expired_claims["exp"] = json!(NOW - 3600);
    for token in [mint(Algorithm::RS256, &expired_claims), mint(Algorithm::RS256, &claims())] {
        match decide(&config, &mut KeyRing::new(&config), &mut bearer(&token), None, false, &mut Vec::new()) {
            Decision::Deny(denial) => {
                assert_eq!((denial.status, denial.error), (503, "auth_unavailable"));
                assert!(denial.message.contains("clock"), "{}", denial.message);
            }
            Decision::Allow(_) => panic!("a token passed without a clock"),
        }
    }
    let public = auth_filter::config::AuthConfig::parse(
        json!({"providers": {}, "rules": [{"match": {"path": {"prefix": "/"}}}]}).to_string().as_bytes(),
    )
    .unwrap();
    assert!(matches!(
        decide(&public, &mut KeyRing::new(&public), &mut bearer("x"), None, false, &mut Vec::new()),
        Decision::Allow(_)
    ));
}

/// A signed payload that gives a registered claim twice is refused with that said, not as
/// "not JSON"; which of the two `exp` values counts is exactly what must not be guessed.
#[test]
fn a_repeated_registered_claim_is_named() {
    let config = config(json!({}));
    let payload = format!(
        r#"{{"iss":"https://issuer.test","aud":"orders","scope":"orders:read","exp":{},"exp":{}}}"#,
        NOW - 10,
        NOW + 600
    );
    let (code, message) = status(&config, &mint_raw_payload(payload.as_bytes()));
    assert_eq!((code, message.as_str()), (401, "the token's payload repeats the `exp` claim"));
    let payload = r#"{"iss":"https://issuer.test","iss":"https://evil.test","aud":"orders"}"#;
    let (code, message) = status(&config, &mint_raw_payload(payload.as_bytes()));
    assert_eq!((code, message.as_str()), (401, "the token's payload repeats the `iss` claim"));
}
