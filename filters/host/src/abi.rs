//! The proxy-wasm ABI (0.2.1) host functions this crate calls, declared here with safe
//! wrappers. Every `unsafe` block of the host boundary is in this file: each passes pointers to
//! memory the call may read, or to locals it writes, and takes ownership of buffers the host
//! allocated through this module's `proxy_on_memory_allocate` (see [`crate::entry`]).
//!
//! The wrappers return the host's status as a [`Status`] error; none of them panics.

#![allow(unsafe_code)]

use gateway_common::header_list::NO_PAIRS;
use std::ptr::{null, null_mut};

/// A non-`Ok` status the host returned (its number, as the ABI defines them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
/// The shared-data write's answer when the value changed since the CAS it was given.
pub const CAS_MISMATCH: Status = Status(8);

impl std::fmt::Display for Status {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            NOT_FOUND => "NotFound",
            2 => "BadArgument",
            3 => "SerializationFailure",
            4 => "ParseFailure",
            7 => "Empty",
            8 => "CasMismatch",
            10 => "InternalFailure",
            12 => "Unimplemented",
            _ => return write!(formatter, "status {}", self.0),
        };
        formatter.write_str(name)
    }
}

fn checked(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(Status(status))
    }
}

/// Which header map a call means (the ABI's `MapType`: the request's, the response's, a call answer's headers).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum MapType {
    Request = 0,
    Response = 2,
    CallResponse = 6,
}

/// Which buffer a read means (the ABI's `BufferType`).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum BufferType {
    CallResponseBody = 4,
    GrpcReceiveBuffer = 5,
    PluginConfiguration = 7,
}

/// The ABI's `MetricType`.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum MetricType {
    Counter = 0,
    Histogram = 2,
}

/// The ABI's `LogLevel`.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        details_data: *const u8,
        details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout_millis: u32,
        return_token: *mut u32,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_grpc_call(
        upstream_data: *const u8,
        upstream_size: usize,
        service_data: *const u8,
        service_size: usize,
        method_data: *const u8,
        method_size: usize,
        metadata_data: *const u8,
        metadata_size: usize,
        message_data: *const u8,
        message_size: usize,
        timeout_millis: u32,
        return_token: *mut u32,
    ) -> u32;
}

/// Takes the buffer a host call returned: the host allocated it through
/// `proxy_on_memory_allocate` as a `Vec<u8>` of capacity `size` (see [`crate::entry`]).
///
/// # Safety
/// `data` is null, or the host wrote it together with `size` on an `Ok` status.
unsafe fn returned(status: u32, data: *mut u8, size: usize) -> Result<Option<Vec<u8>>, Status> {
    match status {
        OK if data.is_null() => Ok(None),
        // SAFETY: see the function's contract: the allocation is ours, exactly `size` bytes.
        OK => Ok(Some(unsafe { Vec::from_raw_parts(data, size, size) })),
        NOT_FOUND => Ok(None),
        status => Err(Status(status)),
    }
}

/// Logs `message` at `level` in Envoy's log.
pub fn log(level: LogLevel, message: &str) -> Result<(), Status> {
    // SAFETY: the host reads `message` within its length.
    checked(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// Nanoseconds since the epoch, as the host's clock reads them.
pub fn now_nanos() -> Result<u64, Status> {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes one u64 into the local.
    checked(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) }).map(|()| nanos)
}

/// Sets the root context's timer (zero stops it).
pub fn set_tick_period(period: std::time::Duration) -> Result<(), Status> {
    let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: no pointers.
    checked(unsafe { proxy_set_tick_period_milliseconds(millis) })
}

/// Makes `context_id` the context later calls act on (a root callback acting on a stream).
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    checked(unsafe { proxy_set_effective_context(context_id) })
}

/// Lets the current stream's paused request go on (the ABI's `StreamType::HttpRequest`).
pub fn resume_request() -> Result<(), Status> {
    // SAFETY: no pointers.
    checked(unsafe { proxy_continue_stream(0) })
}

/// Up to `max_size` bytes of a buffer; `None` when the host has none.
pub fn buffer(buffer_type: BufferType, max_size: usize) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the host writes a pointer and a size into the locals; `returned` takes the buffer.
    unsafe {
        let status = proxy_get_buffer_bytes(buffer_type as u32, 0, max_size, &mut data, &mut size);
        returned(status, data, size)
    }
}

