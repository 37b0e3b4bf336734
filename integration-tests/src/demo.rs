//! The demo services: `users`, `orders` and `inventory`, each a small JSON API over fixed
//! data, and `idp`, a development-only identity provider (its JWKS, and a token for anyone who
//! asks). Used by `make demo`, docker-compose and the tests that exercise the demo config.

use crate::backend::{BackendRequest, BackendResponse, Handler};
use serde_json::{json, Value};
use std::sync::Arc;

pub const SERVICES: [&str; 4] = ["users", "orders", "inventory", "idp"];

/// The demo identity provider's `iss`, and the audience its tokens are for.
pub const IDP_ISSUER: &str = "demo-idp";
pub const IDP_AUDIENCE: &str = "gateway-demo";

/// The handler for one demo service, or `None` for an unknown name.
pub fn handler(service: &str) -> Option<Handler> {
    let data = match service {
        "users" => users(),
        "orders" => orders(),
        "inventory" => inventory(),
        "idp" => return Some(idp()),
        _ => return None,
    };
    let service = service.to_string();
    Some(Arc::new(move |request: &BackendRequest| respond(&service, &data, request)))
}

fn users() -> Value {
    json!([
        {"id": "1", "name": "Ada Lovelace", "email": "ada@example.com", "team_id": "t1"},
        {"id": "2", "name": "Alan Turing", "email": "alan@example.com", "team_id": "t2"},
        {"id": "3", "name": "Grace Hopper", "email": "grace@example.com", "team_id": "t1"}
    ])
}

fn orders() -> Value {
    json!([
        {"id": "o-100", "user_id": "1", "sku": "kbd-01", "quantity": 1, "total": 89.0},
        {"id": "o-101", "user_id": "1", "sku": "mon-27", "quantity": 2, "total": 540.0},
        {"id": "o-102", "user_id": "2", "sku": "mse-02", "quantity": 1, "total": 25.5}
    ])
}

fn inventory() -> Value {
    json!([
        {"sku": "kbd-01", "name": "Keyboard", "in_stock": 14},
        {"sku": "mon-27", "name": "27\" monitor", "in_stock": 3},
        {"sku": "mse-02", "name": "Mouse", "in_stock": 0}
    ])
}

/// `GET /<service>` lists everything, `GET /<service>/<id>` gets one item, and
/// `GET /orders?user_id=1` filters orders by user, `POST /orders` accepts an order (without
/// storing it: the demo data never changes). `/healthz` answers `{"status": "ok"}`.
fn respond(service: &str, data: &Value, request: &BackendRequest) -> BackendResponse {
    if request.path == "/healthz" {
        return BackendResponse::json(200, &json!({"status": "ok"}));
    }
    if service == "orders" && request.method == "POST" && request.path == "/orders" {
        return BackendResponse::json(201, &json!({"id": "o-200", "status": "accepted"}));
    }
    if request.method != "GET" {
        return BackendResponse::json(405, &json!({"error": "method_not_allowed"}));
    }
    let items = data.as_array().cloned().unwrap_or_default();
    let rest = request.path.strip_prefix(&format!("/{service}")).map(|r| r.trim_matches('/'));
    let key = if service == "inventory" { "sku" } else { "id" };
    match rest {
        Some("") => {
            let filtered: Vec<Value> = match request.query_param("user_id") {
                Some(user) => items.into_iter().filter(|item| item["user_id"] == user).collect(),
                None => items,
            };
            BackendResponse::json(200, &json!({service: filtered}))
        }
        Some(id) => match items.into_iter().find(|item| item[key] == id) {
            Some(item) => BackendResponse::json(200, &item),
            None => {
                BackendResponse::json(404, &json!({"error": "not_found", "message": format!("no {service} item {id}")}))
            }
        },
        None => BackendResponse::json(404, &json!({"error": "not_found", "message": format!("try /{service}")})),
    }
}

/// Development only: signs a token for whatever `sub` and `scope` the caller asks for.
///
/// - `GET /.well-known/jwks.json`: the public key (ES256, made when the service starts);
/// - `GET /token?sub=ada&scope=orders:write`: `{"access_token", "token_type", "expires_in"}`
///   (with `&format=raw`: the token alone, for `TOKEN=$(curl ...)`).
fn idp() -> Handler {
    use base64::Engine;
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    let b64 = |bytes: Option<&[u8]>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.unwrap_or_default());
    let kid = format!("demo-{}", b64(point.x().map(|x| &x[..])).get(..8).unwrap_or("key"));
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": b64(point.x().map(|x| &x[..])), "y": b64(point.y().map(|y| &y[..]))
    }]});
    let signing = secret.to_pkcs8_der().ok().map(|der| jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes()));
    Arc::new(move |request: &BackendRequest| match request.path.as_str() {
        "/.well-known/jwks.json" => BackendResponse::json(200, &jwks),
        "/token" => {
            let Some(signing) = &signing else {
                return BackendResponse::json(500, &json!({"error": "no signing key"}));
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_secs())
                .unwrap_or_default();
            let claims = json!({
                "iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "iat": now, "exp": now + 3600,
                "sub": request.query_param("sub").unwrap_or("ada"),
                "scope": request.query_param("scope").unwrap_or("orders:read").replace("%20", " ").replace('+', " ")
            });
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            header.kid = Some(kid.clone());
            match jsonwebtoken::encode(&header, &claims, signing) {
                Ok(token) if request.query_param("format") == Some("raw") => {
                    let mut response = BackendResponse::json(200, &json!(null));
                    response.content_type = "text/plain".into();
                    response.body = token.into_bytes();
                    response
                }
                Ok(token) => BackendResponse::json(
                    200,
                    &json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}),
                ),
                Err(error) => BackendResponse::json(500, &json!({"error": error.to_string()})),
            }
        }
        _ => BackendResponse::json(
            404,
            &json!({"error": "not_found", "message": "try /token or /.well-known/jwks.json"}),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::client;

    #[test]
    fn demo_services_answer_their_routes() {
        let users = Backend::start("127.0.0.1:0", handler("users").unwrap()).unwrap();
        let orders = Backend::start("127.0.0.1:0", handler("orders").unwrap()).unwrap();
        let base = |b: &Backend| format!("http://127.0.0.1:{}", b.port());
        assert_eq!(client::get(&format!("{}/users/2", base(&users))).json()["name"], "Alan Turing");
        assert_eq!(client::get(&format!("{}/users", base(&users))).json()["users"].as_array().unwrap().len(), 3);
        assert_eq!(client::get(&format!("{}/users/9", base(&users))).status, 404);
        let mine = client::get(&format!("{}/orders?user_id=1", base(&orders))).json();
        assert_eq!(mine["orders"].as_array().unwrap().len(), 2);
        assert_eq!(client::request("POST", &format!("{}/orders", base(&orders)), &[]).status, 201);
        assert_eq!(client::request("DELETE", &format!("{}/orders/o-100", base(&orders)), &[]).status, 405);
        assert!(handler("nope").is_none());
        let idp = Backend::start("127.0.0.1:0", handler("idp").unwrap()).unwrap();
        let jwks = client::get(&format!("{}/.well-known/jwks.json", base(&idp))).json();
        assert_eq!(jwks["keys"][0]["alg"], "ES256");
        let token = client::get(&format!("{}/token?sub=grace&scope=orders:write", base(&idp))).json();
        assert_eq!(token["token_type"], "Bearer");
        assert_eq!(token["access_token"].as_str().unwrap().split('.').count(), 3);
    }
}
