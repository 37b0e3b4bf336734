//! Metrics filter: per-request Prometheus metrics tagged by route, upstream, method, status
//! code and consumer. Plain Rust with no proxy-wasm dependency; [`stage`] is what a module
//! runs (`metrics.wasm` alone, or a section of the bundle).

pub mod cardinality;
pub mod config;
pub mod labels;
pub mod recorder;
pub mod stage;
