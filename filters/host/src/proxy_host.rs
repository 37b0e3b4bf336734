//! [`Host`] on the real proxy-wasm host ([`crate::abi`]). It counts every call it makes (the
//! benchmark prints the count per request: each call crosses the VM boundary).

use crate::abi::{self, BufferType, MapType, MetricType, Status, CAS_MISMATCH};
use crate::context_ids::call_started;
use gateway_common::header_list::{encode_pairs, HeaderList};
use gateway_common::host::{HeaderMap, Host, HostError, MetricKind};
use gateway_common::plugin::{PluginScope, PLUGIN_NAME};
use gateway_common::shared::{SharedStore, StoreError, Versioned};
use std::cell::{Cell, RefCell};
use std::time::Duration;

thread_local! {
    /// Host calls made since the last [`take_host_calls`] (a VM is single-threaded).
    static HOST_CALLS: Cell<u64> = const { Cell::new(0) };
}

fn counted() {
    HOST_CALLS.with(|calls| calls.set(calls.get().wrapping_add(1)));
}

/// The host calls made since the last time this was asked.
pub(crate) fn take_host_calls() -> u64 {
    HOST_CALLS.with(|calls| calls.replace(0))
}

/// The host of the current context (whichever Envoy's callback made current), as one plugin
/// sees it: its shared-data keys and metric names carry the plugin's name (see
/// [`gateway_common::plugin`]).
pub struct ProxyHost {
    shared: HostSharedData,
    /// Reused for each attribute path (joined by NUL, as the host takes it).
    scratch: RefCell<String>,
}

impl ProxyHost {
    /// The host for the plugin being configured (call from the root context's `on_configure`,
    /// where Envoy knows the plugin's name) running `module`.
    pub fn for_plugin(module: &str) -> ProxyHost {
        let mut path = String::new();
        encode_path(&PLUGIN_NAME, &mut path);
        let name = abi::property(path.as_bytes()).ok().flatten().unwrap_or_default();
        let name = String::from_utf8_lossy(&name);
        let scope = PluginScope::new(&name, module);
        ProxyHost { shared: HostSharedData { scope, scratch: RefCell::default() }, scratch: RefCell::default() }
    }
}

fn map_type(map: HeaderMap) -> MapType {
    match map {
        HeaderMap::Request => MapType::Request,
        HeaderMap::Response => MapType::Response,
        HeaderMap::CallResponse => MapType::CallResponse,
    }
}

fn failed(status: Status) -> HostError {
    status.to_string()
}

impl Host for ProxyHost {
    fn header(&self, map: HeaderMap, name: &str) -> Option<Vec<u8>> {
        counted();
        abi::header(map_type(map), name).ok().flatten()
    }

    fn headers(&self, map: HeaderMap) -> Option<HeaderList> {
        counted();
        abi::header_pairs(map_type(map)).ok().flatten().and_then(HeaderList::from_wire)
    }

    fn set_header(&self, map: HeaderMap, name: &str, value: Option<&str>) -> Result<(), HostError> {
        counted();
        match value {
            Some(value) => abi::replace_header(map_type(map), name, value),
            None => abi::remove_header(map_type(map), name),
        }
        .map_err(failed)
    }

    fn add_header(&self, map: HeaderMap, name: &str, value: &str) -> Result<(), HostError> {
        counted();
        abi::add_header(map_type(map), name, value).map_err(failed)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        counted();
        let mut encoded = self.scratch.borrow_mut();
        encode_path(path, &mut encoded);
        abi::property(encoded.as_bytes()).ok().flatten()
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        counted();
        let mut encoded = self.scratch.borrow_mut();
        encode_path(path, &mut encoded);
        abi::set_property(encoded.as_bytes(), value).map_err(failed)
    }

    fn now_nanos(&self) -> Option<u64> {
        counted();
        abi::now_nanos().ok()
    }

    fn shared_data(&self) -> &dyn SharedStore {
        &self.shared
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        counted();
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Histogram => MetricType::Histogram,
        };
        abi::define_metric(kind, &self.shared.scope.metric(name)).ok()
    }

    fn increment_metric(&self, id: u32, by: u64) -> Result<(), HostError> {
        counted();
        abi::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)).map_err(failed)
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        counted();
        abi::record_metric(id, value).map_err(failed)
    }

    fn send_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
        counted();
        abi::send_local_response(status, &encode_pairs(headers), body).map_err(failed)
    }

    fn http_call(&self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u32, HostError> {
        counted();
        abi::http_call(cluster, &encode_pairs(headers), timeout).inspect(|token| call_started(*token)).map_err(failed)
    }

    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        counted();
        abi::grpc_call(cluster, service, method, message, timeout).inspect(|token| call_started(*token)).map_err(failed)
    }

    fn call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        counted();
        abi::buffer(BufferType::CallResponseBody, size).ok().flatten()
    }

    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>> {
        counted();
        abi::buffer(BufferType::GrpcReceiveBuffer, size).ok().flatten()
    }
}

/// An attribute path as the host takes it: the segments joined by NUL.
fn encode_path(path: &[&str], encoded: &mut String) {
    encoded.clear();
    for (index, part) in path.iter().enumerate() {
        if index > 0 {
            encoded.push('\0');
        }
        encoded.push_str(part);
    }
}

/// The VM's shared data, common to all worker threads that run this VM id, under the
/// plugin's key prefix.
pub struct HostSharedData {
    scope: PluginScope,
    /// Reused for each scoped key, so a read or a write allocates nothing of its own.
    scratch: RefCell<String>,
}

impl HostSharedData {
    fn scoped(&self, key: &str) -> std::cell::RefMut<'_, String> {
        let mut scoped = self.scratch.borrow_mut();
        self.scope.key_into(key, &mut scoped);
        scoped
    }
}

impl SharedStore for HostSharedData {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        counted();
        match abi::shared_data(&self.scoped(key)) {
            Ok(found) => Ok(found.map(|(value, cas)| Versioned { value, cas })),
            Err(status) => Err(StoreError::Host(status.to_string())),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        counted();
        match abi::set_shared_data(&self.scoped(key), value, cas) {
            Ok(()) => Ok(()),
            Err(status) if status == CAS_MISMATCH => Err(StoreError::CasMismatch),
            Err(status) => Err(StoreError::Host(status.to_string())),
        }
    }
}

/// The plugin's `configuration` bytes (empty when Envoy passes none).
pub(crate) fn plugin_configuration() -> Result<Vec<u8>, String> {
    abi::buffer(BufferType::PluginConfiguration, usize::MAX)
        .map(Option::unwrap_or_default)
        .map_err(|status| format!("cannot read plugin configuration: {status}"))
}
