//! Ratelimit filter: limits per rule and key, exact across Envoy's worker threads, with the
//! IETF RateLimit headers. Plain Rust with no proxy-wasm dependency; [`stage`] is what a module
//! runs (`ratelimit.wasm` alone, or a section of the bundle).

pub mod config;
pub mod gcra;
pub mod global;
pub mod headers;
pub mod limiter;
pub mod rls;
pub mod stage;
pub mod table;
