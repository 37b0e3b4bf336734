//! Not a product filter: a benchmark instrument. Per request it makes the host calls its
//! configuration lists, in the phase each is listed under, and nothing else, so `make bench`
//! shows what a set of host calls costs without any filter logic: the five reads the metrics
//! labels need, or every call the bundle makes.
//! Configuration: `{"request_headers": [call, ...], "response_headers": [...], "log": [...]}`,
//! each call one of `header:<name>`, `response_header:<name>`, `property:<a.b>`,
//! `headers` (every request header in one call, as the filters fetch them),
//! `set_header:<name>`, `remove_header:<name>`, `add_response_header:<name>`, `clock`,
//! `counter`, `histogram`, `shared_get`, `shared_set`.

use gateway_common::host::{HeaderMap, Host};
use gateway_host::ProxyHost;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot { probe: None }) });
}}

enum Call {
    Header(String),
    /// Through the filters' own host (`gateway-host`), which reads the host's buffer in place.
    Headers,
    ResponseHeader(String),
    Property(Vec<String>),
    SetHeader(String),
    RemoveHeader(String),
    AddResponseHeader(String),
    Clock,
    Counter(u32),
    Histogram(u32),
    SharedGet,
    SharedSet,
}

struct Plan {
    request_headers: Vec<Call>,
    response_headers: Vec<Call>,
    log: Vec<Call>,
}

const SHARED_KEY: &str = "call-probe";

fn parse(spec: &str) -> Result<Call, String> {
    let (kind, argument) = spec.split_once(':').unwrap_or((spec, ""));
    let owned = argument.to_string();
    Ok(match kind {
        "header" => Call::Header(owned),
        "headers" => Call::Headers,
        "response_header" => Call::ResponseHeader(owned),
        "property" => Call::Property(argument.split('.').map(str::to_string).collect()),
        "set_header" => Call::SetHeader(owned),
        "remove_header" => Call::RemoveHeader(owned),
        "add_response_header" => Call::AddResponseHeader(owned),
        "clock" => Call::Clock,
        "counter" => Call::Counter(
            hostcalls::define_metric(MetricType::Counter, "call_probe_total").map_err(|e| format!("{e:?}"))?,
        ),
        "histogram" => Call::Histogram(
            hostcalls::define_metric(MetricType::Histogram, "call_probe_ms").map_err(|e| format!("{e:?}"))?,
        ),
        "shared_get" => Call::SharedGet,
        "shared_set" => Call::SharedSet,
        other => return Err(format!("unknown call `{other}`")),
    })
}

const PHASES: [&str; 3] = ["request_headers", "response_headers", "log"];

/// The plan a configuration lists; an unknown phase is refused (a misspelt one would
/// otherwise measure nothing and look cheap).
fn plan(config: &serde_json::Value) -> Result<Plan, String> {
    let object = config.as_object().ok_or("the configuration is not an object")?;
    if let Some(unknown) = object.keys().find(|key| !PHASES.contains(&key.as_str())) {
        return Err(format!("unknown phase `{unknown}` (expected one of {PHASES:?})"));
    }
    let calls = |phase: &str| -> Result<Vec<Call>, String> {
        let Some(list) = object.get(phase) else { return Ok(Vec::new()) };
        let list = list.as_array().ok_or(format!("`{phase}` is not a list"))?;
        list.iter().map(|spec| parse(spec.as_str().ok_or(format!("`{phase}` holds a non-string"))?)).collect()
    };
    Ok(Plan {
        request_headers: calls("request_headers")?,
        response_headers: calls("response_headers")?,
        log: calls("log")?,
    })
}

fn run(plan: &[Call], host: &ProxyHost) {
    for call in plan {
        let outcome = match call {
            Call::Header(name) => {
                hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).map(|v| v.map(|v| v.len()))
            }
            Call::Headers => {
                Ok(host.headers(HeaderMap::Request).map(|headers| headers.get(":path").map_or(0, <[u8]>::len)))
            }
            Call::ResponseHeader(name) => {
                hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).map(|v| v.map(|v| v.len()))
            }
            Call::Property(path) => {
                hostcalls::get_property(path.iter().map(String::as_str).collect()).map(|v| v.map(|v| v.len()))
            }
            Call::SetHeader(name) => {
                hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some("probe")).map(|()| None)
            }
            Call::RemoveHeader(name) => {
                hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None).map(|()| None)
            }
            Call::AddResponseHeader(name) => {
                hostcalls::add_map_value(MapType::HttpResponseHeaders, name, "probe").map(|()| None)
            }
            Call::Clock => hostcalls::get_current_time().map(|_| None),
            Call::Counter(id) => hostcalls::increment_metric(*id, 1).map(|()| None),
            Call::Histogram(id) => hostcalls::record_metric(*id, 1).map(|()| None),
            Call::SharedGet => hostcalls::get_shared_data(SHARED_KEY).map(|(v, _)| v.map(|v| v.len())),
            Call::SharedSet => hostcalls::set_shared_data(SHARED_KEY, Some(b"0123456789abcdef"), None).map(|()| None),
        };
        // Keep the optimizer from dropping the calls' results.
        std::hint::black_box(outcome.ok());
    }
}

/// The calls to make, and the host to make `headers` through.
struct Probe {
    plan: Plan,
    host: ProxyHost,
}

struct ProbeRoot {
    probe: Option<Rc<Probe>>,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = hostcalls::get_buffer(proxy_wasm::types::BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config: serde_json::Value = if bytes.is_empty() {
            serde_json::json!({})
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(config) => config,
                Err(error) => {
                    log::error!("call-probe: {error}");
                    return false;
                }
            }
        };
        let plan = plan(&config);
        match plan {
            Ok(plan) => {
                self.probe = Some(Rc::new(Probe { plan, host: ProxyHost::for_plugin("call-probe") }));
                true
            }
            Err(error) => {
                log::error!("call-probe: {error}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeHttp { probe: Rc::clone(self.probe.as_ref()?) }))
    }
}

struct ProbeHttp {
    probe: Rc<Probe>,
}

impl Context for ProbeHttp {}

impl HttpContext for ProbeHttp {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        run(&self.probe.plan.request_headers, &self.probe.host);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        run(&self.probe.plan.response_headers, &self.probe.host);
        Action::Continue
    }

    fn on_log(&mut self) {
        run(&self.probe.plan.log, &self.probe.host);
    }
}
