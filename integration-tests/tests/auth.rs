//! The auth filter in a real Envoy: against Envoy's own jwt_authn on Envoy's test vectors,
//! with tokens minted for every algorithm and a set of hostile ones, API keys, rules, and the
//! headers it vouches for.

use integration_tests::backend::Backend;
use integration_tests::client::{self, Response};
use integration_tests::envoy::Envoy;
use integration_tests::gateway::Gateway;
use integration_tests::paths;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

fn peer_vectors() -> Value {
    let path = paths::repo_root().join("integration-tests/fixtures/envoy-jwt_authn.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn test_keys() -> Value {
    let path = paths::repo_root().join("filters/auth/tests/fixtures/test_keys.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn get(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> Response {
    client::request("GET", &format!("{}{path}", envoy.url()), headers)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Envoy's jwt_authn test vectors through our filter (`/ours`) and Envoy's native jwt_authn
/// (`/native`) in one Envoy, with the same keys, issuer and audiences: the verdicts agree.
#[test]
fn verdicts_agree_with_envoys_jwt_authn_on_its_own_vectors() {
    let vectors = peer_vectors();
    let backend = Backend::echo("api");
    let provider = &vectors["provider"];
    let jwks = vectors["jwks"].to_string();
    let es256_jwks = vectors["es256"]["jwks"].to_string();
    let ours = json!({
        "providers": {
            "example": {"issuer": provider["issuer"], "audiences": provider["audiences"], "local_jwks": {"inline_string": jwks}},
            "es256": {"issuer": provider["issuer"], "audiences": provider["audiences"], "local_jwks": {"inline_string": es256_jwks}}
        },
        "rules": [
            {"match": {"path": {"prefix": "/ours/es256"}}, "requires": {"provider_name": "es256"}},
            {"match": {"path": {"prefix": "/ours/"}}, "requires": {"provider_name": "example"}},
            {"match": {"path": {"prefix": "/native/"}}}
        ]
    });
    let native = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            "example": {"issuer": provider["issuer"], "audiences": provider["audiences"], "local_jwks": {"inline_string": jwks}},
            "es256": {"issuer": provider["issuer"], "audiences": provider["audiences"], "local_jwks": {"inline_string": es256_jwks}}
        },
        "rules": [
            {"match": {"prefix": "/native/es256"}, "requires": {"provider_name": "es256"}},
            {"match": {"prefix": "/native/"}, "requires": {"provider_name": "example"}}
        ]
    });
    let gateway = Gateway::new()
        .cluster("api", &[backend.port()])
        .route("api", "/", "api")
        .wasm_filter("auth", ours)
        .native_filter("envoy.filters.http.jwt_authn", native);
    let envoy = Envoy::start(&gateway.render(), 2);

    let mut cases: Vec<(String, String, &str)> = vectors["tokens"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, vector)| (name.clone(), vector["token"].as_str().unwrap().to_string(), ""))
        .collect();
    cases.push((
        "ES256WithoutIssToken".into(),
        vectors["es256"]["ES256WithoutIssToken"]["token"].as_str().unwrap().into(),
        "es256",
    ));
    let mut agreed = 0;
    for (name, token, provider) in &cases {
        let suffix = if provider.is_empty() { "x".to_string() } else { format!("{provider}/x") };
        let authorization = format!("Bearer {token}");
        let ours = get(&envoy, &format!("/ours/{suffix}"), &[("authorization", &authorization)]).status;
        let native = get(&envoy, &format!("/native/{suffix}"), &[("authorization", &authorization)]).status;
        println!("{name:24} ours {ours}  native {native}");
        assert_eq!(ours == 200, native == 200, "{name}: ours {ours}, Envoy's jwt_authn {native}");
        agreed += 1;
    }
    // And without any token, both ask for one.
    assert_eq!(get(&envoy, "/ours/x", &[]).status, 401);
    assert_eq!(get(&envoy, "/native/x", &[]).status, 401);
    assert_eq!(agreed, 10);
}

fn signing_key(keys: &Value, alg: Algorithm) -> (EncodingKey, &'static str) {
    let pem = |name: &str| keys[name]["private_pem"].as_str().unwrap().as_bytes().to_vec();
    match alg {
        Algorithm::ES256 => (EncodingKey::from_ec_pem(&pem("ec_p256")).unwrap(), "ec_p256"),
        Algorithm::ES384 => (EncodingKey::from_ec_pem(&pem("ec_p384")).unwrap(), "ec_p384"),
        Algorithm::EdDSA => (EncodingKey::from_ed_pem(&pem("ed25519")).unwrap(), "ed-1"),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            (EncodingKey::from_secret(keys["hmac"]["secret"].as_str().unwrap().as_bytes()), "hmac-1")
        }
        _ => (EncodingKey::from_rsa_pem(&pem("rsa")).unwrap(), "rsa-1"),
    }
}

