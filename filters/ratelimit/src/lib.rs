//! Ratelimit filter: limits per rule and key, exact across Envoy's worker threads, with the
//! IETF RateLimit headers. This file is the proxy-wasm adapter; the logic is in the modules.

pub mod config;
pub mod gcra;
pub mod global;
pub mod headers;
pub mod limiter;
pub mod rls;
pub mod table;

use config::{FailurePolicy, RateLimitConfig};
use gateway_common::host::{
    now_nanos, plugin_configuration, publish_log_field, BatchedCounter, HostSharedData, COUNTER_FLUSH_PERIOD,
};
use gateway_common::log_fields;
use gateway_common::response::error_body;
use global::CallOutcome;
use limiter::{CheckResult, Decision, Failure, RequestFacts, Verdict};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs a panic at critical level.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RateLimitRoot { worker: None }) });
}}

const DECISIONS: [&str; 3] = ["allowed", "rejected", "shadow_rejected"];
const FAILURES: [Failure; 6] = [
    Failure::TableFull,
    Failure::Contended,
    Failure::Store,
    Failure::ServiceTimeout,
    Failure::ServiceError,
    Failure::ServiceBadAnswer,
];
/// Counters per rule: one per decision, then one per failure.
const COUNTERS: usize = DECISIONS.len() + FAILURES.len();

/// What one VM (one Envoy worker) keeps: the compiled config, the table's hash key, and its
/// metrics.
struct Worker {
    config: RateLimitConfig,
    seed: [u8; 16],
    /// Per rule: one counter for each of [`DECISIONS`], then one for each of [`FAILURES`].
    counters: Vec<[BatchedCounter; COUNTERS]>,
    /// Set when the host has no timer for this VM.
    flush_each_request: bool,
    /// Failures are logged once per worker and kind, then only counted: a flood must not
    /// turn into a log flood.
    logged_failures: [Cell<bool>; FAILURES.len()],
    logged_no_clock: Cell<bool>,
}

struct RateLimitRoot {
    worker: Option<Rc<Worker>>,
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = match plugin_configuration()
            .and_then(|bytes| RateLimitConfig::parse(&bytes).map_err(|error| error.to_string()))
        {
            Ok(config) => config,
            Err(reason) => {
                log::error!("ratelimit: {reason}");
                return false;
            }
        };
        let mut fresh_seed = [0u8; 16];
        if let Err(error) = getrandom::fill(&mut fresh_seed) {
            log::error!("ratelimit: no randomness for the table's hash key: {error}");
            return false;
        }
        // Envoy configures the plugin on its main thread before it starts the workers, so the
        // whole table exists before any request can update it.
        let seed = match limiter::create_table(&HostSharedData, &config, fresh_seed) {
            Ok(seed) => seed,
            Err(error) => {
                log::error!("ratelimit: cannot create the bucket table in shared data: {error}");
                return false;
            }
        };
        let define = |family: &str, rule: &str, label: &str, value: &str| {
            BatchedCounter::define(&format!("{family}.rule.{rule}.{label}.{value}"))
        };
        let counters = config
            .rules
            .iter()
            .map(|rule| {
                let decision = |index: usize| {
                    define(
                        "gateway_ratelimit_requests_total",
                        &rule.name,
                        "decision",
                        DECISIONS.get(index).unwrap_or(&""),
                    )
                };
                let failure = |index: usize| {
                    let reason = FAILURES.get(index).map_or("", |failure| failure.as_str());
                    define("gateway_ratelimit_failures_total", &rule.name, "reason", reason)
                };
                std::array::from_fn(|slot| match slot.checked_sub(DECISIONS.len()) {
                    None => decision(slot),
                    Some(index) => failure(index),
                })
            })
            .collect();
        let flush_each_request = match hostcalls::set_tick_period(COUNTER_FLUSH_PERIOD) {
            Ok(()) => false,
            Err(status) => {
                log::warn!("ratelimit: no timer ({status:?}); metrics are flushed with each request instead");
                true
            }
        };
        self.worker = Some(Rc::new(Worker {
            config,
            seed,
            counters,
            flush_each_request,
            logged_failures: Default::default(),
            logged_no_clock: Cell::new(false),
        }));
        true
    }

    fn on_tick(&mut self) {
        if let Some(worker) = &self.worker {
            worker.flush_metrics();
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimitHttp {
            worker: self.worker.clone(),
            response_headers: Vec::new(),
            replied: false,
            awaiting_service: None,
        }))
    }
}

