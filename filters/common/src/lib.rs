//! Shared pieces of the gateway filters.
//!
//! Plain Rust with no proxy-wasm dependency (the crate graph enforces it), unit-tested
//! natively: the one [`host::Host`] trait every filter talks to Envoy through, the per-request
//! view ([`request`]), the [`stage`] interface a module runs, and the pieces filters share.
//! `gateway-host` implements the host trait with the real proxy-wasm calls.

/// The request header that carries the consumer identity: set by the auth filter (after
/// removing any client-supplied copy), read by metrics and ratelimit.
pub const CONSUMER_HEADER: &str = "x-gateway-consumer";

/// The names under which the filters publish their decisions for Envoy's access log (see
/// [`host::publish_log_field`]; auth and ratelimit only with `access_log_fields` on); the
/// shipped configs log each as `%FILTER_STATE(wasm.NAME:PLAIN)%`.
pub mod log_fields {
    /// The consumer the auth filter established (absent when none was).
    pub const CONSUMER: &str = "gateway_consumer";
    /// The auth filter's outcome: `allowed`, `unauthorized`, `invalid`, `forbidden`,
    /// `no_rule` or `unavailable`.
    pub const AUTH: &str = "gateway_auth";
    /// The rate-limit rule that decided: the one that rejected the request, else the last that
    /// applied.
    pub const RATELIMIT_RULE: &str = "gateway_ratelimit_rule";
    /// `allowed`, `rejected`, `shadow_rejected`, or `unavailable` (a failed bucket under
    /// `fail_closed`); absent when no rule applied.
    pub const RATELIMIT_DECISION: &str = "gateway_ratelimit_decision";
    /// The aggregate filter's answer: `complete`, `partial` or `failed`.
    pub const AGGREGATE: &str = "gateway_aggregate";
}

pub mod bytes;
pub mod client_ip;
pub mod config;
pub mod counter;
pub mod duration;
pub mod header_list;
pub mod host;
pub mod label_value;
pub mod path_match;
pub mod plugin;
pub mod request;
pub mod request_match;
pub mod response;
pub mod shared;
pub mod stage;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
