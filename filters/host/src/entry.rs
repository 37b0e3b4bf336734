//! The functions Envoy calls in the module (the proxy-wasm ABI 0.2.1), and which context each
//! call is for. A VM holds one root context per plugin that uses it (each with its configured
//! [`Chain`]) and one stream context per request.
//!
//! The module exports only the entry points it uses, because Envoy calls only those a module
//! exports: no `proxy_on_done` (every stream is done when Envoy says so), no trailers of
//! responses, no TCP, queue or foreign-function callbacks. Each callback finds its context in
//! one map and runs it without holding the map, so a host call that reenters the module (to
//! allocate what it returns) finds everything free. A call's answer goes to the context that
//! started the call ([`crate::context_ids`]).

use crate::abi::{self, LogLevel};
use crate::context_ids::{call_answered, set_active, IdMap};
use crate::driver::{Chain, ChainBuilder, ChainHttp};
use gateway_common::stage::Flow;
use std::cell::RefCell;
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::sync::OnceLock;

/// The module's name and stage builder, set once by `_initialize`.
static MODULE: OnceLock<(&str, ChainBuilder)> = OnceLock::new();

/// Registers the module's stage builder and the logger; called once from `_initialize`.
pub fn install(name: &'static str, build: ChainBuilder) {
    let _ = MODULE.set((name, build));
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
        // A panic aborts the VM (the release profile's `panic = "abort"`): say why first.
        std::panic::set_hook(Box::new(|panic| {
            let _ = abi::log(LogLevel::Critical, &panic.to_string());
        }));
    }
}

/// One VM's contexts.
struct Contexts {
    /// Root context id to its chain (`None` until configured, or when its configuration
    /// failed). A VM has a root per plugin that shares it: a handful.
    roots: RefCell<Vec<(u32, Option<Rc<Chain>>)>>,
    streams: RefCell<IdMap<Rc<ChainHttp>>>,
}

thread_local! {
    static CONTEXTS: Contexts = const {
        Contexts {
            roots: RefCell::new(Vec::new()),
            streams: RefCell::new(IdMap::with_hasher(BuildHasherDefault::new())),
        }
    };
}

fn root(context_id: u32) -> Option<Rc<Chain>> {
    set_active(context_id);
    CONTEXTS.with(|contexts| {
        contexts.roots.borrow().iter().find(|(id, _)| *id == context_id).and_then(|(_, chain)| chain.clone())
    })
}

fn stream(context_id: u32) -> Option<Rc<ChainHttp>> {
    set_active(context_id);
    CONTEXTS.with(|contexts| contexts.streams.borrow().get(&context_id).cloned())
}

/// The context a call's answer is for.
enum Answered {
    Stream(Rc<ChainHttp>),
    Root(Rc<Chain>),
}

/// Finds the context that started call `token` and makes it the host's current one; `None`
/// when that context is gone.
fn answered(token: u32) -> Option<Answered> {
    let context_id = call_answered(token)?;
    // The stream may be gone (its client left): the host then refuses to switch to it.
    abi::set_effective_context(context_id).ok()?;
    if let Some(stream) = stream(context_id) {
        return Some(Answered::Stream(stream));
    }
    root(context_id).map(Answered::Root)
}

fn action(flow: Flow) -> u32 {
    match flow {
        Flow::Continue => 0,
        Flow::Pause => 1,
    }
}

/// The ABI version this module speaks (Envoy reads it from the export's name).
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host allocates here every buffer it returns to the module: a `Vec<u8>` of exactly
/// `size` bytes, which the call's wrapper then owns (see `abi::returned`).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer: Vec<u8> = Vec::with_capacity(size);
    let data = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    data
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    if root_context_id == 0 {
        CONTEXTS.with(|contexts| contexts.roots.borrow_mut().push((context_id, None)));
        return;
    }
    // A root whose configuration failed gets no streams (Envoy does not run its filter).
    let Some(chain) = root(root_context_id) else { return };
    let stream = Rc::new(ChainHttp::new(chain, context_id));
    CONTEXTS.with(|contexts| contexts.streams.borrow_mut().insert(context_id, stream));
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_context_id: u32, _plugin_configuration_size: usize) -> bool {
    set_active(root_context_id);
    let (name, build) = MODULE.get().copied().unwrap_or(("gateway", no_stages));
    let Some(chain) = Chain::configure(name, build) else { return false };
    CONTEXTS.with(|contexts| {
        let mut roots = contexts.roots.borrow_mut();
        match roots.iter_mut().find(|(id, _)| *id == root_context_id) {
            Some((_, configured)) => *configured = Some(chain),
            None => roots.push((root_context_id, Some(chain))),
        }
    });
    true
}

fn no_stages(
    _: &[u8],
    _: &dyn gateway_common::host::Host,
) -> Result<Vec<Box<dyn gateway_common::stage::Stage>>, String> {
    Err("the module registered no stages".into())
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_context_id: u32) {
    if let Some(chain) = root(root_context_id) {
        chain.on_tick();
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, _end_of_stream: bool) -> u32 {
    stream(context_id).map_or(0, |stream| action(stream.on_request_headers()))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: bool) -> u32 {
    stream(context_id).map_or(0, |stream| action(stream.on_request_body(body_size, end_of_stream)))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, _trailers: usize) -> u32 {
    stream(context_id).map_or(0, |stream| action(stream.on_request_trailers()))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, _end_of_stream: bool) -> u32 {
    stream(context_id).map_or(0, |stream| action(stream.on_response_headers()))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(context_id: u32, body_size: usize, end_of_stream: bool) -> u32 {
    stream(context_id).map_or(0, |stream| action(stream.on_response_body(body_size, end_of_stream)))
}

#[no_mangle]
pub extern "C" fn proxy_on_log(context_id: u32) {
    if let Some(stream) = stream(context_id) {
        stream.on_log();
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    let removed = CONTEXTS.with(|contexts| contexts.streams.borrow_mut().remove(&context_id));
    match removed {
        Some(stream) => stream.on_delete(),
        None => CONTEXTS.with(|contexts| contexts.roots.borrow_mut().retain(|(id, _)| *id != context_id)),
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    _root_context_id: u32,
    token: u32,
    headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    match answered(token) {
        Some(Answered::Stream(stream)) => stream.on_call_response(token, headers, body_size),
        Some(Answered::Root(chain)) => chain.on_call_response(token, headers, body_size),
        None => log::debug!("an answer to call {token}, whose context is gone (or never was); ignored"),
    }
}

/// A unary gRPC call's answer (the message; a failure comes to [`proxy_on_grpc_close`]).
#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive(_root_context_id: u32, token: u32, message_size: usize) {
    grpc_answered(token, 0, message_size);
}

/// A gRPC call that ended without a message: its status.
#[no_mangle]
pub extern "C" fn proxy_on_grpc_close(_root_context_id: u32, token: u32, status: u32) {
    grpc_answered(token, status, 0);
}

fn grpc_answered(token: u32, status: u32, message_size: usize) {
    match answered(token) {
        Some(Answered::Stream(stream)) => stream.on_grpc_response(token, status, message_size),
        Some(Answered::Root(chain)) => chain.on_grpc_response(token, status, message_size),
        None => log::debug!("an answer to gRPC call {token}, whose context is gone (or never was); ignored"),
    }
}

/// Writes the `log` crate's records to Envoy's log.
struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let _ = abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}