/// Every header of `map`, in the ABI's pairs layout.
pub fn header_pairs(map: MapType) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in `buffer`.
    unsafe {
        let status = proxy_get_header_map_pairs(map as u32, &mut data, &mut size);
        returned(status, data, size)
    }
}

/// One header's value (Envoy joins repeated ones with a comma).
pub fn header(map: MapType, name: &str) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the host reads `name` within its length; the rest as in `buffer`.
    unsafe {
        let status = proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size);
        returned(status, data, size)
    }
}

/// Adds a header, keeping any of the same name.
pub fn add_header(map: MapType, name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: the host reads both strings within their lengths.
    checked(unsafe { proxy_add_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Sets a header, replacing any of the same name.
pub fn replace_header(map: MapType, name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: the host reads both strings within their lengths.
    checked(unsafe {
        proxy_replace_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Removes every header of that name.
pub fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    // SAFETY: the host reads `name` within its length.
    checked(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// An attribute's value; `path` is its segments joined by NUL, as the host takes it.
pub fn property(path: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the host reads `path` within its length; the rest as in `buffer`.
    unsafe {
        let status = proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size);
        returned(status, data, size)
    }
}

/// Sets a filter-state attribute; `path` as in [`property`].
pub fn set_property(path: &[u8], value: &[u8]) -> Result<(), Status> {
    // SAFETY: the host reads both within their lengths.
    checked(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// A shared-data value and its CAS; `None` when the key is absent. An empty stored value
/// comes back as an empty `Vec`.
pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
    // SAFETY: the host reads `key` within its length and writes the locals; `returned` takes
    // the buffer.
    let value = unsafe {
        let status = proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas);
        if status == NOT_FOUND {
            return Ok(None);
        }
        returned(status, data, size)?
    };
    Ok(Some((value.unwrap_or_default(), cas)))
}

/// Writes a shared-data value if its CAS is still `cas` (0: whatever it is);
/// [`CAS_MISMATCH`] when it changed.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: the host reads both within their lengths.
    checked(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
}

/// Defines (or finds) a metric by its full name; returns its id.
pub fn define_metric(metric_type: MetricType, name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: the host reads `name` within its length and writes the local.
    checked(unsafe { proxy_define_metric(metric_type as u32, name.as_ptr(), name.len(), &mut id) }).map(|()| id)
}

/// Adds `by` to a counter.
pub fn increment_metric(id: u32, by: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    checked(unsafe { proxy_increment_metric(id, by) })
}

/// Records a histogram sample.
pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    checked(unsafe { proxy_record_metric(id, value) })
}

/// Answers the current request from the gateway; `headers` in the ABI's pairs layout.
pub fn send_local_response(status: u32, headers: &[u8], body: &[u8]) -> Result<(), Status> {
    // SAFETY: the host reads the buffers within their lengths; no details text (null, 0), and
    // no gRPC status (-1).
    checked(unsafe {
        proxy_send_local_response(status, null(), 0, body.as_ptr(), body.len(), headers.as_ptr(), headers.len(), -1)
    })
}

fn timeout_millis(timeout: std::time::Duration) -> u32 {
    u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX)
}

/// Starts an HTTP call to `cluster` with no body; returns its token. `headers` in the ABI's
/// pairs layout.
pub fn http_call(cluster: &str, headers: &[u8], timeout: std::time::Duration) -> Result<u32, Status> {
    let mut token = 0;
    // SAFETY: the host reads each buffer within its length and writes the local.
    checked(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            null(),
            0,
            NO_PAIRS.as_ptr(),
            NO_PAIRS.len(),
            timeout_millis(timeout),
            &mut token,
        )
    })
    .map(|()| token)
}

/// Starts a unary gRPC call to `cluster` with no initial metadata; returns its token.
pub fn grpc_call(
    cluster: &str,
    service: &str,
    method: &str,
    message: &[u8],
    timeout: std::time::Duration,
) -> Result<u32, Status> {
    let mut token = 0;
    // SAFETY: the host reads each buffer within its length and writes the local.
    checked(unsafe {
        proxy_grpc_call(
            cluster.as_ptr(),
            cluster.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            NO_PAIRS.as_ptr(),
            NO_PAIRS.len(),
            message.as_ptr(),
            message.len(),
            timeout_millis(timeout),
            &mut token,
        )
    })
    .map(|()| token)
}