struct RateLimitHttp {
    worker: Option<Rc<Worker>>,
    /// Headers to add to the upstream's response.
    response_headers: Vec<(&'static str, String)>,
    /// True once this filter answered the request itself (its reply carries its own headers).
    replied: bool,
    /// While the request waits for the rate limit service: the call, when it was sent, and
    /// the local decision.
    awaiting_service: Option<(u32, u64, Decision)>,
}

impl Context for RateLimitHttp {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(worker) = self.worker.clone() else { return };
        let Some((token, sent_at, decision)) = self.awaiting_service.take() else { return };
        if token != token_id {
            self.awaiting_service = Some((token, sent_at, decision));
            return;
        }
        let elapsed = Duration::from_nanos(now_nanos().unwrap_or(sent_at).saturating_sub(sent_at));
        let body = if status_code == 0 { self.get_grpc_call_response_body(0, response_size) } else { None };
        let outcome = match status_code {
            0 => CallOutcome::Answered(body.as_deref()),
            status => CallOutcome::Status { status, elapsed },
        };
        let decision = global::decide(&worker.config, decision, outcome);
        if let Action::Continue = self.finish(&worker, decision) {
            self.resume_http_request();
        }
    }
}

impl HttpContext for RateLimitHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else { return Action::Continue };
        let Some(now) = now_nanos() else {
            if !worker.logged_no_clock.replace(true) {
                log::warn!(
                    "ratelimit: the host clock is unavailable; requests are not limited (logged once per worker)"
                );
            }
            return Action::Continue;
        };
        let mut decision = limiter::evaluate(&worker.config, &mut HostRequest, &HostSharedData, worker.seed, now);
        if let (Some(service), false) = (&worker.config.rate_limit_service, decision.global.is_empty()) {
            let message = global::request_message(&service.domain, &decision.global);
            let call = self.dispatch_grpc_call(
                &service.cluster,
                global::SERVICE,
                global::METHOD,
                Vec::new(),
                Some(&message),
                service.timeout,
            );
            match call {
                Ok(token) => {
                    // Envoy ends the call by its timeout at the latest, so the request always
                    // resumes or gets its answer in `on_grpc_call_response`.
                    self.awaiting_service = Some((token, now, decision));
                    return Action::Pause;
                }
                Err(status) => {
                    log::debug!("ratelimit: cannot call the rate limit service: {status:?}");
                    decision = global::decide(&worker.config, decision, CallOutcome::NotSent);
                }
            }
        }
        self.finish(&worker, decision)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.replied {
            for (name, value) in &self.response_headers {
                // `RateLimit` and `RateLimit-Policy` are structured-field Lists: an upstream's
                // own items and ours combine into one list, so appending is correct (and
                // cheaper than replacing). The legacy single-valued headers are replaced.
                let result = if name.starts_with("x-") {
                    hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value))
                } else {
                    hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value)
                };
                if let Err(status) = result {
                    log::warn!("ratelimit: cannot set response header {name}: {status:?}");
                }
            }
        }
        Action::Continue
    }
}

impl RateLimitHttp {
    /// Counts and publishes `decision`, then lets the request go on (with the headers for the
    /// response) or answers it.
    fn finish(&mut self, worker: &Worker, decision: Decision) -> Action {
        worker.count(&decision);
        if worker.config.access_log_fields {
            worker.publish(&decision);
        }
        let headers = headers::rate_limit_headers(&worker.config, &decision.checks);
        match decision.verdict {
            Verdict::Allow => {
                self.response_headers = headers;
                Action::Continue
            }
            Verdict::Reject { rule, retry_after_seconds } => {
                let name = worker.config.rules.get(rule).map_or("", |rule| rule.name.as_str());
                let message = format!("rate limit `{name}` exceeded; retry in {retry_after_seconds} s");
                self.reply(429, &retry_after_seconds.to_string(), headers, &error_body("rate_limited", &message))
            }
            Verdict::Unavailable { .. } => {
                let body = error_body("rate_limit_unavailable", "the rate limit state is unavailable; retry shortly");
                self.reply(503, "1", headers, &body)
            }
        }
    }

