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
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
use recorder::{MetricKind, MetricUpdate, Recorder, RequestFacts};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::SystemTime;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(MetricsRoot { worker: None }) });
}}

/// Everything one VM (one Envoy worker) keeps between requests.
struct Worker {
    config: MetricsConfig,
    recorder: Recorder,
    /// Envoy metric ids by stat name: defining a metric is a host call with a string, so
    /// each distinct name is defined once per worker. `None`: the host refused it, skip it.
    metric_ids: HashMap<String, Option<u32>>,
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
        Some(Box::new(MetricsHttp { worker: self.worker.clone(), started: None, request_bytes: 0, response_bytes: 0 }))
    }
}

/// One stream. Every host read that returns data costs a round trip into the VM (about as much
/// as a filter callback, see `make bench`), so facts that Envoy hands to the callbacks anyway
/// are taken from there: body sizes from the body callbacks, the start time from the clock
/// (which returns no data) when the request headers arrive.
struct MetricsHttp {
    worker: Option<Rc<RefCell<Worker>>>,
    started: Option<SystemTime>,
    request_bytes: u64,
    response_bytes: u64,
}

impl Context for MetricsHttp {}

impl HttpContext for MetricsHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.started = hostcalls::get_current_time().ok();
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        // The filter never buffers, so each call reports only the newly arrived chunk.
        self.request_bytes = self.request_bytes.saturating_add(body_size as u64);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.response_bytes = self.response_bytes.saturating_add(body_size as u64);
        Action::Continue
    }

    /// Runs once per stream after the response (or local reply, or reset), so every outcome
    /// is counted, including 404s from Envoy and rejections by later filters.
    fn on_log(&mut self) {
        let Some(worker) = &self.worker else { return };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return;
        };
        let worker = &mut *worker;
        let duration_ms = match (self.started, hostcalls::get_current_time()) {
            // Envoy's clock for wasm is the wall clock: a step backwards counts as 0 ms.
            (Some(started), Ok(now)) => Some(now.duration_since(started).map_or(0, |d| d.as_millis() as u64)),
            _ => None,
        };
        let facts = RequestFacts {
            label_values: read_label_values(&worker.config),
            duration_ms,
            request_bytes: Some(self.request_bytes),
            response_bytes: Some(self.response_bytes),
        };
        worker.updates.clear();
        worker.recorder.record(&facts, &HostSharedData, &mut worker.updates);
        for update in &worker.updates {
            apply(&mut worker.metric_ids, update);
        }
    }
}

fn read_label_values(config: &MetricsConfig) -> Vec<Option<Vec<u8>>> {
    config
        .labels
        .iter()
        .map(|label| match &label.source {
            LabelSource::Route => property(&["xds", "route_name"]),
            LabelSource::Upstream => property(&["xds", "cluster_name"]),
            // Local replies carry :status too; a stream reset before any response has none.
            LabelSource::Code => header(MapType::HttpResponseHeaders, ":status"),
            LabelSource::Consumer => header(MapType::HttpRequestHeaders, &config.consumer_header),
            LabelSource::Header(name) => header(MapType::HttpRequestHeaders, name),
            LabelSource::Method => header(MapType::HttpRequestHeaders, ":method"),
        })
        .collect()
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// Header values are client input: read as bytes, never assumed to be UTF-8.
fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(map, name).ok().flatten()
}

/// Defines the metric on first use (so a series exists even at 0) and records the update.
/// Failures are logged once per metric name: a persistent one must not flood Envoy's log at
/// request rate.
fn apply(metric_ids: &mut HashMap<String, Option<u32>>, update: &MetricUpdate) {
    let id = match metric_ids.get(&update.name) {
        Some(id) => *id,
        None => {
            let metric_type = match update.kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Histogram => MetricType::Histogram,
            };
            let id = hostcalls::define_metric(metric_type, &update.name)
                .inspect_err(|status| log::warn!("metrics: cannot define metric {}: {status:?}", update.name))
                .ok();
            metric_ids.insert(update.name.clone(), id);
            id
        }
    };
    let Some(id) = id else { return };
    let result = match update.kind {
        // Envoy refuses an increment of 0 (BadArgument); there is nothing to add anyway.
        MetricKind::Counter if update.value == 0 => Ok(()),
        MetricKind::Counter => hostcalls::increment_metric(id, i64::try_from(update.value).unwrap_or(i64::MAX)),
        MetricKind::Histogram => hostcalls::record_metric(id, update.value),
    };
    if let Err(status) = result {
        log::warn!("metrics: cannot update metric {} (further failures of it are not logged): {status:?}", update.name);
        metric_ids.insert(update.name.clone(), None);
    }
}
