//! [`Host`] on the real proxy-wasm host. It calls the `Result`-returning host functions, never
//! the SDK helpers that unwrap internally, and counts every call it makes (the benchmark prints
//! the count per request: each call crosses the VM boundary).

use gateway_common::header_list::HeaderList;
use gateway_common::host::{HeaderMap, Host, HostError, MetricKind};
use gateway_common::plugin::{PluginScope, PLUGIN_NAME};
use gateway_common::shared::{SharedStore, StoreError, Versioned};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::cell::{Cell, RefCell};
use std::time::Duration;

thread_local! {
    /// Host calls made since the last [`take_host_calls`] (a VM is single-threaded).
    static HOST_CALLS: Cell<u64> = const { Cell::new(0) };
    /// The calls started while [`record_calls`] is on.
    static STARTED_CALLS: RefCell<Option<Vec<u32>>> = const { RefCell::new(None) };
}

/// Starts noting the HTTP and gRPC calls stages start. The SDK delivers a call's answer to the
/// context whose callback started it: a call a stream's stage starts from a root callback
/// (which continues the stream) comes back to the root, which must hand it to the stream.
pub(crate) fn record_calls() {
    STARTED_CALLS.with(|calls| *calls.borrow_mut() = Some(Vec::new()));
}

/// The calls started since [`record_calls`]; stops noting them.
pub(crate) fn recorded_calls() -> Vec<u32> {
    STARTED_CALLS.with(|calls| calls.borrow_mut().take().unwrap_or_default())
}

fn started(token: &u32) {
    STARTED_CALLS.with(|calls| {
        if let Some(started) = calls.borrow_mut().as_mut() {
            started.push(*token);
        }
    });
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
    /// Reused for each attribute path (joined by NUL, as the host takes it): the SDK's
    /// `get_property` allocates twice per call.
    scratch: RefCell<String>,
}

impl ProxyHost {
    /// The host for the plugin being configured (call from the root context's `on_configure`,
    /// where Envoy knows the plugin's name) running `module`.
    pub fn for_plugin(module: &str) -> ProxyHost {
        let name = hostcalls::get_property(PLUGIN_NAME.to_vec()).ok().flatten().unwrap_or_default();
        let name = String::from_utf8_lossy(&name);
        let scope = PluginScope::new(&name, module);
        ProxyHost { shared: HostSharedData { scope, scratch: RefCell::default() }, scratch: RefCell::default() }
    }
}

fn map_type(map: HeaderMap) -> MapType {
    match map {
        HeaderMap::Request => MapType::HttpRequestHeaders,
        HeaderMap::Response => MapType::HttpResponseHeaders,
        HeaderMap::CallResponse => MapType::HttpCallResponseHeaders,
    }
}

extern "C" {
    // The SDK imports this too, but its `get_map_bytes` copies every name and value into an
    // allocation of its own (and unwraps each name as UTF-8); the host's one buffer is read in
    // place instead (`HeaderList`).
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;

    // The SDK's `get_current_time` turns the host's nanoseconds into a `SystemTime`, which the
    // filters turn back into nanoseconds: read them as they are.
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> Status;
}

/// Nanoseconds since the epoch, as the host's clock reads them.
#[allow(unsafe_code)]
fn current_time_nanos() -> Option<u64> {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes one u64 through the pointer, which points at a local.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    (status == Status::Ok).then_some(nanos)
}

/// The host's buffer of every header of `map`, in the proxy-wasm pairs layout.
#[allow(unsafe_code)]
fn header_pairs(map: MapType) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: on success the host has written a pointer to `size` bytes that it allocated
    // through this module's `proxy_on_memory_allocate` (the SDK's: a boxed slice of exactly
    // `size` bytes from the global allocator), which the Vec then owns and frees, as the SDK's
    // own readers do.
    unsafe {
        if proxy_get_header_map_pairs(map, &mut data, &mut size) != Status::Ok || data.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(data, size, size))
    }
}

