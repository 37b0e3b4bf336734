//! Aggregate filter: answers composed endpoints itself by calling several Envoy clusters and
//! merging their JSON. This file is the proxy-wasm adapter; the logic is in the modules.

pub mod aggregation;
pub mod config;
pub mod shape;
pub mod template;

use aggregation::{Aggregation, Answer, Body, Request, Step};
use config::AggregateConfig;
use gateway_common::host::{now_millis, plugin_configuration, publish_log_field};
use gateway_common::log_fields;
use gateway_common::path_match::strip_query;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::collections::HashMap;
use std::rc::Rc;
use template::percent_decode;

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs a panic at critical level.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AggregateRoot { config: None }) });
}}

struct AggregateRoot {
    config: Option<Rc<AggregateConfig>>,
}

impl Context for AggregateRoot {}

impl RootContext for AggregateRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match plugin_configuration().and_then(|bytes| AggregateConfig::parse(&bytes).map_err(|e| e.to_string())) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(reason) => {
                log::error!("aggregate: {reason}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AggregateHttp { config: self.config.clone(), aggregation: None, calls: HashMap::new() }))
    }
}

struct AggregateHttp {
    config: Option<Rc<AggregateConfig>>,
    /// Set when the request matched an endpoint: this filter answers it.
    aggregation: Option<Aggregation>,
    /// Call token to backend index.
    calls: HashMap<u32, usize>,
}

impl Context for AggregateHttp {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(backend) = self.calls.remove(&token_id) else {
            log::warn!("aggregate: an answer for unknown call {token_id}; ignored");
            return;
        };
        let Some(aggregation) = &self.aggregation else { return };
        let status = (num_headers > 0)
            .then(|| hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status").ok().flatten())
            .flatten()
            .and_then(|status| std::str::from_utf8(&status).ok()?.parse::<u16>().ok());
        // Zero headers (or no status) is how Envoy reports a reset or a failed call.
        let answer = match status {
            None => Answer::Reset,
            Some(status) => {
                let body = if body_size > aggregation.max_response_bytes(backend) {
                    Body::TooLarge(body_size)
                } else {
                    let bytes = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size);
                    Body::Bytes(bytes.ok().flatten().unwrap_or_default())
                };
                Answer::Response { status, body }
            }
        };
        self.run(|aggregation, now| aggregation.answer(backend, answer, now));
    }
}

impl HttpContext for AggregateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else { return Action::Continue };
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                .ok()
                .flatten()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        };
        let (Some(method), Some(path)) = (header(":method"), header(":path")) else { return Action::Continue };
        let Some((endpoint, parameters)) = config.find(&method, &path) else { return Action::Continue };
        let mut request = Request::default();
        for (name, value) in parameters {
            request.path_parameters.insert(name.to_string(), percent_decode(value, false));
        }
        if let Some((_, query)) = path.split_once('?') {
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                request.query.entry(percent_decode(name, true)).or_insert_with(|| percent_decode(value, true));
            }
        }
        for name in &endpoint.request_headers {
            if let Some(value) = header(name) {
                request.headers.insert(name.clone(), value);
            }
        }
        log::debug!("aggregate: {method} {} matches an endpoint", strip_query(&path));
        self.aggregation = Some(Aggregation::new(Rc::clone(endpoint), request, now_ms()));
        self.run(|aggregation, now| aggregation.start(now));
        Action::Pause
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        // An answered request must not continue to the router when its body arrives.
        if self.aggregation.is_some() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.aggregation.is_some() {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

impl AggregateHttp {
    /// Applies one step of the aggregation, and the steps that follow from it without waiting
    /// (a call Envoy refuses to send is answered at once).
    fn run(&mut self, first: impl FnOnce(&mut Aggregation, u64) -> Step) {
        let Some(aggregation) = self.aggregation.as_mut() else { return };
        let mut steps = vec![first(aggregation, now_ms())];
        while let Some(step) = steps.pop() {
            match step {
                Step::Wait => {}
                Step::Reply(reply) => {
                    publish_log_field(log_fields::AGGREGATE, reply.outcome());
                    let headers: Vec<(&str, &str)> =
                        reply.headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
                    if let Err(status) =
                        hostcalls::send_http_response(u32::from(reply.status), headers, Some(&reply.body))
                    {
                        log::error!("aggregate: cannot send the answer: {status:?}");
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
                        match hostcalls::dispatch_http_call(&call.cluster, headers, None, vec![], call.timeout) {
                            Ok(token) => {
                                self.calls.insert(token, call.backend);
                            }
                            Err(status) => {
                                log::warn!("aggregate: cannot call cluster `{}`: {status:?}", call.cluster);
                                steps.push(aggregation.answer(call.backend, Answer::NotSent, now_ms()));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The host's clock in milliseconds (0 if it cannot be read: every deadline then passes).
fn now_ms() -> u64 {
    now_millis().unwrap_or(0)
}
