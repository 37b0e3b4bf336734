//! The aggregate filter as a stage: a request for a composed endpoint is answered here, from
//! calls to the configured Envoy clusters; any other request passes untouched.

use crate::aggregation::{Aggregation, Answer, Body, Request as Composed, Step};
use crate::config::AggregateConfig;
use crate::template::percent_decode;
use gateway_common::counter::BatchedCounter;
use gateway_common::host::{now_millis, publish_log_field, HeaderMap, Host};
use gateway_common::log_fields;
use gateway_common::path_match::strip_query;
use gateway_common::request::{Request, RequestFacts};
use gateway_common::stage::{Flow, Stage, StageStream};
use std::collections::HashMap;
use std::rc::Rc;

/// The answers a composed endpoint gives, as counted in `gateway_aggregate_requests_total`.
const OUTCOMES: [&str; 3] = ["complete", "partial", "failed"];

/// Builds the stage from the filter's JSON configuration.
pub fn build(configuration: &[u8], host: &dyn Host) -> Result<Box<dyn Stage>, String> {
    let config = AggregateConfig::parse(configuration).map_err(|error| error.to_string())?;
    let answers = OUTCOMES
        .map(|outcome| BatchedCounter::define(host, &format!("gateway_aggregate_requests_total.result.{outcome}")));
    Ok(Box::new(AggregateStage { config: Rc::new(config), answers: Rc::new(answers) }))
}

struct AggregateStage {
    config: Rc<AggregateConfig>,
    /// Per [`OUTCOMES`].
    answers: Rc<[BatchedCounter; 3]>,
}

impl Stage for AggregateStage {
    fn new_stream(&self) -> Box<dyn StageStream> {
        Box::new(AggregateStream {
            config: Rc::clone(&self.config),
            answers: Rc::clone(&self.answers),
            aggregation: None,
            calls: HashMap::new(),
        })
    }

    fn on_tick(&self, host: &dyn Host) -> Vec<u32> {
        self.answers.iter().for_each(|counter| counter.flush(host));
        Vec::new()
    }
}

struct AggregateStream {
    config: Rc<AggregateConfig>,
    answers: Rc<[BatchedCounter; 3]>,
    /// Set when the request matched an endpoint: this filter answers it.
    aggregation: Option<Aggregation>,
    /// Call token to backend index.
    calls: HashMap<u32, usize>,
}

impl StageStream for AggregateStream {
    fn on_request_headers(&mut self, request: &mut Request, _context_id: u32) -> Flow {
        // Most requests are not aggregated: they are matched in place, without copying method
        // and path, and leave before any of the work an aggregated request needs.
        let [Some(method), Some(path)] = request.headers([":method", ":path"]) else { return Flow::Continue };
        if !self.config.may_match(method, path) {
            return Flow::Continue;
        }
        let matched = match (std::str::from_utf8(method), std::str::from_utf8(path)) {
            (Ok(method), Ok(path)) => self.config.find(method, path).is_some(),
            // Bytes that are not UTF-8 are matched as replaced characters, as the composed
            // request will carry them.
            _ => self.config.find(&String::from_utf8_lossy(method), &String::from_utf8_lossy(path)).is_some(),
        };
        if !matched {
            return Flow::Continue;
        }
        self.start(request)
    }