fn failed(status: Status) -> HostError {
    format!("{status:?}")
}

impl Host for ProxyHost {
    fn header(&self, map: HeaderMap, name: &str) -> Option<Vec<u8>> {
        counted();
        hostcalls::get_map_value_bytes(map_type(map), name).ok().flatten()
    }

    fn headers(&self, map: HeaderMap) -> Option<HeaderList> {
        counted();
        header_pairs(map_type(map)).and_then(HeaderList::from_wire)
    }

    fn set_header(&self, map: HeaderMap, name: &str, value: Option<&str>) -> Result<(), HostError> {
        counted();
        hostcalls::set_map_value(map_type(map), name, value).map_err(failed)
    }

    fn add_header(&self, map: HeaderMap, name: &str, value: &str) -> Result<(), HostError> {
        counted();
        hostcalls::add_map_value(map_type(map), name, value).map_err(failed)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        counted();
        let mut encoded = self.scratch.borrow_mut();
        encoded.clear();
        for (index, part) in path.iter().enumerate() {
            if index > 0 {
                encoded.push('\0');
            }
            encoded.push_str(part);
        }
        get_property(encoded.as_bytes())
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        counted();
        hostcalls::set_property(path.to_vec(), Some(value)).map_err(failed)
    }

    fn now_nanos(&self) -> Option<u64> {
        counted();
        current_time_nanos()
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
        hostcalls::define_metric(kind, &self.shared.scope.metric(name)).ok()
    }

    fn increment_metric(&self, id: u32, by: u64) -> Result<(), HostError> {
        counted();
        hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)).map_err(failed)
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        counted();
        hostcalls::record_metric(id, value).map_err(failed)
    }

    fn send_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
        counted();
        hostcalls::send_http_response(status, headers.to_vec(), Some(body)).map_err(failed)
    }

    fn http_call(&self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u32, HostError> {
        counted();
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), None, vec![], timeout).inspect(started).map_err(failed)
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
        hostcalls::dispatch_grpc_call(cluster, service, method, Vec::new(), Some(message), timeout)
            .inspect(started)
            .map_err(failed)
    }

    fn call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        counted();
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size).ok().flatten()
    }

    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>> {
        counted();
        hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size).ok().flatten()
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
        match hostcalls::get_shared_data(&self.scoped(key)) {
            Ok((value, Some(cas))) => Ok(Some(Versioned { value: value.unwrap_or_default(), cas })),
            // The SDK reports an empty stored value as `None`; only a missing CAS means "no key".
            Ok((Some(value), None)) => Ok(Some(Versioned { value, cas: 0 })),
            Ok((None, None)) => Ok(None),
            Err(status) => Err(StoreError::Host(format!("{status:?}"))),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        counted();
        let cas = if cas == 0 { None } else { Some(cas) };
        match hostcalls::set_shared_data(&self.scoped(key), Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(status) => Err(StoreError::Host(format!("{status:?}"))),
        }
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    /// The ABI's attribute read (as the SDK declares it, which offers it only behind a
    /// `Vec<&str>` path that it copies again).
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
}

/// An attribute's value; `None` when Envoy has none (or refuses the path).
fn get_property(encoded_path: &[u8]) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through the SDK's
    // `proxy_on_memory_allocate` (a `Vec<u8>` with capacity `size`), whose ownership passes
    // to us, exactly as the SDK's own `get_property` takes it.
    unsafe {
        match proxy_get_property(encoded_path.as_ptr(), encoded_path.len(), &mut data, &mut size) {
            Status::Ok if !data.is_null() => Some(Vec::from_raw_parts(data, size, size)),
            _ => None,
        }
    }
}

/// The plugin's `configuration` bytes (empty when Envoy passes none).
pub(crate) fn plugin_configuration() -> Result<Vec<u8>, String> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .map(Option::unwrap_or_default)
        .map_err(|status| format!("cannot read plugin configuration: {status:?}"))
}
