//! Global rules: one `ShouldRateLimit` call per request to a service speaking Envoy's rate
//! limit protocol, and what its answer (or its failure) means. No proxy-wasm import: the
//! adapter sends [`request_message`] and hands the outcome to [`decide`].
//!
//! - The request: the configured domain, one descriptor per applicable global rule, in rule
//!   order: `("rule", name)` then the rule's key parts (see `limiter::descriptor_entries`).
//! - `OVER_LIMIT` for a descriptor rejects the request on behalf of its rule (429), with
//!   `Retry-After` and the `RateLimit` headers taken from the descriptor's status:
//!   `limit_remaining` is `r`, `duration_until_reset` rounded up to whole seconds (at least 1)
//!   is `t` and `Retry-After`, and `current_limit` is the policy (`q` per `w` seconds).
//! - A timeout, a failed call, a non-OK gRPC status or an undecodable answer applies each
//!   rule's failure policy: `fail_open` lets the request through, `fail_closed` answers 503.

use crate::config::{FailurePolicy, RateLimitConfig};
use crate::gcra::Acquire;
use crate::limiter::{Check, CheckResult, Decision, Failure, GlobalDescriptor, Quota, Verdict};
use crate::rls::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use crate::rls::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use crate::rls::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use crate::rls::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use crate::rls::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use prost::Message;
use std::time::Duration;

/// The gRPC service and method the filter calls.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";
/// gRPC's DEADLINE_EXCEEDED.
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
/// Envoy's call timer runs on its event loop's cached time and can fire a little before the
/// filter's clock says the timeout has passed (by up to ~10 ms, measured under load).
const TIMER_EARLY_BY: Duration = Duration::from_millis(15);

