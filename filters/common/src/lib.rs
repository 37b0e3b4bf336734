//! Shared pieces of the gateway filters.
//!
//! Everything here except [`host`] is plain Rust with no proxy-wasm import, so it is
//! unit-tested natively; [`host`] binds the traits to the real proxy-wasm host calls.

/// The request header that carries the consumer identity: set by the auth filter (after
/// removing any client-supplied copy), read by metrics and ratelimit.
pub const CONSUMER_HEADER: &str = "x-gateway-consumer";

pub mod client_ip;
pub mod config;
pub mod duration;
pub mod host;
pub mod path_match;
pub mod request_match;
pub mod response;
pub mod shared;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
