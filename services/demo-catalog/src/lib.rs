//! The demo's gRPC service: a small product catalog (`catalog.v1.Catalog`: get, list, create)
//! kept in memory. Envoy's gRPC-JSON transcoder serves it as JSON at `/catalog/products`
//! through the rules in its `.proto`; gRPC clients call it through Envoy over HTTP/2.

use pb::catalog_server::{Catalog, CatalogServer};
use pb::{CreateProductRequest, GetProductRequest, ListProductsRequest, ListProductsResponse, Product};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use tonic::{Request, Response, Status};

pub mod pb {
    tonic::include_proto!("catalog.v1");
}

/// The descriptor set of `catalog.proto` and its imports, as Envoy's transcoder loads it.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/catalog.pb"));

/// Products created beyond the seeded ones are refused past this many (the demo keeps them in
/// memory): RESOURCE_EXHAUSTED.
pub const MAX_PRODUCTS: usize = 1000;
const MAX_SKU_CHARS: usize = 32;
const MAX_NAME_CHARS: usize = 100;

pub struct CatalogService {
    products: Mutex<BTreeMap<String, Product>>,
}

impl Default for CatalogService {
    fn default() -> Self {
        let seeded = [("kbd-01", "Keyboard", 8900), ("mon-27", "27\" monitor", 27000), ("mse-02", "Mouse", 2550)];
        let products = seeded
            .into_iter()
            .map(|(sku, name, price_cents)| {
                (sku.to_string(), Product { sku: sku.into(), name: name.into(), price_cents })
            })
            .collect();
        CatalogService { products: Mutex::new(products) }
    }
}

impl CatalogService {
    fn products(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, Product>>, Status> {
        self.products.lock().map_err(|_| Status::internal("catalog state unavailable"))
    }
}

/// Why a product cannot be created, or `None` when it can.
fn invalid_product(product: &Product) -> Option<String> {
    let sku_ok = !product.sku.is_empty()
        && product.sku.len() <= MAX_SKU_CHARS
        && product.sku.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !sku_ok {
        return Some(format!("sku must be 1 to {MAX_SKU_CHARS} characters of a-z, 0-9 and -"));
    }
    let name_chars = product.name.chars().count();
    if name_chars == 0 || name_chars > MAX_NAME_CHARS {
        return Some(format!("name must be 1 to {MAX_NAME_CHARS} characters"));
    }
    if product.price_cents < 0 {
        return Some("price_cents must not be negative".into());
    }
    None
}

#[tonic::async_trait]
impl Catalog for CatalogService {
    async fn get_product(&self, request: Request<GetProductRequest>) -> Result<Response<Product>, Status> {
        let sku = request.into_inner().sku;
        match self.products()?.get(&sku) {
            Some(product) => Ok(Response::new(product.clone())),
            None => Err(Status::not_found(format!("no product {sku:?}"))),
        }
    }

    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        let max = request.into_inner().max_price_cents;
        let products =
            self.products()?.values().filter(|product| max == 0 || product.price_cents <= max).cloned().collect();
        Ok(Response::new(ListProductsResponse { products }))
    }

    async fn create_product(&self, request: Request<CreateProductRequest>) -> Result<Response<Product>, Status> {
        let product = request.into_inner().product.ok_or_else(|| Status::invalid_argument("product is required"))?;
        if let Some(reason) = invalid_product(&product) {
            return Err(Status::invalid_argument(reason));
        }
        let mut products = self.products()?;
        if products.contains_key(&product.sku) {
            return Err(Status::already_exists(format!("product {:?} exists", product.sku)));
        }
        if products.len() >= MAX_PRODUCTS {
            return Err(Status::resource_exhausted(format!("the demo catalog holds at most {MAX_PRODUCTS} products")));
        }
        products.insert(product.sku.clone(), product.clone());
        Ok(Response::new(product))
    }
}

/// Serves the catalog and the standard gRPC health service (`grpc.health.v1.Health`, which
/// Envoy's gRPC health check calls) on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<CatalogServer<CatalogService>>().await;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(CatalogServer::new(CatalogService::default()))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(sku: &str, name: &str, price_cents: i32) -> Product {
        Product { sku: sku.into(), name: name.into(), price_cents }
    }

    #[tokio::test]
    async fn gets_lists_and_creates() {
        let catalog = CatalogService::default();
        let got = catalog.get_product(Request::new(GetProductRequest { sku: "kbd-01".into() })).await.unwrap();
        assert_eq!(got.into_inner().name, "Keyboard");
        let missing = catalog.get_product(Request::new(GetProductRequest { sku: "nope".into() })).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        let cheap = catalog.list_products(Request::new(ListProductsRequest { max_price_cents: 9000 })).await.unwrap();
        assert_eq!(cheap.into_inner().products.len(), 2);
        let new = product("cam-04", "Webcam", 4900);
        let created =
            catalog.create_product(Request::new(CreateProductRequest { product: Some(new.clone()) })).await.unwrap();
        assert_eq!(created.into_inner(), new);
        let again =
            catalog.create_product(Request::new(CreateProductRequest { product: Some(new) })).await.unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists);
    }

    #[test]
    fn refuses_malformed_products() {
        assert!(invalid_product(&product("kbd-02", "Keyboard", 1)).is_none());
        for bad in [product("", "x", 1), product("KBD", "x", 1), product(&"a".repeat(33), "x", 1)] {
            assert!(invalid_product(&bad).unwrap().starts_with("sku"), "{bad:?}");
        }
        assert!(invalid_product(&product("a", "", 1)).unwrap().starts_with("name"));
        assert!(invalid_product(&product("a", &"n".repeat(101), 1)).unwrap().starts_with("name"));
        assert!(invalid_product(&product("a", "n", -1)).unwrap().starts_with("price"));
    }

    #[tokio::test]
    async fn refuses_a_create_without_a_product() {
        let status = CatalogService::default()
            .create_product(Request::new(CreateProductRequest { product: None }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn the_descriptor_set_holds_the_service_and_its_http_rules() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(DESCRIPTOR_SET).unwrap();
        let names: Vec<&str> = set.file.iter().map(|file| file.name()).collect();
        assert!(names.contains(&"catalog/v1/catalog.proto"), "{names:?}");
        assert!(names.contains(&"google/api/annotations.proto"), "{names:?}");
        assert!(names.contains(&"google/api/http.proto"), "{names:?}");
    }
}