/// The encoded `RateLimitRequest` for `descriptors`.
pub fn request_message(domain: &str, descriptors: &[GlobalDescriptor]) -> Vec<u8> {
    let request = RateLimitRequest {
        domain: domain.to_string(),
        descriptors: descriptors
            .iter()
            .map(|descriptor| RateLimitDescriptor {
                entries: descriptor
                    .entries
                    .iter()
                    .map(|(key, value)| Entry { key: key.clone(), value: value.clone() })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        hits_addend: 1,
    };
    request.encode_to_vec()
}

/// How the call ended, as the host reports it.
pub enum CallOutcome<'a> {
    /// gRPC status OK and the response message (absent when the host had no body).
    Answered(Option<&'a [u8]>),
    /// A non-OK gRPC status after `elapsed`. Envoy reports its own timeout as UNAVAILABLE
    /// (from the 504 of its HTTP/2 stream), so a failure at the timeout counts as a timeout.
    Status { status: u32, elapsed: Duration },
    /// The call could not be started (no such cluster, for example).
    NotSent,
}

/// Completes `decision` (whose local rules let the request through) with its global rules.
pub fn decide(config: &RateLimitConfig, mut decision: Decision, outcome: CallOutcome) -> Decision {
    let global = std::mem::take(&mut decision.global);
    let statuses = match outcome {
        CallOutcome::Answered(body) => match body.map(RateLimitResponse::decode) {
            Some(Ok(response)) if response.statuses.len() == global.len() => Ok(response.statuses),
            _ => Err(Failure::ServiceBadAnswer),
        },
        CallOutcome::Status { status, elapsed } => {
            let timeout = config.rate_limit_service.as_ref().map_or(Duration::ZERO, |service| service.timeout);
            if status == GRPC_DEADLINE_EXCEEDED || elapsed + TIMER_EARLY_BY >= timeout {
                Err(Failure::ServiceTimeout)
            } else {
                Err(Failure::ServiceError)
            }
        }
        CallOutcome::NotSent => Err(Failure::ServiceError),
    };
    let statuses = match statuses {
        Ok(statuses) => statuses,
        Err(failure) => {
            for descriptor in &global {
                let result = CheckResult::Failed(failure);
                decision.checks.push(Check { rule: descriptor.rule, result, overflowed: false, quota: None });
                let fails_closed = config
                    .rules
                    .get(descriptor.rule)
                    .is_some_and(|rule| rule.failure_policy == FailurePolicy::FailClosed);
                if fails_closed && decision.verdict == Verdict::Allow {
                    decision.verdict = Verdict::Unavailable { rule: descriptor.rule };
                }
            }
            return decision;
        }
    };
    for (descriptor, status) in global.iter().zip(&statuses) {
        let (acquire, quota) = standing(status);
        let over = status.code == Code::OverLimit as i32;
        let result = if over { CheckResult::Rejected(acquire) } else { CheckResult::Allowed(acquire) };
        decision.checks.push(Check { rule: descriptor.rule, result, overflowed: false, quota });
        if over && decision.verdict == Verdict::Allow {
            decision.verdict =
                Verdict::Reject { rule: descriptor.rule, retry_after_seconds: acquire.retry_after_seconds };
        }
    }
    decision
}

/// A descriptor status as the local rules' terms: what is left, when more comes, the limit.
fn standing(status: &DescriptorStatus) -> (Acquire, Option<Quota>) {
    let wait = status.duration_until_reset.as_ref().map_or(0, |duration| {
        let seconds = u64::try_from(duration.seconds).unwrap_or(0);
        seconds.saturating_add(u64::from(duration.nanos > 0))
    });
    // Like the local rules: at least one second, so a client that waits that long gets in.
    let wait = wait.max(1);
    let allowed = status.code != Code::OverLimit as i32;
    let acquire = Acquire {
        allowed,
        tat: 0,
        remaining: u64::from(status.limit_remaining),
        reset_seconds: wait,
        retry_after_seconds: if allowed { 0 } else { wait },
    };
    let quota = status.current_limit.as_ref().and_then(|limit| {
        let window_seconds = match Unit::try_from(limit.unit).ok()? {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 604_800,
            Unit::Month => 2_592_000,
            Unit::Year => 31_536_000,
            Unit::Unknown => return None,
        };
        Some(Quota { limit: u64::from(limit.requests_per_unit), window_seconds })
    });
    (acquire, quota)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rls::envoy::service::ratelimit::v3::rate_limit_response::RateLimit;
    use serde_json::json;

    fn config() -> RateLimitConfig {
        let config = json!({
            "rate_limit_service": {"cluster": "ratelimit", "domain": "gateway"},
            "rules": [
                {"name": "local", "key": ["client_ip"], "limit": {"requests": 10, "per": "second"}},
                {"name": "per-consumer", "global": true, "key": ["consumer"]},
                {"name": "strict", "global": true, "key": [{"fixed": "all"}], "failure_policy": "fail_closed"},
            ]
        });
        RateLimitConfig::parse(config.to_string().as_bytes()).unwrap()
    }

    fn pending() -> Decision {
        let entries = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Decision {
            verdict: Verdict::Allow,
            checks: vec![],
            global: vec![
                GlobalDescriptor { rule: 1, entries: entries(&[("rule", "per-consumer"), ("consumer", "ada")]) },
                GlobalDescriptor { rule: 2, entries: entries(&[("rule", "strict"), ("generic_key", "all")]) },
            ],
        }
    }

    fn status(code: Code, remaining: u32, seconds: i64, nanos: i32) -> DescriptorStatus {
        DescriptorStatus {
            code: code as i32,
            current_limit: Some(RateLimit { name: String::new(), requests_per_unit: 100, unit: Unit::Minute as i32 }),
            limit_remaining: remaining,
            duration_until_reset: Some(prost_types::Duration { seconds, nanos }),
            ..Default::default()
        }
    }

    fn answer(statuses: Vec<DescriptorStatus>) -> Vec<u8> {
        let over = statuses.iter().any(|status| status.code == Code::OverLimit as i32);
        let overall_code = if over { Code::OverLimit } else { Code::Ok } as i32;
        RateLimitResponse { overall_code, statuses, ..Default::default() }.encode_to_vec()
    }

    #[test]
    fn the_request_names_the_domain_and_one_descriptor_per_rule() {
        let bytes = request_message("gateway", &pending().global);
        let request = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(request.domain, "gateway");
        assert_eq!(request.hits_addend, 1);
        let entries: Vec<Vec<(String, String)>> = request
            .descriptors
            .iter()
            .map(|d| d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect())
            .collect();
        assert_eq!(entries, pending().global.into_iter().map(|d| d.entries).collect::<Vec<_>>());
    }

    #[test]
    fn ok_answers_let_the_request_through_with_the_services_counts() {
        let body = answer(vec![status(Code::Ok, 41, 0, 600_000_000), status(Code::Ok, 7, 2, 0)]);
        let decision = decide(&config(), pending(), CallOutcome::Answered(Some(&body)));
        assert_eq!(decision.verdict, Verdict::Allow);
        assert_eq!(decision.checks.len(), 2);
        let CheckResult::Allowed(acquire) = decision.checks[0].result else { panic!("{decision:?}") };
        assert_eq!((acquire.remaining, acquire.reset_seconds), (41, 1), "0.6 s rounds up to 1");
        assert_eq!(decision.checks[0].quota, Some(Quota { limit: 100, window_seconds: 60 }));
        let CheckResult::Allowed(acquire) = decision.checks[1].result else { panic!("{decision:?}") };
        assert_eq!((acquire.remaining, acquire.reset_seconds), (7, 2));
    }

    #[test]
    fn over_limit_rejects_on_behalf_of_the_first_rule_over() {
        let body = answer(vec![status(Code::Ok, 3, 1, 0), status(Code::OverLimit, 0, 12, 1)]);
        let decision = decide(&config(), pending(), CallOutcome::Answered(Some(&body)));
        assert_eq!(decision.verdict, Verdict::Reject { rule: 2, retry_after_seconds: 13 });
        let CheckResult::Rejected(acquire) = decision.checks[1].result else { panic!("{decision:?}") };
        assert_eq!((acquire.remaining, acquire.reset_seconds), (0, 13));
    }

    #[test]
    fn failures_apply_each_rules_policy() {
        let cases: [(CallOutcome, Failure); 6] = [
            (CallOutcome::Status { status: 4, elapsed: Duration::from_millis(3) }, Failure::ServiceTimeout),
            (CallOutcome::Status { status: 14, elapsed: Duration::from_millis(19) }, Failure::ServiceTimeout),
            (CallOutcome::Status { status: 14, elapsed: Duration::from_millis(2) }, Failure::ServiceError),
            (CallOutcome::NotSent, Failure::ServiceError),
            (CallOutcome::Answered(Some(b"\xff\xff garbage")), Failure::ServiceBadAnswer),
            (CallOutcome::Answered(None), Failure::ServiceBadAnswer),
        ];
        for (outcome, failure) in cases {
            let decision = decide(&config(), pending(), outcome);
            // `per-consumer` fails open; `strict` fails closed, so the request gets a 503.
            assert_eq!(decision.verdict, Verdict::Unavailable { rule: 2 }, "{failure:?}");
            assert!(decision.checks.iter().all(|check| check.result == CheckResult::Failed(failure)));
        }
        let wrong_count = answer(vec![status(Code::Ok, 3, 1, 0)]);
        let decision = decide(&config(), pending(), CallOutcome::Answered(Some(&wrong_count)));
        assert_eq!(decision.checks[0].result, CheckResult::Failed(Failure::ServiceBadAnswer));
    }

    #[test]
    fn a_fail_open_rule_lets_the_request_through_when_the_service_fails() {
        let mut only_open = pending();
        only_open.global.truncate(1);
        let decision = decide(&config(), only_open, CallOutcome::Status { status: 4, elapsed: Duration::ZERO });
        assert_eq!(decision.verdict, Verdict::Allow);
    }
}
