//! The metrics filter as a stage: the start time at the request headers, body sizes from the
//! body callbacks (facts Envoy hands over anyway, so no host read), and the labels at the end
//! of the stream, when every outcome is known.
//!
//! The duration goes to Envoy's histogram with each request. The counters are counted in the
//! VM and added to Envoy's on the next tick ([`gateway_common::host::COUNTER_FLUSH_PERIOD`], a
//! second): an increment is a host call, and most requests would make two. Envoy's own stats
//! sinks flush every 5 s by default, so a scrape sees the counts a second later at most.

use crate::config::{LabelSource, MetricsConfig};
use crate::recorder::{Recorder, SeriesKey, OTHER};
use gateway_common::host::{Host, MetricKind};
use gateway_common::request::{Request, RequestFacts, CLUSTER_NAME, ROUTE_NAME};
use gateway_common::stage::{Flow, Stage, StageStream};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Builds the stage from the filter's JSON configuration.
pub fn build(configuration: &[u8], host: &dyn Host) -> Result<Box<dyn Stage>, String> {
    let config = MetricsConfig::parse(configuration).map_err(|error| error.to_string())?;
    let recorder = Recorder::new(config);
    // Envoy configures the plugin on its main thread before starting the workers, so the
    // keys exist before any request can update them.
    recorder
        .create_shared_keys(host.shared_data())
        .map_err(|error| format!("cannot create the label registry in shared data: {error}"))?;
    let worker = Worker {
        recorder,
        series: HashMap::new(),
        entries: Vec::new(),
        unflushed: Vec::new(),
        overflow_ids: HashMap::new(),
        key: Vec::new(),
        overflowed: Vec::new(),
        last_series: None,
    };
    Ok(Box::new(MetricsStage { worker: Rc::new(RefCell::new(worker)) }))
}

/// Everything one VM (one Envoy worker) keeps between requests.
struct Worker {
    recorder: Recorder,
    /// The entry of each series key: defining a metric is a host call with a string, so each
    /// distinct combination is named and defined once per worker.
    series: HashMap<SeriesKey, usize>,
    /// Envoy's ids and the counts not yet added to Envoy's counters, per series.
    entries: Vec<Series>,
    /// The entries with counts to add at the next flush.
    unflushed: Vec<usize>,
    /// Overflow counter id per label index, defined on first overflow.
    overflow_ids: HashMap<usize, Option<u32>>,
    /// Buffers reused by every request.
    key: SeriesKey,
    overflowed: Vec<usize>,
    /// The series the previous request counted in: consecutive requests mostly share it, and
    /// then the lookup by key (a hash of the whole key) is skipped.
    last_series: Option<(SeriesKey, usize)>,
}

/// One series of this worker.
struct Series {
    ids: SeriesIds,
    /// Counted since the last flush: requests, request bytes, response bytes.
    unflushed: [u64; 3],
}

/// Envoy's ids for one series key; `None` where the host refused the metric.
#[derive(Clone, Copy)]
struct SeriesIds {
    requests: Option<u32>,
    duration: Option<u32>,
    request_bytes: Option<u32>,
    response_bytes: Option<u32>,
}

struct MetricsStage {
    worker: Rc<RefCell<Worker>>,
}

impl Stage for MetricsStage {
    fn new_stream(&self) -> Box<dyn StageStream> {
        Box::new(MetricsStream {
            worker: Rc::clone(&self.worker),
            started_nanos: None,
            request_bytes: 0,
            response_bytes: 0,
        })
    }

    fn on_tick(&self, host: &dyn Host) -> Vec<u32> {
        if let Ok(mut worker) = self.worker.try_borrow_mut() {
            worker.flush(host);
        }
        Vec::new()
    }
}

struct MetricsStream {
    worker: Rc<RefCell<Worker>>,
    started_nanos: Option<u64>,
    request_bytes: u64,
    response_bytes: u64,
}

