//! The ratelimit filter as a stage: local rules decided in shared data at the request headers,
//! then one call to the rate limit service for the global rules that apply; the `RateLimit`
//! headers go on the response.

use crate::config::{FailurePolicy, RateLimitConfig};
use crate::global::{self, CallOutcome};
use crate::headers;
use crate::limiter::{self, CheckResult, Decision, Failure, Verdict};
use gateway_common::counter::BatchedCounter;
use gateway_common::host::{publish_log_field, HeaderMap, Host};
use gateway_common::log_fields;
use gateway_common::request::Request;
use gateway_common::response::error_body;
use gateway_common::shared::LastWrite;
use gateway_common::stage::{Flow, Stage, StageStream};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

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

/// Builds the stage from the filter's JSON configuration.
pub fn build(configuration: &[u8], host: &dyn Host) -> Result<Box<dyn Stage>, String> {
    let config = RateLimitConfig::parse(configuration).map_err(|error| error.to_string())?;
    let mut fresh_seed = [0u8; 16];
    getrandom::fill(&mut fresh_seed).map_err(|error| format!("no randomness for the table's hash key: {error}"))?;
    // Envoy configures the plugin on its main thread before it starts the workers, so the
    // whole table exists before any request can update it.
    let seed = limiter::create_table(host.shared_data(), &config, fresh_seed)
        .map_err(|error| format!("cannot create the bucket table in shared data: {error}"))?;
    let define = |family: &str, rule: &str, label: &str, value: &str| {
        BatchedCounter::define(host, &format!("{family}.rule.{rule}.{label}.{value}"))
    };
    let counters = config
        .rules
        .iter()
        .map(|rule| {
            let decision = |index: usize| {
                define("gateway_ratelimit_requests_total", &rule.name, "decision", DECISIONS.get(index).unwrap_or(&""))
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
    let keys = limiter::BucketKeys::new(seed, &config);
    let header_texts = headers::HeaderTexts::new(&config);
    let last_writes = RefCell::new(config.rules.iter().map(|_| LastWrite::default()).collect());
    let worker = Worker {
        config,
        keys,
        header_texts,
        last_writes,
        counters,
        logged_failures: Default::default(),
        logged_no_clock: Cell::new(false),
    };
    Ok(Box::new(RateLimitStage { worker: Rc::new(worker) }))
}

/// What one VM (one Envoy worker) keeps: the compiled config, the table's hash keys, its last
/// bucket write per rule, and its metrics.
struct Worker {
    config: RateLimitConfig,
    keys: limiter::BucketKeys,
    header_texts: headers::HeaderTexts,
    last_writes: RefCell<Vec<LastWrite>>,
    /// Per rule: one counter for each of [`DECISIONS`], then one for each of [`FAILURES`].
    counters: Vec<[BatchedCounter; COUNTERS]>,
    /// Failures are logged once per worker and kind, then only counted: a flood must not
    /// turn into a log flood.
    logged_failures: [Cell<bool>; FAILURES.len()],
    logged_no_clock: Cell<bool>,
}

struct RateLimitStage {
    worker: Rc<Worker>,
}

impl Stage for RateLimitStage {
    fn new_stream(&self) -> Box<dyn StageStream> {
        Box::new(RateLimitStream {
            worker: Rc::clone(&self.worker),
            response_headers: Vec::new(),
            replied: false,
            awaiting_service: None,
        })
    }

    fn on_tick(&self, host: &dyn Host) -> Vec<u32> {
        self.worker.flush_metrics(host);
        Vec::new()
    }
}

struct RateLimitStream {
    worker: Rc<Worker>,
    /// Headers to add to the upstream's response.
    response_headers: Vec<(&'static str, String)>,
    /// True once this filter answered the request itself (its reply carries its own headers).
    replied: bool,
    /// While the request waits for the rate limit service: the call, when it was sent, and
    /// the local decision.
    awaiting_service: Option<(u32, u64, Decision)>,
}

impl StageStream for RateLimitStream {
    fn on_request_headers(&mut self, request: &mut Request, _context_id: u32) -> Flow {
        let worker = Rc::clone(&self.worker);
        let host = request.host;
        let Some(now) = request.now_nanos() else {
            if !worker.logged_no_clock.replace(true) {
                log::warn!(
                    "ratelimit: the host clock is unavailable; requests are not limited (logged once per worker)"
                );
            }
            return Flow::Continue;
        };
        let mut decision = {
            // Nothing else borrows it: a worker runs one callback at a time. Were it borrowed,
            // the updates would just read the buckets, as without a remembered write.
            let mut last_writes = worker.last_writes.try_borrow_mut();
            let last_writes = last_writes.as_deref_mut().map_or(&mut [][..], Vec::as_mut_slice);
            limiter::evaluate(&worker.config, request, host.shared_data(), &worker.keys, last_writes, now)
        };
        if let (Some(service), false) = (&worker.config.rate_limit_service, decision.global.is_empty()) {
            let message = global::request_message(&service.domain, &decision.global);
            match host.grpc_call(&service.cluster, global::SERVICE, global::METHOD, &message, service.timeout) {
                Ok(token) => {
                    // Envoy ends the call by its timeout at the latest, so the request always
                    // resumes or gets its answer in `on_grpc_response`.
                    self.awaiting_service = Some((token, now, decision));
                    return Flow::Pause;
                }
                Err(status) => {
                    log::debug!("ratelimit: cannot call the rate limit service: {status}");
                    decision = global::decide(&worker.config, decision, CallOutcome::NotSent);
                }
            }
        }
        self.finish(host, decision)
    }

    fn on_grpc_response(&mut self, request: &mut Request, token: u32, status: u32, size: usize) -> Option<Flow> {
        let (sent_token, sent_at, decision) = self.awaiting_service.take()?;
        if sent_token != token {
            self.awaiting_service = Some((sent_token, sent_at, decision));
            return None;
        }
        let host = request.host;
        let elapsed = Duration::from_nanos(request.now_nanos().unwrap_or(sent_at).saturating_sub(sent_at));
        let body = if status == 0 { host.grpc_response_body(size) } else { None };
        let outcome = match status {
            0 => CallOutcome::Answered(body.as_deref()),
            status => CallOutcome::Status { status, elapsed },
        };
        let decision = global::decide(&self.worker.config, decision, outcome);
        Some(self.finish(host, decision))
    }

    fn on_response_headers(&mut self, request: &mut Request) -> Flow {
        if !self.replied {
            for (name, value) in &self.response_headers {
                // `RateLimit` and `RateLimit-Policy` are structured-field Lists: an upstream's
                // own items and ours combine into one list, so appending is correct (and
                // cheaper than replacing). The legacy single-valued headers are replaced.
                let result = if name.starts_with("x-") {
                    request.host.set_header(HeaderMap::Response, name, Some(value))
                } else {
                    request.host.add_header(HeaderMap::Response, name, value)
                };
                if let Err(status) = result {
                    log::warn!("ratelimit: cannot set response header {name}: {status}");
                }
            }
        }
        Flow::Continue
    }
}

impl RateLimitStream {
    /// Counts and publishes `decision`, then lets the request go on (with the headers for the
    /// response) or answers it.
    fn finish(&mut self, host: &dyn Host, decision: Decision) -> Flow {
        let worker = Rc::clone(&self.worker);
        worker.count(&decision);
        if worker.config.access_log_fields {
            worker.publish(host, &decision);
        }
        let headers = headers::rate_limit_headers(&worker.config, &worker.header_texts, &decision.checks);
        match decision.verdict {
            Verdict::Allow => {
                self.response_headers = headers;
                Flow::Continue
            }
            Verdict::Reject { rule, retry_after_seconds } => {
                let name = worker.config.rules.get(rule).map_or("", |rule| rule.name.as_str());
                self.reject(host, name, retry_after_seconds, headers)
            }
            Verdict::Unavailable { .. } => self.unavailable(host, headers),
        }
    }

    // The refusals are out of line: a request that is let on runs none of their code.
    #[cold]
    fn reject(&mut self, host: &dyn Host, rule: &str, retry_after_seconds: u64, headers: Vec<(&str, String)>) -> Flow {
        let message = format!("rate limit `{rule}` exceeded; retry in {retry_after_seconds} s");
        let body = error_body("rate_limited", &message);
        self.reply(host, 429, &retry_after_seconds.to_string(), headers, &body)
    }

    #[cold]
    fn unavailable(&mut self, host: &dyn Host, headers: Vec<(&str, String)>) -> Flow {
        let body = error_body("rate_limit_unavailable", "the rate limit state is unavailable; retry shortly");
        self.reply(host, 503, "1", headers, &body)
    }

    fn reply(
        &mut self,
        host: &dyn Host,
        status: u32,
        retry_after: &str,
        rate_headers: Vec<(&str, String)>,
        body: &[u8],
    ) -> Flow {
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json"), ("retry-after", retry_after)];
        headers.extend(rate_headers.iter().map(|(name, value)| (*name, value.as_str())));
        self.replied = true;
        if let Err(status) = host.send_reply(status, &headers, body) {
            log::error!("ratelimit: cannot send the local reply: {status}");
            return Flow::Continue;
        }
        Flow::Pause
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
    }

    /// The deciding rule and the decision, for the access log (nothing when no rule applied).
    fn publish(&self, host: &dyn Host, decision: &Decision) {
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
            publish_log_field(host, log_fields::RATELIMIT_RULE, &rule.name);
            publish_log_field(host, log_fields::RATELIMIT_DECISION, outcome);
        }
    }

    fn flush_metrics(&self, host: &dyn Host) {
        self.counters.iter().flatten().for_each(|counter| counter.flush(host));
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
