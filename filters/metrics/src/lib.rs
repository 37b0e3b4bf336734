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
use recorder::{Recorder, SeriesKey};
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
    recorder: Recorder,
    /// Envoy metric ids per series key: defining a metric is a host call with a string, so
    /// each distinct combination is named and defined once per worker.
    series: HashMap<SeriesKey, SeriesIds>,
    /// Overflow counter id per label index, defined on first overflow.
    overflow_ids: HashMap<usize, Option<u32>>,
    /// Buffers reused by every request.
    key: SeriesKey,
    overflowed: Vec<usize>,
}

/// Envoy's ids for one series key; `None` where the host refused the metric.
struct SeriesIds {
    requests: Option<u32>,
    duration: Option<u32>,
    request_bytes: Option<u32>,
    response_bytes: Option<u32>,
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
        let recorder = Recorder::new(config);
        // Envoy configures the plugin on its main thread before starting the workers, so the
        // keys exist before any request can update them.
        if let Err(error) = recorder.create_shared_keys(&HostSharedData) {
            log::error!("metrics: cannot create the label registry in shared data: {error}");
            return false;
        }
        self.worker = Some(Rc::new(RefCell::new(Worker {
            recorder,
            series: HashMap::new(),
            overflow_ids: HashMap::new(),
            key: Vec::new(),
            overflowed: Vec::new(),
        })));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(MetricsHttp { worker: self.worker.clone(), started: None, request_bytes: 0, response_bytes: 0 }))
    }
}

/// One stream. Every host read that returns data costs a round trip into the VM (measured
/// costs: README, Benchmark), so facts that Envoy hands to the callbacks anyway are taken from
/// there: body sizes from the body callbacks, the start time from the clock
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
        let raw_values = read_label_values(worker.recorder.config());
        let sample = Sample { duration_ms, request_bytes: self.request_bytes, response_bytes: self.response_bytes };
        worker.record(&raw_values, &sample);
    }
}

impl Worker {
    fn record(&mut self, raw_values: &[Option<Vec<u8>>], sample: &Sample) {
        self.recorder.resolve(raw_values, &HostSharedData, &mut self.key, &mut self.overflowed);
        for &label in &self.overflowed {
            let recorder = &self.recorder;
            let id = *self
                .overflow_ids
                .entry(label)
                .or_insert_with(|| define(MetricType::Counter, &recorder.overflow_name(label)));
            increment(id, 1);
        }
        if let Some(ids) = self.series.get(&self.key) {
            ids.record(sample);
            return;
        }
        // First request of this label combination on this worker: name and define its series.
        let names = self.recorder.series_names(&self.key);
        let ids = SeriesIds {
            requests: define(MetricType::Counter, &names.requests),
            duration: define(MetricType::Histogram, &names.duration),
            request_bytes: define(MetricType::Counter, &names.request_bytes),
            response_bytes: define(MetricType::Counter, &names.response_bytes),
        };
        ids.record(sample);
        self.series.insert(self.key.clone(), ids);
    }
}

/// What one request adds to its series.
struct Sample {
    duration_ms: Option<u64>,
    request_bytes: u64,
    response_bytes: u64,
}

impl SeriesIds {
    fn record(&self, sample: &Sample) {
        increment(self.requests, 1);
        increment(self.request_bytes, sample.request_bytes);
        increment(self.response_bytes, sample.response_bytes);
        if let (Some(id), Some(duration_ms)) = (self.duration, sample.duration_ms) {
            if let Err(status) = hostcalls::record_metric(id, duration_ms) {
                log::debug!("metrics: cannot record duration: {status:?}");
            }
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

/// Defines one metric (the host returns the existing id for a name it knows). A refusal is
/// logged here, once per series, since the caller caches the outcome.
fn define(metric_type: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(metric_type, name)
        .inspect_err(|status| log::warn!("metrics: cannot define metric {name}: {status:?}"))
        .ok()
}

fn increment(id: Option<u32>, value: u64) {
    // Envoy refuses an increment of 0 (BadArgument), and there is nothing to add anyway.
    let (Some(id), 1..) = (id, value) else { return };
    if let Err(status) = hostcalls::increment_metric(id, i64::try_from(value).unwrap_or(i64::MAX)) {
        log::debug!("metrics: cannot increment metric {id}: {status:?}");
    }
}