impl StageStream for MetricsStream {
    fn on_request_headers(&mut self, request: &mut Request, _context_id: u32) -> Flow {
        self.started_nanos = request.now_nanos();
        Flow::Continue
    }

    fn on_request_body(&mut self, new_bytes: usize, _end_of_stream: bool) -> Flow {
        self.request_bytes = self.request_bytes.saturating_add(new_bytes as u64);
        Flow::Continue
    }

    fn on_response_body(&mut self, new_bytes: usize, _end_of_stream: bool) -> Flow {
        self.response_bytes = self.response_bytes.saturating_add(new_bytes as u64);
        Flow::Continue
    }

    /// Runs once per stream after the response (or local reply, or reset), so every outcome
    /// is counted, including 404s from Envoy and rejections by later filters.
    fn on_log(&mut self, request: &mut Request) {
        let Ok(mut worker) = self.worker.try_borrow_mut() else { return };
        let worker = &mut *worker;
        let duration_ms = match (self.started_nanos, request.now_nanos()) {
            // Envoy's clock for wasm is the wall clock: a step backwards counts as 0 ms.
            (Some(started), Some(now)) => Some(now.saturating_sub(started) / 1_000_000),
            _ => None,
        };
        let host = request.host;
        worker.key.clear();
        worker.overflowed.clear();
        for index in 0..worker.recorder.config().labels.len() {
            let config = worker.recorder.config();
            let raw = match config.labels.get(index) {
                Some(label) => label_value(&label.source, &config.consumer_header, request),
                None => None,
            };
            let id = worker.recorder.resolve_label(index, raw, host.shared_data());
            if id == OTHER {
                worker.overflowed.push(index);
            }
            worker.key.push(id);
        }
        let sample = Sample { duration_ms, request_bytes: self.request_bytes, response_bytes: self.response_bytes };
        worker.record(host, &sample);
    }
}

impl Worker {
    /// Counts `sample` in the series of `self.key`, resolved for this request.
    fn record(&mut self, host: &dyn Host, sample: &Sample) {
        for &label in &self.overflowed {
            let recorder = &self.recorder;
            let id = *self
                .overflow_ids
                .entry(label)
                .or_insert_with(|| define(host, MetricKind::Counter, &recorder.overflow_name(label)));
            increment(host, id, 1);
        }
        let index = match &self.last_series {
            Some((key, index)) if *key == self.key => *index,
            _ => self.series_index(host),
        };
        let Some(series) = self.entries.get_mut(index) else { return };
        if let (Some(id), Some(duration_ms)) = (series.ids.duration, sample.duration_ms) {
            if let Err(status) = host.record_metric(id, duration_ms) {
                log::debug!("metrics: cannot record duration: {status}");
            }
        }
        if series.unflushed == [0; 3] {
            self.unflushed.push(index);
        }
        let counts = [1, sample.request_bytes, sample.response_bytes];
        for (unflushed, count) in series.unflushed.iter_mut().zip(counts) {
            *unflushed = unflushed.saturating_add(count);
        }
    }

    /// The entry of `self.key`, made (its series named and defined) on the first request of
    /// that label combination on this worker; remembered as the last series.
    fn series_index(&mut self, host: &dyn Host) -> usize {
        let index = match self.series.get(&self.key) {
            Some(index) => *index,
            None => {
                let names = self.recorder.series_names(&self.key);
                let ids = SeriesIds {
                    requests: define(host, MetricKind::Counter, &names.requests),
                    duration: define(host, MetricKind::Histogram, &names.duration),
                    request_bytes: define(host, MetricKind::Counter, &names.request_bytes),
                    response_bytes: define(host, MetricKind::Counter, &names.response_bytes),
                };
                self.entries.push(Series { ids, unflushed: [0; 3] });
                let index = self.entries.len() - 1;
                self.series.insert(self.key.clone(), index);
                index
            }
        };
        match &mut self.last_series {
            Some((key, last)) => {
                key.clone_from(&self.key);
                *last = index;
            }
            None => self.last_series = Some((self.key.clone(), index)),
        }
        index
    }

