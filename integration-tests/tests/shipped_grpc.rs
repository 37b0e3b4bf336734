//! REST/JSON to gRPC in the shipped gateway (`envoy/demo.yaml`): Envoy's gRPC-JSON transcoder
//! serves the demo catalog gRPC service as JSON at /catalog/products, gRPC clients call the
//! same service through Envoy over HTTP/2, and our auth, rate limit and metrics filters treat
//! both like any other route.

use demo_catalog::pb::catalog_client::CatalogClient;
use demo_catalog::pb::GetProductRequest;
use integration_tests::client;
use integration_tests::shipped::{without_rate_limits, DemoServices, ShippedGateway};
use serde_json::json;
use std::time::{Duration, Instant};

fn start() -> (DemoServices, ShippedGateway) {
    let services = DemoServices::start();
    let gateway = ShippedGateway::start_with(&services.endpoints(), services.singles(), without_rate_limits);
    (services, gateway)
}

fn post_json(gateway: &ShippedGateway, path: &str, headers: &[(&str, &str)], body: &str) -> client::Response {
    let mut headers = headers.to_vec();
    headers.push(("content-type", "application/json"));
    client::request_with_body("POST", &gateway.url(path), &headers, body.as_bytes())
}

#[test]
fn json_requests_are_transcoded_to_the_grpc_service_and_back() {
    let (_services, gateway) = start();
    let get = |path: &str| client::get(&gateway.url(path));

    let product = get("/catalog/products/kbd-01");
    assert_eq!(product.status, 200, "{}", product.text());
    assert_eq!(product.header("content-type"), Some("application/json"));
    assert_eq!(product.json(), json!({"sku": "kbd-01", "name": "Keyboard", "price_cents": 8900}));
    assert_eq!(get("/catalog/products").json()["products"].as_array().map(Vec::len), Some(3));
    let cheap = get("/catalog/products?max_price_cents=9000").json();
    assert_eq!(cheap["products"].as_array().map(Vec::len), Some(2), "{cheap}");

    // Creating needs a token (the auth filter's rule for POST /catalog/); the product is then there.
    let ada = gateway.bearer("ada");
    let webcam = r#"{"sku": "cam-04", "name": "Webcam", "price_cents": 4900}"#;
    assert_eq!(post_json(&gateway, "/catalog/products", &[], webcam).status, 401);
    let created = post_json(&gateway, "/catalog/products", &[("authorization", &ada)], webcam);
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(created.json()["sku"], "cam-04");
    assert_eq!(get("/catalog/products/cam-04").json()["name"], "Webcam");

    // gRPC errors become HTTP statuses with the status as a JSON body.
    let missing = get("/catalog/products/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["code"], 5, "NOT_FOUND");
    assert_eq!(missing.json()["message"], "no product \"nope\"");
    let duplicate = post_json(&gateway, "/catalog/products", &[("authorization", &ada)], webcam);
    assert_eq!((duplicate.status, duplicate.json()["code"].as_i64()), (409, Some(6)), "ALREADY_EXISTS");
    let invalid =
        post_json(&gateway, "/catalog/products", &[("authorization", &ada)], r#"{"sku": "BAD", "name": "x"}"#);
    assert_eq!((invalid.status, invalid.json()["code"].as_i64()), (400, Some(3)), "INVALID_ARGUMENT");
    // What cannot be transcoded never reaches the service.
    let malformed = post_json(&gateway, "/catalog/products", &[("authorization", &ada)], r#"{"sku": "#);
    assert_eq!(malformed.status, 400, "{}", malformed.text());
    let wrong_type =
        post_json(&gateway, "/catalog/products", &[("authorization", &ada)], r#"{"sku": "x", "price_cents": "a"}"#);
    assert_eq!(wrong_type.status, 400, "{}", wrong_type.text());
    assert_eq!(get("/catalog/products?colour=red").status, 400, "unknown query parameter");
    assert_eq!(get("/catalog/nothing").status, 404, "no method there");

    // Metrics and the access log see the JSON route and the consumer.
    // Counted in the VM and added to Envoy's counters each second: wait for the count.
    let count = |labels: &[(&str, &str)], expected: f64| {
        gateway.envoy.eventually_sample("gateway_requests_total", labels, expected)
    };
    assert_eq!(count(&[("route", "catalog"), ("upstream", "catalog"), ("code", "200"), ("consumer", "ada")], 1.0), 1.0);
    assert_eq!(count(&[("route", "catalog"), ("code", "404"), ("consumer", "anonymous")], 2.0), 2.0);
    let line = gateway.access_log_line(created.header("x-request-id").unwrap());
    assert_eq!(
        (&line["route"], &line["upstream_cluster"], &line["consumer"], &line["status"]),
        (&json!("catalog"), &json!("catalog"), &json!("ada"), &json!(200)),
        "{line}"
    );
}

#[test]
fn grpc_clients_call_the_same_service_through_envoy() {
    let (_services, gateway) = start();
    let ada = gateway.bearer("ada");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let call = |sku: &str, authorization: Option<&str>| {
        runtime.block_on(async {
            let mut catalog = CatalogClient::connect(gateway.envoy.url()).await.unwrap();
            let mut request = tonic::Request::new(GetProductRequest { sku: sku.into() });
            if let Some(value) = authorization {
                request.metadata_mut().insert("authorization", value.parse().unwrap());
            }
            catalog.get_product(request).await
        })
    };
    let keyboard = call("kbd-01", Some(&ada)).unwrap().into_inner();
    assert_eq!((keyboard.name.as_str(), keyboard.price_cents), ("Keyboard", 8900));
    assert_eq!(call("nope", Some(&ada)).unwrap_err().code(), tonic::Code::NotFound);
    // The gRPC route needs a token: the auth filter's 401 reaches the client as UNAUTHENTICATED
    // (Envoy sends a local reply to a gRPC request as HTTP 200 with grpc-status 16).
    assert_eq!(call("kbd-01", None).unwrap_err().code(), tonic::Code::Unauthenticated);

    // Counted in the VM and added to Envoy's counters each second: wait for the count.
    let count = |labels: &[(&str, &str)], expected: f64| {
        gateway.envoy.eventually_sample("gateway_requests_total", labels, expected)
    };
    assert_eq!(count(&[("route", "catalog-grpc"), ("upstream", "catalog"), ("consumer", "ada")], 2.0), 2.0);
    assert_eq!(count(&[("route", "catalog-grpc"), ("code", "200"), ("consumer", "anonymous")], 1.0), 1.0);
    let lines = gateway.access_log();
    let started = Instant::now();
    let grpc_lines = loop {
        let lines: Vec<_> = gateway.access_log().into_iter().filter(|line| line["route"] == "catalog-grpc").collect();
        if lines.len() == 3 || started.elapsed() > Duration::from_secs(5) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(grpc_lines.len(), 3, "{lines:?}");
    let first = &grpc_lines[0];
    assert_eq!(
        (&first["protocol"], &first["path"], &first["consumer"], &first["status"]),
        (&json!("HTTP/2"), &json!("/catalog.v1.Catalog/GetProduct"), &json!("ada"), &json!(200)),
        "{first}"
    );
}