fn mint(keys: &Value, alg: Algorithm, claims: &Value) -> String {
    let (key, kid) = signing_key(keys, alg);
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    encode(&header, claims, &key).unwrap()
}

struct Setup {
    envoy: Envoy,
    backend: Backend,
    keys: Value,
}

fn setup() -> Setup {
    let keys = test_keys();
    let backend = Backend::echo("api");
    let all: Vec<Value> =
        ["rsa", "ec_p256", "ec_p384", "ed25519", "hmac"].iter().map(|k| keys[*k]["jwk"].clone()).collect();
    let api_key_digest = format!("{:x}", Sha256::digest(b"key-for-ci-bot"));
    let config = json!({
        "allow_cors_preflight": true,
        "providers": {
            "main": {
                "issuer": "https://issuer.test",
                "audiences": ["orders"],
                "algorithms": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512"],
                "from_params": ["access_token"],
                "local_jwks": {"inline_string": json!({"keys": all}).to_string()},
                "claim_to_headers": [{"header_name": "x-team", "claim_name": "org.team"}, {"header_name": "x-roles", "claim_name": "roles"}],
                "forward_payload_header": "x-jwt-payload"
            },
            "admin": {
                "issuer": "https://issuer.test",
                "local_jwks": {"inline_string": json!({"keys": [keys["ec_p256"]["jwk"]]}).to_string()},
                "required_claims": {"roles": "admin"}
            }
        },
        "api_keys": {"from_header": "x-api-key", "keys": {api_key_digest: "ci-bot"}},
        "rules": [
            {"match": {"path": {"prefix": "/public/"}}},
            {"match": {"path": {"template": "/admin/{section}"}, "methods": ["POST"]}, "requires": {"provider_name": "admin"}},
            {"match": {"path": {"prefix": "/optional/"}}, "requires": {"allow_missing": {"provider_name": "main"}}},
            {"match": {"path": {"prefix": "/either/"}}, "requires": {"requires_any": [{"provider_name": "main"}, {"api_key": {}}]}},
            {"match": {"path": {"prefix": "/orders/"}}, "requires": {"provider_name": "main"}}
        ]
    });
    let gateway = Gateway::new().cluster("api", &[backend.port()]).route("api", "/", "api").wasm_filter("auth", config);
    Setup { envoy: Envoy::start(&gateway.render(), 2), backend, keys }
}

fn claims() -> Value {
    json!({"iss": "https://issuer.test", "aud": "orders", "sub": "ada", "exp": now() + 600,
           "org": {"team": "core"}, "roles": ["admin", "ops"]})
}

#[test]
fn minted_tokens_for_every_algorithm_pass_and_hostile_ones_do_not() {
    let setup = setup();
    for alg in [
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
    ] {
        let token = mint(&setup.keys, alg, &claims());
        let answer = get(&setup.envoy, "/orders/1", &[("authorization", &format!("Bearer {token}"))]);
        assert_eq!(answer.status, 200, "{alg:?}: {}", answer.text());
    }
    let good = mint(&setup.keys, Algorithm::RS256, &claims());
    let [header, payload, signature]: [&str; 3] = good.split('.').collect::<Vec<_>>().try_into().unwrap();
    let b64 = |value: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let mut wrong_audience = claims();
    wrong_audience["aud"] = json!("billing");
    let hostile = [
        ("alg none", format!("{}.{payload}.", b64(json!({"alg": "none"})))),
        ("HS256 keyed with the RSA public key", {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("rsa-1".into());
            encode(
                &header,
                &claims(),
                &EncodingKey::from_secret(setup.keys["rsa"]["jwk"]["n"].as_str().unwrap().as_bytes()),
            )
            .unwrap()
        }),
        (
            "tampered payload",
            format!(
                "{header}.{}.{signature}",
                b64(json!({"sub": "root", "iss": "https://issuer.test", "aud": "orders"}))
            ),
        ),
        ("expired", mint(&setup.keys, Algorithm::ES256, &expired)),
        ("wrong audience", mint(&setup.keys, Algorithm::ES256, &wrong_audience)),
        ("garbage", "not-a-token".to_string()),
        ("oversize", "a".repeat(9000)),
    ];
    for (name, token) in hostile {
        let answer = get(&setup.envoy, "/orders/1", &[("authorization", &format!("Bearer {token}"))]);
        assert_eq!(answer.status, 401, "{name}");
        let challenge = answer.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm=\"gateway\", error=\"invalid_token\", error_description=\""),
            "{name}: {challenge}"
        );
        assert_eq!(answer.json()["error"], "invalid_token", "{name}");
        assert!(!answer.text().contains(&token), "{name}: the answer echoes the token");
    }
    let log = setup.envoy.log();
    assert!(!log.contains(signature), "a token reached the log");
    assert_eq!(setup.backend.hits(), 12, "only the good tokens reached the backend");
    // Each worker adds its counts to Envoy's counters once a second.
    let counted = |result: &str, expected: f64| {
        setup.envoy.eventually_sample("gateway_auth_requests_total", &[("result", result)], expected)
    };
    assert_eq!(counted("allowed", 12.0), 12.0);
    assert_eq!(counted("invalid", 7.0), 7.0);
}

