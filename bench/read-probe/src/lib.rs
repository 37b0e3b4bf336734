//! Not a product filter: a benchmark instrument. On each request it makes exactly the host
//! reads the metrics filter makes for its five built-in labels (route, upstream, method,
//! consumer, status) and nothing else, so `make bench` shows what those reads alone cost
//! next to the empty filter's floor and the whole metrics filter.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot) });
}}

struct ProbeRoot;

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeHttp))
    }
}

struct ProbeHttp;

impl Context for ProbeHttp {}

impl HttpContext for ProbeHttp {
    fn on_log(&mut self) {
        let reads = [
            hostcalls::get_property(vec!["xds", "route_name"]).ok().flatten(),
            hostcalls::get_property(vec!["xds", "cluster_name"]).ok().flatten(),
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":method").ok().flatten(),
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-gateway-consumer").ok().flatten(),
            hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok().flatten(),
        ];
        // Keep the optimizer from dropping the reads.
        std::hint::black_box(reads);
    }
}
