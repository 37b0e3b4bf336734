//! Shared pieces of the gateway filters.
//!
//! Everything here except [`host`] is plain Rust with no proxy-wasm import, so it is
//! unit-tested natively; [`host`] binds the traits to the real proxy-wasm host calls.

pub mod config;
pub mod host;
pub mod shared;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
