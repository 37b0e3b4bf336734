//! The demo services: `users`, `orders` and `inventory`, each a small JSON API over fixed
//! data. Used by `make demo`, docker-compose and the tests that exercise the demo config.

use crate::backend::{BackendRequest, BackendResponse, Handler};
use serde_json::{json, Value};
use std::sync::Arc;

pub const SERVICES: [&str; 3] = ["users", "orders", "inventory"];

/// The handler for one demo service, or `None` for an unknown name.
pub fn handler(service: &str) -> Option<Handler> {
    let data = match service {
        "users" => users(),
        "orders" => orders(),
        "inventory" => inventory(),
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
    }
}
