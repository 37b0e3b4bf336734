//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: the request is checked and
//! planned here ([`plan`], [`respond`], no I/O), and the plan's charges go to Redis in one
//! script call.

use crate::bucket::standing;
use crate::config::{Limit, Limits, Unit};
use crate::metrics::{Answer, DescriptorCode, Metrics};
use crate::store::{bucket_key, Charge, Outcome, RedisStore};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// At most this many descriptors in one request.
pub const MAX_DESCRIPTORS: usize = 64;
/// At most this many bytes of keys and values in one descriptor.
pub const MAX_DESCRIPTOR_BYTES: usize = 4_096;
/// At most this many hits charged at once.
pub const MAX_HITS: u64 = 1_000_000;

pub struct RateLimiter {
    pub limits: Arc<Limits>,
    pub store: RedisStore,
    pub metrics: Arc<Metrics>,
}

/// What one request asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub domain: String,
    /// Per descriptor: its limit and its index in `charges` (none when it has no limit).
    pub descriptors: Vec<Option<(Limit, usize)>>,
    pub charges: Vec<Charge>,
}

/// Checks `request` against the limits: which descriptors are limited and what to charge.
pub fn plan(limits: &Limits, request: &RateLimitRequest) -> Result<Plan, String> {
    if request.domain.is_empty() {
        return Err("the domain is empty".into());
    }
    if request.descriptors.is_empty() {
        return Err("no descriptors".into());
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return Err(format!("{} descriptors; at most {MAX_DESCRIPTORS}", request.descriptors.len()));
    }
    let request_hits = if request.hits_addend == 0 { 1 } else { u64::from(request.hits_addend) };
    let mut planned = Plan { domain: request.domain.clone(), descriptors: Vec::new(), charges: Vec::new() };
    for (index, descriptor) in request.descriptors.iter().enumerate() {
        if descriptor.entries.is_empty() {
            return Err(format!("descriptor {index} has no entries"));
        }
        if descriptor.is_negative_hits {
            return Err(format!("descriptor {index} asks for negative hits, which this service does not give back"));
        }
        let size: usize = descriptor.entries.iter().map(|entry| entry.key.len() + entry.value.len()).sum();
        if size > MAX_DESCRIPTOR_BYTES {
            return Err(format!("descriptor {index} has {size} bytes of entries; at most {MAX_DESCRIPTOR_BYTES}"));
        }
        let hits = descriptor.hits_addend.as_ref().map_or(request_hits, |hits| hits.value);
        if hits == 0 || hits > MAX_HITS {
            return Err(format!("descriptor {index} asks for {hits} hits; 1 to {MAX_HITS}"));
        }
        let entries: Vec<(String, String)> =
            descriptor.entries.iter().map(|entry| (entry.key.clone(), entry.value.clone())).collect();
        let limited = limits.find(&request.domain, &entries).map(|limit| {
            planned.charges.push(Charge { key: bucket_key(&request.domain, &entries, &limit), limit, hits });
            (limit, planned.charges.len() - 1)
        });
        planned.descriptors.push(limited);
    }
    Ok(planned)
}

/// The answer for `plan` given the script's `outcomes` (one per charge).
pub fn respond(plan: &Plan, outcomes: &[Outcome]) -> RateLimitResponse {
    let statuses: Vec<DescriptorStatus> = plan
        .descriptors
        .iter()
        .map(|limited| {
            let Some((limit, charge)) = limited else {
                return DescriptorStatus { code: Code::Ok as i32, ..Default::default() };
            };
            let (code, backlog) = match outcomes.get(*charge) {
                Some(Outcome::Admitted { backlog_micros } | Outcome::NotReached { backlog_micros }) => {
                    (Code::Ok, *backlog_micros)
                }
                Some(Outcome::OverLimit { backlog_micros }) => (Code::OverLimit, *backlog_micros),
                None => (Code::Unknown, 0),
            };
            let standing = standing(limit, backlog);
            DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: limit.requests_per_unit,
                    unit: proto_unit(limit.unit) as i32,
                }),
                limit_remaining: standing.remaining,
                duration_until_reset: Some(proto_duration(standing.until_more_micros)),
                ..Default::default()
            }
        })
        .collect();
    let over = statuses.iter().any(|status| status.code == Code::OverLimit as i32);
    RateLimitResponse {
        overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
        ..Default::default()
    }
}

fn proto_unit(unit: Unit) -> rate_limit::Unit {
    match unit {
        Unit::Second => rate_limit::Unit::Second,
        Unit::Minute => rate_limit::Unit::Minute,
        Unit::Hour => rate_limit::Unit::Hour,
        Unit::Day => rate_limit::Unit::Day,
    }
}