    /// Adds what was counted since the last flush to Envoy's counters.
    fn flush(&mut self, host: &dyn Host) {
        for index in self.unflushed.drain(..) {
            let Some(series) = self.entries.get_mut(index) else { continue };
            let ids = [series.ids.requests, series.ids.request_bytes, series.ids.response_bytes];
            for (id, count) in ids.into_iter().zip(std::mem::take(&mut series.unflushed)) {
                increment(host, id, count);
            }
        }
    }
}

/// What one request adds to its series.
struct Sample {
    duration_ms: Option<u64>,
    request_bytes: u64,
    response_bytes: u64,
}

/// The raw value of one label, read through the request view (each fact at most once).
fn label_value<'r>(source: &LabelSource, consumer_header: &str, request: &'r mut Request) -> Option<&'r [u8]> {
    match source {
        LabelSource::Route => request.property(&ROUTE_NAME),
        LabelSource::Upstream => request.property(&CLUSTER_NAME),
        // Local replies carry :status too; a stream reset before any response has none.
        LabelSource::Code => request.response_header(":status"),
        LabelSource::Consumer => request.header(consumer_header),
        LabelSource::Header(name) => request.header(name),
        LabelSource::Method => request.header(":method"),
    }
}

/// Defines one metric (the host returns the existing id for a name it knows). A refusal is
/// logged here, once per series, since the caller caches the outcome.
fn define(host: &dyn Host, kind: MetricKind, name: &str) -> Option<u32> {
    let id = host.define_metric(kind, name);
    if id.is_none() {
        log::warn!("metrics: cannot define metric {name}");
    }
    id
}

fn increment(host: &dyn Host, id: Option<u32>, value: u64) {
    // Envoy refuses an increment of 0 (BadArgument), and there is nothing to add anyway.
    let (Some(id), 1..) = (id, value) else { return };
    if let Err(status) = host.increment_metric(id, value) {
        log::debug!("metrics: cannot increment metric {id}: {status}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::request::RequestMemo;
    use gateway_common::testing::FakeHost;

    /// One finished request of 10 request bytes and 20 response bytes on `host`'s worker.
    fn finish_request(stage: &dyn Stage, host: &FakeHost) {
        let mut stream = stage.new_stream();
        let mut memo = RequestMemo::default();
        stream.on_request_headers(&mut Request::new(host, &mut memo), 1);
        stream.on_request_body(10, true);
        stream.on_response_body(20, true);
        memo.new_callback();
        stream.on_log(&mut Request::new(host, &mut memo));
    }

    #[test]
    fn counters_are_added_to_envoys_once_per_series_and_tick() {
        let host = FakeHost::default()
            .with_clock_millis(1_000)
            .with_request_header(":method", "GET")
            .with_property(&ROUTE_NAME, "users")
            .with_property(&CLUSTER_NAME, "users_svc");
        host.put_header(gateway_common::host::HeaderMap::Response, ":status", "200");
        let stage = build(b"{}", &host).unwrap();
        for _ in 0..3 {
            finish_request(stage.as_ref(), &host);
        }
        let requests = "gateway_requests_total.route.users.upstream.users_svc.method.GET.code.200.consumer.anonymous";
        assert_eq!(host.counter(requests), 0, "counted in the VM until the tick");
        assert_eq!(host.calls_named("record_metric"), 3, "the duration goes to Envoy with each request");
        stage.on_tick(&host);
        stage.on_tick(&host);
        assert_eq!(host.counter(requests), 3);
        assert_eq!(host.counter("gateway_request_bytes_total.route.users.upstream.users_svc"), 30);
        assert_eq!(host.counter("gateway_response_bytes_total.route.users.upstream.users_svc"), 60);
        assert_eq!(host.calls_named("increment_metric"), 3, "one per counter; an empty tick adds nothing");
        finish_request(stage.as_ref(), &host);
        stage.on_tick(&host);
        assert_eq!(host.counter(requests), 4);
    }
}
