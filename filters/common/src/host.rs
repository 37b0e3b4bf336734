//! The real proxy-wasm host behind the crate's traits. The only module here that imports
//! `proxy_wasm`; it calls the `Result`-returning host functions, never the SDK helpers
//! that unwrap internally.

use crate::shared::{SharedStore, StoreError, Versioned};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MetricType, Status};
use std::cell::Cell;
use std::time::Duration;

/// How often filters add their batched counts to Envoy's counters (from a root context tick).
/// Envoy's own stats sinks flush every 5 s by default, so a second of lag is invisible there.
pub const COUNTER_FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// An Envoy counter counted in the VM and added to Envoy's counter by [`BatchedCounter::flush`]:
/// an increment is otherwise a host call on every request.
pub struct BatchedCounter {
    /// `None` where the host refused to define it (its counts are then dropped).
    id: Option<u32>,
    pending: Cell<u64>,
}

impl BatchedCounter {
    pub fn define(name: &str) -> BatchedCounter {
        BatchedCounter { id: hostcalls::define_metric(MetricType::Counter, name).ok(), pending: Cell::new(0) }
    }

    pub fn add(&self, count: u64) {
        self.pending.set(self.pending.get().saturating_add(count));
    }

    pub fn flush(&self) {
        let pending = self.pending.replace(0);
        if let (Some(id), true) = (self.id, pending > 0) {
            // A failed increment only loses samples; requests must not fail for it.
            let _ = hostcalls::increment_metric(id, i64::try_from(pending).unwrap_or(i64::MAX));
        }
    }
}

/// The VM's shared data, common to all worker threads that run this VM id.
pub struct HostSharedData;

impl SharedStore for HostSharedData {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((value, Some(cas))) => Ok(Some(Versioned { value: value.unwrap_or_default(), cas })),
            // The SDK reports an empty stored value as `None`; only a missing CAS means "no key".
            Ok((Some(value), None)) => Ok(Some(Versioned { value, cas: 0 })),
            Ok((None, None)) => Ok(None),
            Err(status) => Err(StoreError::Host(format!("{status:?}"))),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let cas = if cas == 0 { None } else { Some(cas) };
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(status) => Err(StoreError::Host(format!("{status:?}"))),
        }
    }
}

/// The host's clock (Envoy's wall clock) in milliseconds since the Unix epoch.
pub fn now_millis() -> Option<u64> {
    now_nanos().map(|nanos| nanos / 1_000_000)
}

/// The host's clock in nanoseconds since the Unix epoch.
pub fn now_nanos() -> Option<u64> {
    let now = hostcalls::get_current_time().ok()?;
    u64::try_from(now.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos()).ok()
}

/// The plugin's `configuration` bytes (empty when Envoy passes none).
pub fn plugin_configuration() -> Result<Vec<u8>, String> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .map(Option::unwrap_or_default)
        .map_err(|status| format!("cannot read plugin configuration: {status:?}"))
}

/// Publishes `value` under `name` for Envoy's access log: Envoy keeps it as the filter state
/// `wasm.<name>` of the request, which a log format prints with
/// `%FILTER_STATE(wasm.<name>:PLAIN)%`. Nothing of it reaches an upstream. Use the names in
/// [`crate::log_fields`].
pub fn publish_log_field(name: &str, value: &str) {
    // A value that cannot be published only leaves a log field empty.
    let _ = hostcalls::set_property(vec![name], Some(value.as_bytes()));
}