    fn reply(&mut self, status: u32, retry_after: &str, rate_headers: Vec<(&str, String)>, body: &[u8]) -> Action {
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json"), ("retry-after", retry_after)];
        headers.extend(rate_headers.iter().map(|(name, value)| (*name, value.as_str())));
        self.replied = true;
        if let Err(status) = hostcalls::send_http_response(status, headers, Some(body)) {
            log::error!("ratelimit: cannot send the local reply: {status:?}");
            return Action::Continue;
        }
        Action::Pause
    }
}

impl Worker {
    fn count(&self, decision: &Decision) {
        for check in &decision.checks {
            let add = |slot: usize| {
                if let Some(counter) = self.counters.get(check.rule).and_then(|counters| counters.get(slot)) {
                    counter.add(1);
                }
            };
            if check.overflowed {
                // Counted as `table_full` and as its decision in the overflow bucket.
                add(self.failure_slot(check.rule, Failure::TableFull));
            }
            add(match check.result {
                CheckResult::Allowed(_) => 0,
                CheckResult::Rejected(_) => 1,
                CheckResult::ShadowRejected(_) => 2,
                CheckResult::Failed(failure) => self.failure_slot(check.rule, failure),
            });
        }
        if self.flush_each_request {
            self.flush_metrics();
        }
    }

    /// The deciding rule and the decision, for the access log (nothing when no rule applied).
    fn publish(&self, decision: &Decision) {
        let (rule, outcome) = match &decision.verdict {
            Verdict::Reject { rule, .. } => (*rule, "rejected"),
            Verdict::Unavailable { rule } => (*rule, "unavailable"),
            Verdict::Allow => {
                let Some(last) = decision.checks.last() else { return };
                let outcome = match last.result {
                    CheckResult::ShadowRejected(_) => "shadow_rejected",
                    _ => "allowed",
                };
                (last.rule, outcome)
            }
        };
        if let Some(rule) = self.config.rules.get(rule) {
            publish_log_field(log_fields::RATELIMIT_RULE, &rule.name);
            publish_log_field(log_fields::RATELIMIT_DECISION, outcome);
        }
    }

    fn flush_metrics(&self) {
        self.counters.iter().flatten().for_each(BatchedCounter::flush);
    }

    /// The counter slot of `failure` (after the [`DECISIONS`]); logs it the first time.
    fn failure_slot(&self, rule: usize, failure: Failure) -> usize {
        let index = FAILURES.iter().position(|known| *known == failure).unwrap_or(0);
        self.log_failure_once(rule, failure, index);
        DECISIONS.len() + index
    }

    fn log_failure_once(&self, rule: usize, failure: Failure, index: usize) {
        let Some(logged) = self.logged_failures.get(index) else { return };
        if logged.replace(true) {
            return;
        }
        let Some(rule) = self.config.rules.get(rule) else { return };
        let name = &rule.name;
        let policy = match (failure, rule.failure_policy) {
            (Failure::TableFull, _) => "keys without a slot share the rule's overflow bucket (one key's limit)",
            (_, FailurePolicy::FailOpen) => "letting requests through (fail_open)",
            (_, FailurePolicy::FailClosed) => "answering 503 (fail_closed)",
        };
        let why = match failure {
            Failure::TableFull => {
                "a bucket table group is full of active keys (raise `capacity` if this is not a flood)"
            }
            Failure::Contended => "shared data stayed contended through every compare-and-swap attempt",
            Failure::Store => "shared data failed",
            Failure::ServiceTimeout => "the rate limit service did not answer within `rate_limit_service.timeout`",
            Failure::ServiceError => {
                "the rate limit service call failed (unknown or unhealthy cluster, or a non-OK gRPC status)"
            }
            Failure::ServiceBadAnswer => "the rate limit service's answer is not a RateLimitResponse for the request",
        };
        log::warn!(
            "ratelimit: rule `{name}`: {why}; {policy}. Logged once per worker; see gateway_ratelimit_failures_total"
        );
    }
}

/// The request as the host sees it; each read is one host call.
struct HostRequest;

impl RequestFacts for HostRequest {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
    }

    fn route_name(&mut self) -> Option<Vec<u8>> {
        hostcalls::get_property(vec!["xds", "route_name"]).ok().flatten()
    }

    fn peer_address(&mut self) -> Option<Vec<u8>> {
        hostcalls::get_property(vec!["source", "address"]).ok().flatten()
    }
}
