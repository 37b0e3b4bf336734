//! Harness for running the gateway for real: an Envoy process with our `.wasm` filters,
//! HTTP backends, rendered configs, and a small HTTP client. Used by the integration tests,
//! the demo backends and the benchmark.

pub mod backend;
pub mod catalog;
pub mod client;
pub mod demo;
pub mod deploy;
pub mod envoy;
pub mod form;
pub mod gateway;
pub mod load;
pub mod paths;
pub mod process;
pub mod prometheus;
pub mod prometheus_text;
pub mod rate_limit_headers;
pub mod rls;
pub mod schemas;
pub mod scratch;
pub mod shipped;
