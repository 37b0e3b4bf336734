//! Metrics filter: per-request Prometheus metrics tagged by route, upstream, method, status
//! code and consumer. This file is the proxy-wasm adapter; the logic lives in the modules.

pub mod cardinality;
pub mod config;
pub mod labels;
pub mod recorder;

use config::{LabelSource, MetricsConfig};
use gateway_common::host::{plugin_configuration, HostSharedData};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MapType, MetricType};
use recorder::{MetricKind, MetricUpdate, Recorder, RequestFacts};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(MetricsRoot { worker: None }) });
}}

/// Everything one VM (one Envoy worker) keeps between requests.
struct Worker {
    config: MetricsConfig,
    recorder: Recorder,
    /// Envoy metric ids by stat name: defining a metric is a host call with a string, so
    /// each distinct name is defined once per worker.
    metric_ids: HashMap<String, u32>,
    /// Reused buffer for one request's updates.
    updates: Vec<MetricUpdate>,
}

struct MetricsRoot {
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Context for MetricsRoot {}

impl RootContext for MetricsRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config =
            match plugin_configuration().and_then(|bytes| MetricsConfig::parse(&bytes).map_err(|e| e.to_string())) {
                Ok(config) => config,
                Err(reason) => {
                    log::error!("metrics: {reason}");
                    return false;
                }
            };
        let recorder = Recorder::new(config.clone());
        // Envoy configures the plugin on its main thread before starting the workers, so the
        // keys exist before any request can update them.
        if let Err(error) = recorder.create_shared_keys(&HostSharedData) {
            log::error!("metrics: cannot create the label registry in shared data: {error}");
            return false;
        }
        self.worker =
            Some(Rc::new(RefCell::new(Worker { config, recorder, metric_ids: HashMap::new(), updates: Vec::new() })));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(MetricsHttp { worker: self.worker.clone() }))
    }
}

struct MetricsHttp {
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Context for MetricsHttp {}

impl HttpContext for MetricsHttp {
    /// Runs once per stream after the response (or local reply, or reset), so every outcome
    /// is counted, including 404s from Envoy and rejections by later filters.
    fn on_log(&mut self) {
        let Some(worker) = &self.worker else { return };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return;
        };
        let worker = &mut *worker;
        let facts = read_facts(&worker.config);
        worker.updates.clear();
        worker.recorder.record(&facts, &HostSharedData, &mut worker.updates);
        for update in &worker.updates {
            apply(&mut worker.metric_ids, update);
        }
    }
}

fn read_facts(config: &MetricsConfig) -> RequestFacts {
    let label_values = config
        .labels
        .iter()
        .map(|label| match &label.source {
            LabelSource::Route => property(&["xds", "route_name"]),
            LabelSource::Upstream => property(&["xds", "cluster_name"]),
            LabelSource::Method => request_header(":method"),
            LabelSource::Code => integer_property(&["response", "code"]).map(|code| code.to_string().into_bytes()),
            LabelSource::Consumer => request_header(&config.consumer_header),
            LabelSource::Header(name) => request_header(name),
        })
        .collect();
    RequestFacts {
        label_values,
        duration_ms: integer_property(&["request", "duration"]).map(|nanos| nanos / 1_000_000),
        request_bytes: integer_property(&["request", "total_size"]),
        response_bytes: integer_property(&["response", "total_size"]),
    }
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// Envoy passes integer and duration attributes as 8 little-endian bytes.
fn integer_property(path: &[&str]) -> Option<u64> {
    let bytes: [u8; 8] = property(path)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Header values are client input: read as bytes, never assumed to be UTF-8.
fn request_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
}

fn apply(metric_ids: &mut HashMap<String, u32>, update: &MetricUpdate) {
    let id = match metric_ids.get(&update.name) {
        Some(id) => *id,
        None => {
            let metric_type = match update.kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Histogram => MetricType::Histogram,
            };
            match hostcalls::define_metric(metric_type, &update.name) {
                Ok(id) => *metric_ids.entry(update.name.clone()).or_insert(id),
                Err(status) => {
                    log::warn!("metrics: cannot define metric {}: {status:?}", update.name);
                    return;
                }
            }
        }
    };
    let result = match update.kind {
        MetricKind::Counter => hostcalls::increment_metric(id, i64::try_from(update.value).unwrap_or(i64::MAX)),
        MetricKind::Histogram => hostcalls::record_metric(id, update.value),
    };
    if let Err(status) = result {
        log::warn!("metrics: cannot update metric {}: {status:?}", update.name);
    }
}
