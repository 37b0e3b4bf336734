//! Auth filter: JWT providers (JWKS) and API keys, chosen per request by ordered rules; sets
//! the consumer identity header that the metrics and ratelimit filters read. Plain Rust with no
//! proxy-wasm dependency; [`stage`] is what a module runs (`auth.wasm` alone, or a section of
//! the bundle).

pub mod authenticate;
pub mod config;
pub mod guard;
pub mod jwks;
pub mod jwt;
pub mod keyring;
pub mod montgomery;
pub mod remote;
pub mod rsa_key;
pub mod stage;
