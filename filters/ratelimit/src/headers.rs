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
    // Walked again for each header rather than collected: this runs on every request.
    let reported = || {
        checks.iter().filter_map(|check| {
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
    };
    if reported().next().is_none() {
        return Vec::new();
    }
    let (Some(policy), Some(state)) = (
        structured_list(reported(), |rule| [("q", rule.quota), ("w", rule.window_seconds)]),
        structured_list(reported(), |rule| [("r", rule.acquire.remaining), ("t", rule.acquire.reset_seconds)]),
    ) else {
        return Vec::new();
    };
    let mut headers = vec![("ratelimit-policy", policy), ("ratelimit", state)];
    if config.legacy_headers {
        // The rule closest to its limit is the one a client must respect.
        if let Some(rule) = reported().min_by_key(|rule| rule.acquire.remaining) {
            let mut digits = itoa::Buffer::new();
            headers.push(("x-ratelimit-limit", digits.format(rule.quota).to_string()));
            headers.push(("x-ratelimit-remaining", digits.format(rule.acquire.remaining).to_string()));
            headers.push(("x-ratelimit-reset", digits.format(rule.acquire.reset_seconds).to_string()));
        }
    }
    headers
}

/// The largest RFC 8941 Integer (§3.3.1: at most 15 digits).
const MAX_STRUCTURED_INTEGER: u64 = 999_999_999_999_999;

/// An RFC 8941 List with one String item per rule (its name) and two Integer parameters,
/// written directly: this runs on every request, and rule names are `[A-Za-z0-9_-]`
/// (checked at configuration), which a String item carries without escapes. `None` if an
/// integer is over what a structured field can carry: the headers are left out rather than
/// wrong. The tests read every shape back with an independent RFC 8941 parser.
fn structured_list<'a>(
    reported: impl Iterator<Item = Reported<'a>>,
    parameters: impl Fn(&Reported) -> [(&'static str, u64); 2],
) -> Option<String> {
    let mut text = String::with_capacity(64);
    let mut digits = itoa::Buffer::new();
    for (index, rule) in reported.enumerate() {
        if index > 0 {
            text.push_str(", ");
        }
        text.push('"');
        text.push_str(rule.name);
        text.push('"');
        for (key, value) in parameters(&rule) {
            if value > MAX_STRUCTURED_INTEGER {
                return None;
            }
            text.push(';');
            text.push_str(key);
            text.push('=');
            text.push_str(digits.format(value));
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

    /// What an independent RFC 8941 parser reads in a header: (name, [(key, integer)]) per item.
    fn parsed(value: &str) -> Vec<(String, Vec<(String, i64)>)> {
        let list: sfv::List = sfv::Parser::parse_list(value.as_bytes()).unwrap();
        list.into_iter()
            .map(|member| match member {
                sfv::ListEntry::Item(item) => {
                    let name = item.bare_item.as_str().unwrap().to_string();
                    let parameters = item
                        .params
                        .into_iter()
                        .map(|(key, value)| (key.to_string(), value.as_int().unwrap()))
                        .collect();
                    (name, parameters)
                }
                sfv::ListEntry::InnerList(_) => panic!("an inner list in {value}"),
            })
            .collect()
    }

    #[test]
    fn headers_are_structured_field_lists_for_every_name_and_integer_shape() {
        let names = ["a", "per-ip", "Rule_9", &"x".repeat(64), "-_-"];
        for name in names {
            for (remaining, reset) in [(0, 0), (7, 1), (MAX_STRUCTURED_INTEGER, MAX_STRUCTURED_INTEGER)] {
                let acquire = acquired(remaining, reset);
                let reported = [
                    Reported { name, quota: remaining, window_seconds: reset, acquire: &acquire },
                    Reported { name: "second", quota: 1, window_seconds: 2, acquire: &acquire },
                ];
                let state = structured_list(reported.into_iter(), |rule| {
                    [("r", rule.acquire.remaining), ("t", rule.acquire.reset_seconds)]
                })
                .unwrap();
                let expected = |first: &str| {
                    vec![
                        (first.to_string(), vec![("r".to_string(), remaining as i64), ("t".to_string(), reset as i64)]),
                        (
                            "second".to_string(),
                            vec![("r".to_string(), remaining as i64), ("t".to_string(), reset as i64)],
                        ),
                    ]
                };
                assert_eq!(parsed(&state), expected(name), "{state}");
            }
        }
        let acquire = acquired(MAX_STRUCTURED_INTEGER + 1, 0);
        let too_big = [Reported { name: "a", quota: 1, window_seconds: 1, acquire: &acquire }];
        assert_eq!(structured_list(too_big.into_iter(), |rule| [("r", rule.acquire.remaining), ("t", 0)]), None);
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
