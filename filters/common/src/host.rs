//! The one boundary between the filters' logic and Envoy: everything a filter asks of the
//! host, as a trait with no proxy-wasm type in it. `gateway-host` implements it with the real
//! host calls; [`crate::testing::FakeHost`] implements it for native tests. Failures come back
//! as values (a refused host call must never become a panic that kills the VM).

use crate::header_list::HeaderList;
use crate::shared::SharedStore;
use std::time::Duration;

/// How often filters add their batched counts to Envoy's counters (from a root context tick).
/// Envoy's own stats sinks flush every 5 s by default, so a second of lag is invisible there.
pub const COUNTER_FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// The header maps a filter can read or change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMap {
    Request,
    Response,
    /// The headers of the answer to an HTTP call this filter made.
    CallResponse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Histogram,
}

/// A host call that failed, with the host's status for the log.
pub type HostError = String;

pub trait Host {
    /// A header value as bytes (header values are client input, never assumed to be UTF-8).
    fn header(&self, map: HeaderMap, name: &str) -> Option<Vec<u8>>;
    /// Every header of `map` in one call (`None` where the host refuses).
    fn headers(&self, map: HeaderMap) -> Option<HeaderList>;
    /// Replaces every value of `name` (`None` removes it).
    fn set_header(&self, map: HeaderMap, name: &str, value: Option<&str>) -> Result<(), HostError>;
    /// Adds one more value of `name`.
    fn add_header(&self, map: HeaderMap, name: &str, value: &str) -> Result<(), HostError>;
    /// One of Envoy's attributes, e.g. `["xds", "route_name"]`.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Sets a filter state value of the stream (`wasm.<name>`), e.g. for the access log.
    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError>;
    /// Envoy's wall clock, in nanoseconds since the Unix epoch.
    fn now_nanos(&self) -> Option<u64>;
    /// The VM's shared data, common to every worker of the VM id.
    fn shared_data(&self) -> &dyn SharedStore;
    /// Defines (or finds) a metric; `None` where the host refuses it.
    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment_metric(&self, id: u32, by: u64) -> Result<(), HostError>;
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError>;
    /// Answers the current request; the filter then stops it.
    fn send_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError>;
    /// Starts an HTTP call to an Envoy cluster; its answer arrives with the returned token.
    fn http_call(&self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u32, HostError>;
    /// Starts a unary gRPC call to an Envoy cluster.
    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// The body of the HTTP call answer being delivered.
    fn call_response_body(&self, size: usize) -> Option<Vec<u8>>;
    /// The message of the gRPC call answer being delivered.
    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>>;
}

/// The host's clock in milliseconds since the Unix epoch.
pub fn now_millis(host: &dyn Host) -> Option<u64> {
    host.now_nanos().map(|nanos| nanos / 1_000_000)
}

/// Publishes `value` under `name` for Envoy's access log: Envoy keeps it as the filter state
/// `wasm.<name>` of the request, which a log format prints with
/// `%FILTER_STATE(wasm.<name>:PLAIN)%`. Nothing of it reaches an upstream. Use the names in
/// [`crate::log_fields`].
pub fn publish_log_field(host: &dyn Host, name: &str, value: &str) {
    // A value that cannot be published only leaves a log field empty.
    let _ = host.set_property(&[name], value.as_bytes());
}
