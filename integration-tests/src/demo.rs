//! The demo services: `users`, `orders` and `inventory`, each a small JSON API over fixed
//! data, and `idp`, a development-only identity provider (its JWKS, and a token for anyone who
//! asks). Used by `make demo`, docker-compose and the tests that exercise the demo config.

use crate::backend::{BackendRequest, BackendResponse, Handler};
use serde_json::{json, Value};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
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
        "inventory" => return Some(inventory_handler(inventory())),
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
        {"sku": "kbd-01", "name": "Keyboard", "in_stock": 14, "price": 89.0},
        {"sku": "mon-27", "name": "27\" monitor", "in_stock": 3, "price": 270.0},
        {"sku": "mse-02", "name": "Mouse", "in_stock": 0, "price": 25.5}
    ])
}

/// Item names for `accept-language: de` (the item answer varies on that header).
fn german_name(sku: &str) -> Option<&'static str> {
    match sku {
        "kbd-01" => Some("Tastatur"),
        "mon-27" => Some("27-Zoll-Monitor"),
        "mse-02" => Some("Maus"),
        _ => None,
    }
}

/// How long a shared cache may reuse an inventory item answer.
pub const INVENTORY_MAX_AGE_SECS: u64 = 5;

/// The inventory service is the demo's cacheable one; each of its answers shows one caching rule:
/// - `GET /inventory/{sku}`: `Cache-Control: max-age=5`, an `ETag` (a matching `If-None-Match`
///   gets 304 Not Modified) and `Vary: accept-language` (the name in German for `de`);
/// - `GET /inventory/{sku}/quote`: the price for the caller (members, i.e. any authenticated
///   consumer, pay 10% less) with `max-age=60`: an answer that depends on the credentials;
/// - `GET /inventory/{sku}/live`: `no-store`, a fresh reading each time;
/// - `GET /inventory/{sku}/reservations`: `private, max-age=60`, the caller's own reservations;
/// - `POST /inventory/{sku}/reservations`: 201 and `max-age=60` (a POST answer is never reused);
/// - `GET /inventory/{sku}/watch`: sets a session cookie, and (carelessly) says `max-age=60`.
///
/// Every answer but the item carries `reading`, a number that grows with each request the
/// process answers (shared by the instances it runs), so an answer reused by a cache shows.
fn inventory_handler(data: Value) -> Handler {
    static READINGS: AtomicU64 = AtomicU64::new(0);
    Arc::new(move |request: &BackendRequest| {
        let rest = request.path.strip_prefix("/inventory/").unwrap_or_default();
        let (sku, part) = rest.split_once('/').unwrap_or((rest, ""));
        let item = data.as_array().and_then(|items| items.iter().find(|item| item["sku"] == sku));
        let Some(item) = item else {
            return respond("inventory", &data, request);
        };
        let reading = READINGS.fetch_add(1, Ordering::SeqCst) + 1;
        let caller = request.header("x-gateway-consumer");
        match (request.method.as_str(), part) {
            ("GET", "") => inventory_item(item, request),
            ("GET", "quote") => {
                let list_price = item["price"].as_f64().unwrap_or_default();
                let (price, price_list) = match caller {
                    Some(_) => ((list_price * 90.0).round() / 100.0, "member"),
                    None => (list_price, "public"),
                };
                BackendResponse::json(
                    200,
                    &json!({"sku": sku, "price": price, "price_list": price_list,
                            "for": caller.unwrap_or("anonymous"), "reading": reading}),
                )
                .with_header("cache-control", "max-age=60")
            }
            ("GET", "live") => {
                BackendResponse::json(200, &json!({"sku": sku, "in_stock": item["in_stock"], "reading": reading}))
                    .with_header("cache-control", "no-store")
            }
            ("GET", "reservations") => BackendResponse::json(
                200,
                &json!({"sku": sku, "reserved_for": caller.unwrap_or("anonymous"), "reading": reading}),
            )
            .with_header("cache-control", "private, max-age=60"),
            ("POST", "reservations") => BackendResponse::json(
                201,
                &json!({"sku": sku, "reserved_for": caller.unwrap_or("anonymous"), "reading": reading}),
            )
            .with_header("cache-control", "max-age=60"),
            ("GET", "watch") => BackendResponse::json(200, &json!({"watching": sku, "reading": reading}))
                .with_header("set-cookie", &format!("watch={reading}; Path=/inventory; HttpOnly"))
                .with_header("cache-control", "max-age=60"),
            ("GET", _) => BackendResponse::json(404, &json!({"error": "not_found", "message": format!("no {rest}")})),
            _ => BackendResponse::json(405, &json!({"error": "method_not_allowed"})),
        }
    })
}

