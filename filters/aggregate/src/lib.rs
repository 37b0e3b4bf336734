//! Aggregate filter: answers composed endpoints itself by calling several Envoy clusters and
//! merging their JSON. Plain Rust with no proxy-wasm dependency; [`stage`] is what a module
//! runs (`aggregate.wasm` alone, or a section of the bundle).

pub mod aggregation;
pub mod config;
pub mod shape;
pub mod stage;
pub mod template;
