//! Not a product filter: a benchmark instrument. Per request it makes the host calls its
//! configuration lists, in the phase each is listed under, and nothing else, so `make bench`
//! shows what a set of host calls costs without any filter logic: the five reads the metrics
//! labels need, or every call the bundle makes.
//! Configuration: `{"request_headers": [call, ...], "response_headers": [...], "log": [...]}`,
//! each call one of `header:<name>`, `response_header:<name>`, `property:<a.b>`,
//! `headers` (every request header in one call, as the filters fetch them),
//! `set_header:<name>`, `remove_header:<name>`, `add_response_header:<name>`, `clock`,
//! `counter`, `histogram`, `shared_get`, `shared_set`.

use gateway_common::host::{HeaderMap, Host, MetricKind};
use gateway_common::request::Request;
use gateway_common::stage::{Flow, Stage, StageStream};
use std::rc::Rc;

// The same entry points and driver as every module, so the probe's calls cost what the
// bundle's cost, without the bundle's logic.
gateway_host::module!("call-probe", |configuration, host| Ok(vec![build(configuration, host)?]));

enum Call {
    Header(String),
    /// Every request header in one call, read in place as the filters read them.
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

fn parse(spec: &str, host: &dyn Host) -> Result<Call, String> {
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
            host.define_metric(MetricKind::Counter, "call_probe_total").ok_or("cannot define the counter")?,
        ),
        "histogram" => Call::Histogram(
            host.define_metric(MetricKind::Histogram, "call_probe_ms").ok_or("cannot define the histogram")?,
        ),
        "shared_get" => Call::SharedGet,
        "shared_set" => Call::SharedSet,
        other => return Err(format!("unknown call `{other}`")),
    })
}

const PHASES: [&str; 3] = ["request_headers", "response_headers", "log"];

/// The plan a configuration lists; an unknown phase is refused (a misspelt one would
/// otherwise measure nothing and look cheap).
fn plan(config: &serde_json::Value, host: &dyn Host) -> Result<Plan, String> {
    let object = config.as_object().ok_or("the configuration is not an object")?;
    if let Some(unknown) = object.keys().find(|key| !PHASES.contains(&key.as_str())) {
        return Err(format!("unknown phase `{unknown}` (expected one of {PHASES:?})"));
    }
    let calls = |phase: &str| -> Result<Vec<Call>, String> {
        let Some(list) = object.get(phase) else { return Ok(Vec::new()) };
        let list = list.as_array().ok_or(format!("`{phase}` is not a list"))?;
        list.iter().map(|spec| parse(spec.as_str().ok_or(format!("`{phase}` holds a non-string"))?, host)).collect()
    };
    Ok(Plan {
        request_headers: calls("request_headers")?,
        response_headers: calls("response_headers")?,
        log: calls("log")?,
    })
}

fn run(plan: &[Call], host: &dyn Host) {
    for call in plan {
        let outcome = match call {
            Call::Header(name) => host.header(HeaderMap::Request, name).map(|value| value.len()),
            Call::Headers => {
                host.headers(HeaderMap::Request).map(|headers| headers.get(":path").map_or(0, <[u8]>::len))
            }
            Call::ResponseHeader(name) => host.header(HeaderMap::Response, name).map(|value| value.len()),
            Call::Property(path) => {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                host.property(&path).map(|value| value.len())
            }
            Call::SetHeader(name) => host.set_header(HeaderMap::Request, name, Some("probe")).ok().map(|()| 0),
            Call::RemoveHeader(name) => host.set_header(HeaderMap::Request, name, None).ok().map(|()| 0),
            Call::AddResponseHeader(name) => host.add_header(HeaderMap::Response, name, "probe").ok().map(|()| 0),
            Call::Clock => host.now_nanos().map(|_| 0),
            Call::Counter(id) => host.increment_metric(*id, 1).ok().map(|()| 0),
            Call::Histogram(id) => host.record_metric(*id, 1).ok().map(|()| 0),
            Call::SharedGet => host.shared_data().get(SHARED_KEY).ok().flatten().map(|found| found.value.len()),
            Call::SharedSet => host.shared_data().set(SHARED_KEY, b"0123456789abcdef", 0).ok().map(|()| 0),
        };
        // Keep the optimizer from dropping the calls' results.
        std::hint::black_box(outcome);
    }
}

/// The probe's stage: its plan, run in each phase of every request.
struct Probe {
    plan: Rc<Plan>,
}

fn build(configuration: &[u8], host: &dyn Host) -> Result<Box<dyn Stage>, String> {
    let config: serde_json::Value = if configuration.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(configuration).map_err(|error| error.to_string())?
    };
    // The driver logs a refusal with the module's name in front.
    Ok(Box::new(Probe { plan: Rc::new(plan(&config, host)?) }))
}

impl Stage for Probe {
    fn new_stream(&self) -> Box<dyn StageStream> {
        Box::new(ProbeStream { plan: Rc::clone(&self.plan) })
    }

    /// The probe holds no request, so its tick wakes none.
    fn on_tick(&self, _host: &dyn Host) -> Vec<u32> {
        Vec::new()
    }
}

struct ProbeStream {
    plan: Rc<Plan>,
}

impl StageStream for ProbeStream {
    fn on_request_headers(&mut self, request: &mut Request, _context_id: u32) -> Flow {
        run(&self.plan.request_headers, request.host);
        Flow::Continue
    }

    fn on_response_headers(&mut self, request: &mut Request) -> Flow {
        run(&self.plan.response_headers, request.host);
        Flow::Continue
    }

    fn on_log(&mut self, request: &mut Request) {
        run(&self.plan.log, request.host);
    }
}