/// One item, in German for `accept-language: de`, with its validator and freshness.
fn inventory_item(item: &Value, request: &BackendRequest) -> BackendResponse {
    let mut item = item.clone();
    if let Some(object) = item.as_object_mut() {
        object.remove("price");
        let german = request.header("accept-language").is_some_and(|languages| languages.starts_with("de"));
        if let Some(name) = german.then(|| german_name(object["sku"].as_str().unwrap_or_default())).flatten() {
            object.insert("name".into(), json!(name));
        }
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    item.to_string().hash(&mut hasher);
    let etag = format!("\"{:016x}\"", hasher.finish());
    let fresh_for = format!("max-age={INVENTORY_MAX_AGE_SECS}");
    let response = if request.header("if-none-match") == Some(etag.as_str()) {
        let mut unchanged = BackendResponse::json(304, &json!(null));
        unchanged.body.clear();
        unchanged
    } else {
        BackendResponse::json(200, &item)
    };
    response.with_header("cache-control", &fresh_for).with_header("etag", &etag).with_header("vary", "accept-language")
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

    #[test]
    fn inventory_answers_say_how_they_may_be_cached() {
        let inventory = Backend::start("127.0.0.1:0", handler("inventory").unwrap()).unwrap();
        let url = |path: &str| format!("http://127.0.0.1:{}{path}", inventory.port());
        let item = client::get(&url("/inventory/kbd-01"));
        assert_eq!(item.json(), json!({"sku": "kbd-01", "name": "Keyboard", "in_stock": 14}));
        assert_eq!(item.header("cache-control"), Some("max-age=5"));
        assert_eq!(item.header("vary"), Some("accept-language"));
        let etag = item.header("etag").unwrap().to_string();
        let unchanged = client::request("GET", &url("/inventory/kbd-01"), &[("if-none-match", &etag)]);
        assert_eq!((unchanged.status, unchanged.body.len()), (304, 0));
        assert_eq!(unchanged.header("etag"), Some(etag.as_str()));
        let german = client::request("GET", &url("/inventory/kbd-01"), &[("accept-language", "de")]);
        assert_eq!(german.json()["name"], "Tastatur");
        assert_ne!(german.header("etag"), Some(etag.as_str()));

        let quote = client::request("GET", &url("/inventory/kbd-01/quote"), &[("x-gateway-consumer", "ada")]);
        assert_eq!((quote.json()["price"].as_f64(), quote.json()["price_list"].as_str()), (Some(80.1), Some("member")));
        assert_eq!(client::get(&url("/inventory/kbd-01/quote")).json()["price"], 89.0);
        let live = client::get(&url("/inventory/kbd-01/live"));
        assert_eq!(live.header("cache-control"), Some("no-store"));
        let next = client::get(&url("/inventory/kbd-01/live"));
        assert!(next.json()["reading"].as_u64() > live.json()["reading"].as_u64());
        assert_eq!(
            client::get(&url("/inventory/kbd-01/reservations")).header("cache-control"),
            Some("private, max-age=60")
        );
        assert_eq!(client::request("POST", &url("/inventory/kbd-01/reservations"), &[]).status, 201);
        assert!(client::get(&url("/inventory/kbd-01/watch")).header("set-cookie").unwrap().starts_with("watch="));
        assert_eq!(client::get(&url("/inventory/kbd-01/nope")).status, 404);
        assert_eq!(client::get(&url("/inventory/nope")).status, 404);
        assert_eq!(client::get(&url("/inventory")).json()["inventory"].as_array().unwrap().len(), 3);
    }
}
