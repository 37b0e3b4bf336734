//! The real proxy-wasm host behind the crate's traits. The only module here that imports
//! `proxy_wasm`; it calls the `Result`-returning host functions, never the SDK helpers
//! that unwrap internally.

use crate::shared::{SharedStore, StoreError, Versioned};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, Status};

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