    fn on_request_body(&mut self, _new_bytes: usize, _end_of_stream: bool) -> Flow {
        // An answered request must not continue to the router when its body arrives.
        if self.aggregation.is_some() {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }

    fn on_request_trailers(&mut self) -> Flow {
        if self.aggregation.is_some() {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }

    fn on_call_response(
        &mut self,
        request: &mut Request,
        token: u32,
        headers: usize,
        body_size: usize,
    ) -> Option<Flow> {
        let backend = self.calls.remove(&token)?;
        let aggregation = self.aggregation.as_ref()?;
        let host = request.host;
        let status = (headers > 0)
            .then(|| host.header(HeaderMap::CallResponse, ":status"))
            .flatten()
            .and_then(|status| std::str::from_utf8(&status).ok()?.parse::<u16>().ok());
        // Zero headers (or no status) is how Envoy reports a reset or a failed call.
        let answer = match status {
            None => Answer::Reset,
            Some(status) => {
                let body = if body_size > aggregation.max_response_bytes(backend) {
                    Body::TooLarge(body_size)
                } else {
                    Body::Bytes(host.call_response_body(body_size).unwrap_or_default())
                };
                Answer::Response { status, body }
            }
        };
        self.run(host, |aggregation, now| aggregation.answer(backend, answer, now));
        // The request was answered (or still waits); it never goes on to the router.
        Some(Flow::Pause)
    }
}

impl AggregateStream {
    /// Answers a request that matched an endpoint: the composed request is built and the first
    /// calls go out. Kept out of `on_request_headers`, which every request runs.
    #[cold]
    #[inline(never)]
    fn start(&mut self, request: &mut Request) -> Flow {
        let config = Rc::clone(&self.config);
        let [Some(method), Some(path)] = request.headers([":method", ":path"]) else { return Flow::Continue };
        let (method, path) = (String::from_utf8_lossy(method).into_owned(), String::from_utf8_lossy(path).into_owned());
        let mut text = |name: &str| request.header(name).map(|bytes| String::from_utf8_lossy(bytes).into_owned());
        let Some((endpoint, parameters)) = config.find(&method, &path) else { return Flow::Continue };
        let mut composed = Composed::default();
        for (name, value) in parameters {
            composed.path_parameters.insert(name.to_string(), percent_decode(value));
        }
        if let Some((_, query)) = path.split_once('?') {
            // The first value of each parameter, decoded as forms encode them (`+` a space).
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                composed.query.entry(name.into_owned()).or_insert_with(|| value.into_owned());
            }
        }
        for name in &endpoint.request_headers {
            if let Some(value) = text(name) {
                composed.headers.insert(name.clone(), value);
            }
        }
        log::debug!("aggregate: {method} {} matches an endpoint", strip_query(&path));
        let host = request.host;
        self.aggregation = Some(Aggregation::new(Rc::clone(endpoint), composed, now_ms(host)));
        self.run(host, |aggregation, now| aggregation.start(now));
        Flow::Pause
    }

    /// Applies one step of the aggregation, and the steps that follow from it without waiting
    /// (a call Envoy refuses to send is answered at once).
    fn run(&mut self, host: &dyn Host, first: impl FnOnce(&mut Aggregation, u64) -> Step) {
        let Some(aggregation) = self.aggregation.as_mut() else { return };
        let mut steps = vec![first(aggregation, now_ms(host))];
        while let Some(step) = steps.pop() {
            match step {
                Step::Wait => {}
                Step::Reply(reply) => {
                    let outcome = reply.outcome();
                    if let Some(counter) =
                        OUTCOMES.iter().position(|known| *known == outcome).and_then(|index| self.answers.get(index))
                    {
                        counter.add(1);
                    }
                    publish_log_field(host, log_fields::AGGREGATE, outcome);
                    let headers: Vec<(&str, &str)> =
                        reply.headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
                    if let Err(status) = host.send_reply(u32::from(reply.status), &headers, &reply.body) {
                        log::error!("aggregate: cannot send the answer: {status}");
                    }
                }
                Step::Send(calls) => {
                    for call in calls {
                        // A refused call earlier in this batch may already have decided the answer.
                        if aggregation.is_finished() {
                            break;
                        }
                        let headers: Vec<(&str, &str)> =
                            call.headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
                        match host.http_call(&call.cluster, &headers, call.timeout) {
                            Ok(token) => {
                                self.calls.insert(token, call.backend);
                            }
                            Err(status) => {
                                log::warn!("aggregate: cannot call cluster `{}`: {status}", call.cluster);
                                steps.push(aggregation.answer(call.backend, Answer::NotSent, now_ms(host)));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The host's clock in milliseconds (0 if it cannot be read: every deadline then passes).
fn now_ms(host: &dyn Host) -> u64 {
    now_millis(host).unwrap_or(0)
}
