//! A rate limit service for Envoy: `envoy.service.ratelimit.v3.RateLimitService` over gRPC,
//! with every counter in Redis. Envoy's own ratelimit filter and the gateway's ratelimit filter
//! (global rules) both call it; any number of Envoy replicas and service instances share one
//! exact count, because each request's buckets are updated by one Redis script.
//!
//! - [`config`]: the limits file (the layout of `envoyproxy/ratelimit`, plus `burst`);
//! - [`service`]: the protocol; [`store`] and `gcra.lua`: the counting in Redis;
//!   [`bucket`]: what a bucket's state means for the client;
//! - [`metrics`]: Prometheus text on the admin port, next to `/healthz`.

pub mod bucket;
pub mod config;
pub mod metrics;
pub mod service;
pub mod store;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Serves the protocol (and `grpc.health.v1`) on `grpc` and `/metrics` and `/healthz` on
/// `admin` until `shutdown` completes.
pub async fn serve(
    limiter: service::RateLimiter,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let admin_state = AdminState { store: limiter.store.clone(), metrics: limiter.metrics.clone() };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<RateLimitServiceServer<service::RateLimiter>>().await;
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_sender.send(true);
    });
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let admin_router = axum::Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(health_page))
        .with_state(admin_state);
    let admin_server = axum::serve(admin, admin_router).with_graceful_shutdown(stopped(stop.clone()));
    let grpc_server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(RateLimitServiceServer::new(limiter))
        // Answers are small: without TCP_NODELAY one can wait for a delayed ACK.
        .serve_with_incoming_shutdown(TcpIncoming::from(grpc).with_nodelay(Some(true)), stopped(stop));
    let (admin_result, grpc_result) = tokio::join!(admin_server, grpc_server);
    admin_result.map_err(|error| format!("admin server: {error}"))?;
    grpc_result.map_err(|error| format!("gRPC server: {error}"))
}

#[derive(Clone)]
struct AdminState {
    store: store::RedisStore,
    metrics: Arc<metrics::Metrics>,
}

async fn metrics_page(State(state): State<AdminState>) -> ([(&'static str, &'static str); 1], String) {
    ([("content-type", "text/plain; version=0.0.4")], state.metrics.render())
}

/// 200 when Redis answers a PING in time, else 503 with the reason: the service can decide.
async fn health_page(State(state): State<AdminState>) -> (StatusCode, String) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")),
    }
}