#[test]
fn identity_headers_are_set_from_credentials_and_never_from_the_client() {
    let setup = setup();
    let token = mint(&setup.keys, Algorithm::ES256, &claims());
    let spoofed =
        [("x-gateway-consumer", "mallory"), ("x-team", "root"), ("x-roles", "admin"), ("x-jwt-payload", "e30")];
    let mut headers = vec![("authorization", format!("Bearer {token}"))];
    headers.extend(spoofed.iter().map(|(n, v)| (*n, v.to_string())));
    let as_refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let seen = get(&setup.envoy, "/orders/1", &as_refs).json()["headers"].clone();
    assert_eq!(seen["x-gateway-consumer"], "ada");
    assert_eq!(seen["x-team"], "core");
    assert_eq!(seen["x-roles"], "admin,ops");
    assert_eq!(seen["x-jwt-payload"], token.split('.').nth(1).unwrap());
    assert!(seen.get("authorization").is_none(), "the token is not forwarded by default");

    // On a public route the client's copies are still removed.
    let spoofed_refs: Vec<(&str, &str)> = spoofed.to_vec();
    let seen = get(&setup.envoy, "/public/x", &spoofed_refs).json()["headers"].clone();
    for (name, _) in spoofed {
        assert!(seen.get(name).is_none(), "{name} reached the upstream: {seen}");
    }

    // A token in the query string works too and is removed from the path.
    let seen = get(&setup.envoy, &format!("/orders/1?page=2&access_token={token}"), &[]).json();
    assert_eq!(seen["path"], "/orders/1");
    assert_eq!(seen["query"], json!({"page": "2"}));
    assert_eq!(seen["headers"]["x-gateway-consumer"], "ada");
}

#[test]
fn api_keys_and_rules() {
    let setup = setup();
    let envoy = &setup.envoy;
    let token = mint(&setup.keys, Algorithm::ES256, &claims());
    let bearer = format!("Bearer {token}");
    // requires_any: a token or an API key.
    let with_key = get(envoy, "/either/x", &[("x-api-key", "key-for-ci-bot")]);
    assert_eq!(with_key.status, 200);
    assert_eq!(with_key.json()["headers"]["x-gateway-consumer"], "ci-bot");
    assert!(with_key.json()["headers"].get("x-api-key").is_none(), "the key is hidden from the upstream");
    assert_eq!(get(envoy, "/either/x", &[("authorization", &bearer)]).status, 200);
    let wrong_key = get(envoy, "/either/x", &[("x-api-key", "guess")]);
    assert_eq!(wrong_key.status, 401);
    assert_eq!(wrong_key.json()["message"], "the API key is not valid");
    let missing = get(envoy, "/either/x", &[]);
    assert_eq!((missing.status, missing.header("www-authenticate")), (401, Some("Bearer realm=\"gateway\"")));
    assert_eq!(missing.json()["error"], "unauthorized");
    // allow_missing: no token passes anonymously, a bad one does not.
    let anonymous = get(envoy, "/optional/x", &[]);
    assert_eq!(anonymous.status, 200);
    assert!(anonymous.json()["headers"].get("x-gateway-consumer").is_none());
    assert_eq!(get(envoy, "/optional/x", &[("authorization", "Bearer a.b.c")]).status, 401);
    assert_eq!(get(envoy, "/optional/x", &[("authorization", &bearer)]).json()["headers"]["x-gateway-consumer"], "ada");
    // A required claim: 403 with insufficient_scope.
    let post =
        |path: &str, headers: &[(&str, &str)]| client::request("POST", &format!("{}{path}", envoy.url()), headers);
    assert_eq!(post("/admin/users", &[("authorization", &bearer)]).status, 200);
    let mut operator = claims();
    operator["roles"] = json!(["ops"]);
    let operator = format!("Bearer {}", mint(&setup.keys, Algorithm::ES256, &operator));
    let forbidden = post("/admin/users", &[("authorization", &operator)]);
    assert_eq!(forbidden.status, 403);
    assert!(forbidden.header("www-authenticate").unwrap().contains("error=\"insufficient_scope\""));
    assert_eq!(forbidden.json()["error"], "insufficient_scope");
    // No rule matches: refused.
    assert_eq!(get(envoy, "/admin/users", &[("authorization", &bearer)]).status, 403);
    assert_eq!(get(envoy, "/elsewhere", &[]).json()["error"], "forbidden");
    // A CORS preflight passes without credentials when allowed.
    let preflight = client::request(
        "OPTIONS",
        &format!("{}/orders/1", envoy.url()),
        &[("origin", "https://app.test"), ("access-control-request-method", "GET")],
    );
    assert_eq!(preflight.status, 200);
    assert_eq!(client::request("OPTIONS", &format!("{}/orders/1", envoy.url()), &[]).status, 401);
}

