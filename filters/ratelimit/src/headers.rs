//! The response headers and reply bodies the filter produces.
//!
//! - `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10, structured
//!   field Lists): one item per applied rule, named by the rule:
//!   `RateLimit-Policy: "per-ip";q=20;w=60` and `RateLimit: "per-ip";r=19;t=3`.
//!   `q` is the burst (what `r` counts down from) and `w` the seconds it takes to refill the
//!   whole burst at the sustained rate (rounded up), so with the default burst it is exactly
//!   `requests` per `per`. `r` is what can be sent now and `t` the seconds until more quota
//!   is available (the draft's §4.1.2: one more request fits after `t` seconds, rounded up);
//!   on a 429, `t` and `Retry-After` are the same number.
//! - Optionally the legacy `X-RateLimit-Limit/Remaining/Reset` (as Envoy's local_ratelimit
//!   writes them), for the rule closest to its limit.
//! - On 429: `Retry-After` in whole seconds, rounded up so a client that waits that long is
//!   admitted.

use crate::config::{RateLimitConfig, Scope};
use crate::gcra::Acquire;
use crate::limiter::{Check, CheckResult};
use sfv::{RefBareItem, RefListSerializer};

/// One rule in the headers.
struct Reported<'a> {
    name: &'a str,
    /// The policy's quota (`q`, what `remaining` counts down from: the legacy
    /// `X-RateLimit-Limit`) and window (`w`, seconds).
    quota: u64,
    window_seconds: u64,
    acquire: &'a Acquire,
}

/// The headers describing every applied rule that has `headers` on. A global rule is
/// described by the limit the rate limit service reported (`q` = its requests per unit,
/// `w` = the unit in seconds); the service may also report no limit, and then nothing is said.
pub fn rate_limit_headers(config: &RateLimitConfig, checks: &[Check]) -> Vec<(&'static str, String)> {
    let reported: Vec<Reported> = checks
        .iter()
        .filter_map(|check| {
            let rule = config.rules.get(check.rule).filter(|rule| rule.headers)?;
            let acquire = match &check.result {
                CheckResult::Allowed(acquire)
                | CheckResult::Rejected(acquire)
                | CheckResult::ShadowRejected(acquire) => acquire,
                CheckResult::Failed(_) => return None,
            };
            let (quota, window_seconds) = match (&rule.scope, check.quota) {
                (Scope::Local { limit }, _) => (limit.burst, limit.refill_window_seconds()),
                (Scope::Global, Some(quota)) => (quota.limit, quota.window_seconds),
                (Scope::Global, None) => return None,
            };
            Some(Reported { name: &rule.name, quota, window_seconds, acquire })
        })
        .collect();
    if reported.is_empty() {
        return Vec::new();
    }
    let (Some(policy), Some(state)) = (
        structured_list(&reported, |rule| [("q", rule.quota), ("w", rule.window_seconds)]),
        structured_list(&reported, |rule| [("r", rule.acquire.remaining), ("t", rule.acquire.reset_seconds)]),
    ) else {
        return Vec::new();
    };
    let mut headers = vec![("ratelimit-policy", policy), ("ratelimit", state)];
    if config.legacy_headers {
        // The rule closest to its limit is the one a client must respect.
        if let Some(rule) = reported.iter().min_by_key(|rule| rule.acquire.remaining) {
            headers.push(("x-ratelimit-limit", rule.quota.to_string()));
            headers.push(("x-ratelimit-remaining", rule.acquire.remaining.to_string()));
            headers.push(("x-ratelimit-reset", rule.acquire.reset_seconds.to_string()));
        }
    }
    headers
}

/// An RFC 8941 List with one String item per rule (its name) and two Integer parameters.
/// `None` if a value is outside what a structured field can carry (names are checked at
/// configuration, integers are at most 10^15 - 1): the headers are left out rather than wrong.
fn structured_list(
    reported: &[Reported],
    parameters: impl Fn(&Reported) -> [(&'static str, u64); 2],
) -> Option<String> {
    let mut text = String::new();
    let mut list = RefListSerializer::new(&mut text);
    for rule in reported {
        list = list.bare_item(&RefBareItem::String(rule.name)).ok()?;
        for (key, value) in parameters(rule) {
            list = list.parameter(key, &RefBareItem::Integer(i64::try_from(value).ok()?)).ok()?;
        }
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Failure;
    use serde_json::json;

    fn config(legacy: bool) -> RateLimitConfig {
        let config = json!({"legacy_headers": legacy, "rules": [
            {"name": "per-ip", "key": ["client_ip"], "limit": {"requests": 100, "per": "minute"}},
            {"name": "burst", "key": ["client_ip"], "limit": {"requests": 10, "per": "second", "burst": 25}},
            {"name": "quiet", "key": ["client_ip"], "limit": {"requests": 1, "per": "second"}, "headers": false},
        ]});
        RateLimitConfig::parse(config.to_string().as_bytes()).unwrap()
    }

    fn acquired(remaining: u64, reset_seconds: u64) -> Acquire {
        Acquire { allowed: true, tat: 0, remaining, reset_seconds, retry_after_seconds: 0 }
    }

    #[test]
    fn one_item_per_applied_rule_with_headers() {
        let checks = [
            Check { rule: 0, result: CheckResult::Allowed(acquired(99, 1)), overflowed: false, quota: None },
            Check { rule: 1, result: CheckResult::ShadowRejected(acquired(0, 3)), overflowed: false, quota: None },
            Check { rule: 2, result: CheckResult::Allowed(acquired(0, 1)), overflowed: false, quota: None },
        ];
        assert_eq!(
            rate_limit_headers(&config(false), &checks),
            [
                ("ratelimit-policy", "\"per-ip\";q=100;w=60, \"burst\";q=25;w=3".to_string()),
                ("ratelimit", "\"per-ip\";r=99;t=1, \"burst\";r=0;t=3".to_string()),
            ]
        );
    }

    #[test]
    fn legacy_headers_describe_the_tightest_rule() {
        let checks = [
            Check { rule: 0, result: CheckResult::Allowed(acquired(99, 1)), overflowed: false, quota: None },
            Check { rule: 1, result: CheckResult::Allowed(acquired(7, 2)), overflowed: false, quota: None },
        ];
        let headers = rate_limit_headers(&config(true), &checks);
        assert_eq!(
            headers[2..],
            [
                ("x-ratelimit-limit", "25".to_string()),
                ("x-ratelimit-remaining", "7".to_string()),
                ("x-ratelimit-reset", "2".to_string()),
            ]
        );
    }

    #[test]
    fn failed_or_silent_rules_add_nothing() {
        let checks = [
            Check { rule: 0, result: CheckResult::Failed(Failure::TableFull), overflowed: false, quota: None },
            Check { rule: 2, result: CheckResult::Allowed(acquired(0, 1)), overflowed: false, quota: None },
        ];
        assert!(rate_limit_headers(&config(true), &checks).is_empty());
    }
}