fn proto_duration(micros: u64) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(micros / 1_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(micros % 1_000_000 * 1_000).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        let plan = match plan(&self.limits, &request) {
            Ok(plan) => plan,
            Err(message) => {
                self.metrics.answer(Answer::Invalid);
                return Err(Status::invalid_argument(message));
            }
        };
        let outcomes = if plan.charges.is_empty() {
            Vec::new()
        } else {
            let started = Instant::now();
            match self.store.charge(&plan.charges).await {
                Ok(outcomes) => {
                    self.metrics.redis_call(started.elapsed());
                    if !self.metrics.set_redis_up(true) {
                        log::info!("Redis answers; limits are enforced");
                    }
                    outcomes
                }
                Err(error) => {
                    self.metrics.redis_error(error.reason());
                    if self.metrics.set_redis_up(false) {
                        log::warn!("{error}; answering UNAVAILABLE until Redis answers again");
                    }
                    self.metrics.answer(Answer::Unavailable);
                    return Err(Status::unavailable(error.to_string()));
                }
            }
        };
        let response = respond(&plan, &outcomes);
        for (status, limited) in response.statuses.iter().zip(&plan.descriptors) {
            let code = match (limited, status.code == Code::OverLimit as i32) {
                (None, _) => DescriptorCode::NoLimit,
                (Some(_), true) => DescriptorCode::OverLimit,
                (Some(_), false) => DescriptorCode::Ok,
            };
            self.metrics.descriptor(&plan.domain, code);
        }
        let over = response.overall_code == Code::OverLimit as i32;
        self.metrics.answer(if over { Answer::OverLimit } else { Answer::Ok });
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::google::protobuf::UInt64Value;

    const LIMITS: &str = "\
domain: gateway
descriptors:
  - key: rule
    value: per-consumer
    descriptors:
      - key: consumer
        rate_limit: {unit: minute, requests_per_unit: 60, burst: 3}
";

    fn descriptor(pairs: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: pairs
                .iter()
                .map(|(key, value)| Entry { key: key.to_string(), value: value.to_string() })
                .collect(),
            ..Default::default()
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest { domain: "gateway".into(), descriptors, hits_addend: 0 }
    }

    fn limits() -> Limits {
        Limits::parse(LIMITS, "limits.yaml").unwrap()
    }

    #[test]
    fn only_limited_descriptors_are_charged() {
        let plan = plan(
            &limits(),
            &request(vec![
                descriptor(&[("rule", "other")]),
                descriptor(&[("rule", "per-consumer"), ("consumer", "ada")]),
            ]),
        )
        .unwrap();
        assert_eq!(plan.descriptors[0], None);
        let limit = Limit { requests_per_unit: 60, unit: Unit::Minute, burst: 3 };
        assert_eq!(plan.descriptors[1], Some((limit, 0)));
        assert_eq!(plan.charges.len(), 1);
        assert_eq!(plan.charges[0].hits, 1);
        assert!(plan.charges[0].key.contains("\"ada\""));
    }

    #[test]
    fn hits_come_from_the_descriptor_then_the_request() {
        let mut with_own = descriptor(&[("rule", "per-consumer"), ("consumer", "ada")]);
        with_own.hits_addend = Some(UInt64Value { value: 5 });
        let mut asked = request(vec![with_own, descriptor(&[("rule", "per-consumer"), ("consumer", "bob")])]);
        asked.hits_addend = 2;
        let plan = plan(&limits(), &asked).unwrap();
        assert_eq!(plan.charges.iter().map(|charge| charge.hits).collect::<Vec<_>>(), [5, 2]);
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        let mut no_domain = request(vec![descriptor(&[("a", "b")])]);
        no_domain.domain.clear();
        let mut zero_hits = descriptor(&[("a", "b")]);
        zero_hits.hits_addend = Some(UInt64Value { value: 0 });
        let mut negative = descriptor(&[("a", "b")]);
        negative.is_negative_hits = true;
        let huge = "x".repeat(MAX_DESCRIPTOR_BYTES);
        let cases = [
            (no_domain, "domain"),
            (request(vec![]), "no descriptors"),
            (request(vec![descriptor(&[])]), "no entries"),
            (request(vec![descriptor(&[("a", "b")]); MAX_DESCRIPTORS + 1]), "at most 64"),
            (request(vec![descriptor(&[("a", &huge)])]), "bytes"),
            (request(vec![zero_hits]), "0 hits"),
            (request(vec![negative]), "negative"),
        ];
        for (asked, message) in cases {
            let error = plan(&limits(), &asked).unwrap_err();
            assert!(error.contains(message), "{error}");
        }
    }

    #[test]
    fn answers_carry_the_limit_the_remaining_and_the_wait() {
        let limits = limits();
        let asked = request(vec![
            descriptor(&[("rule", "per-consumer"), ("consumer", "ada")]),
            descriptor(&[("rule", "none")]),
        ]);
        let plan = plan(&limits, &asked).unwrap();
        let admitted = respond(&plan, &[Outcome::Admitted { backlog_micros: 1_000_000 }]);
        assert_eq!(admitted.overall_code, Code::Ok as i32);
        let status = &admitted.statuses[0];
        assert_eq!(status.limit_remaining, 2);
        assert_eq!(status.duration_until_reset, Some(ProtoDuration { seconds: 1, nanos: 0 }));
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!((limit.requests_per_unit, limit.unit), (60, rate_limit::Unit::Minute as i32));
        assert_eq!(admitted.statuses[1], DescriptorStatus { code: Code::Ok as i32, ..Default::default() });

        let over = respond(&plan, &[Outcome::OverLimit { backlog_micros: 3_000_000 - 250_000 }]);
        assert_eq!(over.overall_code, Code::OverLimit as i32);
        assert_eq!(over.statuses[0].code, Code::OverLimit as i32);
        assert_eq!(over.statuses[0].limit_remaining, 0);
        assert_eq!(over.statuses[0].duration_until_reset, Some(ProtoDuration { seconds: 0, nanos: 750_000_000 }));
    }
}