#[test]
fn a_bad_configuration_is_refused_with_the_field_named() {
    let backend = Backend::echo("api");
    for (config, expected) in [
        (json!({"rules": [{"requires": {"provider_name": "nope"}}]}), "rules[0].requires.provider_name"),
        (
            json!({"providers": {"p": {"local_jwks": {"inline_string": "<html>"}}}, "rules": [{}]}),
            "providers.p.local_jwks.inline_string",
        ),
        (
            json!({"providers": {"p": {"algorithms": ["none"], "local_jwks": {"inline_string": "{}"}}}, "rules": [{}]}),
            "providers.p.algorithms[0]",
        ),
        (json!({"api_keys": {"keys": {"plaintext-key": "bot"}}, "rules": [{}]}), "api_keys.keys"),
    ] {
        let gateway = Gateway::new()
            .cluster("api", &[backend.port()])
            .route("api", "/", "api")
            .wasm_filter("auth", config.clone());
        let error = match Envoy::try_start(&gateway.render(), 1) {
            Ok(_) => panic!("Envoy accepted {config}"),
            Err(log) => log,
        };
        assert!(error.contains(&format!("auth: invalid configuration at `{expected}`")), "{config}: {error}");
        assert!(!error.contains("plaintext-key"), "a key pasted by mistake reached the log");
    }
}

/// The brute-force guard in Envoy: after `max_failures` invalid tokens from one client, its
/// credentials get 429 without being verified, until the window ends; tokens verified before
/// still pass.
#[test]
fn the_brute_force_guard_answers_429_after_too_many_failures() {
    let keys = test_keys();
    let backend = Backend::echo("api");
    let config = json!({
        "providers": {"main": {"issuer": "https://issuer.test", "local_jwks": {"inline_string": json!({"keys": [keys["rsa"]["jwk"]]}).to_string()}}},
        "brute_force_guard": {"max_failures": 3, "window": "1m"},
        "rules": [{"match": {"path": {"prefix": "/public/"}}}, {"requires": {"provider_name": "main"}}]
    });
    let gateway = Gateway::new().cluster("api", &[backend.port()]).route("api", "/", "api").wasm_filter("auth", config);
    // One worker: the guard counts per worker.
    let envoy = Envoy::start(&gateway.render(), 1);
    let token = |sub: &str| {
        mint(&keys, Algorithm::RS256, &json!({"iss": "https://issuer.test", "sub": sub, "exp": now() + 600}))
    };
    let bearer = |token: &str| format!("Bearer {token}");
    let good = token("ada");
    assert_eq!(get(&envoy, "/orders", &[("authorization", &bearer(&good))]).status, 200);
    let other = token("mallory");
    let (signed, _) = good.rsplit_once('.').unwrap();
    let forged = format!("{signed}.{}", other.rsplit_once('.').unwrap().1);
    for _ in 0..3 {
        assert_eq!(get(&envoy, "/orders", &[("authorization", &bearer(&forged))]).status, 401);
    }
    let locked = get(&envoy, "/orders", &[("authorization", &bearer(&token("grace")))]);
    eprintln!("{} {:?}\n{}", locked.status, locked.headers, locked.text());
    assert_eq!(locked.status, 429, "a valid token not verified before is not verified now");
    let retry_after: u64 = locked.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(locked.json()["error"], "too_many_failed_authentications");
    assert_eq!(get(&envoy, "/orders", &[("authorization", &bearer(&good))]).status, 200, "verified before");
    assert_eq!(get(&envoy, "/public/x", &[]).status, 200, "no credential, no lock");
    assert_eq!(envoy.eventually_sample("gateway_auth_requests_total", &[("result", "throttled")], 1.0), 1.0);
    assert_eq!(envoy.eventually_sample("gateway_auth_requests_total", &[("result", "invalid")], 3.0), 3.0);
}
