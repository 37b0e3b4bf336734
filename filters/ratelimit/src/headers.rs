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

use crate::config::{RateLimitConfig, Rule, Scope};
use crate::gcra::Acquire;
use crate::limiter::{Check, CheckResult};

/// The parts of each rule's items that are the same on every response, written once per
/// configuration: the headers go on every response, and writing a local rule's whole policy
/// item (its window needs a 128-bit division) each time cost more code than copying it.
pub struct HeaderTexts {
    /// By rule index.
    rules: Vec<RuleTexts>,
}

struct RuleTexts {
    policy: Policy,
    /// `"name";r=`: the start of the rule's `RateLimit` item.
    state_prefix: String,
}

enum Policy {
    /// A local rule's whole `RateLimit-Policy` item: `"name";q=20;w=60`.
    Local(String),
    /// A local rule whose numbers are over what a structured field can carry: the headers are
    /// left out rather than wrong.
    TooLarge,
    /// A global rule: the rate limit service reports its limit with each answer.
    Global,
}

impl HeaderTexts {
    pub fn new(config: &RateLimitConfig) -> HeaderTexts {
        let rules = config
            .rules
            .iter()
            .map(|rule| {
                let policy = match &rule.scope {
                    Scope::Local { limit } => {
                        let mut item = String::new();
                        let parameters = [("q", limit.burst), ("w", limit.refill_window_seconds())];
                        if push_item(&mut item, &rule.name, parameters) {
                            Policy::Local(item)
                        } else {
                            Policy::TooLarge
                        }
                    }
                    Scope::Global => Policy::Global,
                };
                RuleTexts { policy, state_prefix: state_prefix(&rule.name) }
            })
            .collect();
        HeaderTexts { rules }
    }
}

/// The headers describing every applied rule that has `headers` on. A global rule is
/// described by the limit the rate limit service reported (`q` = its requests per unit,
/// `w` = the unit in seconds); the service may also report no limit, and then nothing is said.
pub fn rate_limit_headers(
    config: &RateLimitConfig,
    texts: &HeaderTexts,
    checks: &[Check],
) -> Vec<(&'static str, String)> {
    let mut policy = String::new();
    let mut state = String::new();
    for check in checks {
        let (Some((rule, acquire)), Some(rule_texts)) = (applied(config, check), texts.rules.get(check.rule)) else {
            continue;
        };
        let separator = if policy.is_empty() { "" } else { ", " };
        match (&rule_texts.policy, check.quota) {
            (Policy::Local(item), _) => {
                policy.push_str(separator);
                policy.push_str(item);
            }
            (Policy::Global, Some(quota)) => {
                policy.push_str(separator);
                if !push_item(&mut policy, &rule.name, [("q", quota.limit), ("w", quota.window_seconds)]) {
                    return Vec::new();
                }
            }
            (Policy::Global, None) => continue,
            (Policy::TooLarge, _) => return Vec::new(),
        }
        state.push_str(separator);
        if !push_state(&mut state, &rule_texts.state_prefix, acquire) {
            return Vec::new();
        }
    }
    if policy.is_empty() {
        return Vec::new();
    }
    let mut headers = vec![("ratelimit-policy", policy), ("ratelimit", state)];
    if config.legacy_headers {
        push_legacy_headers(config, checks, &mut headers);
    }
    headers
}

/// The rule of a check and what it acquired, when the rule's headers are on and the check
/// did not fail.
fn applied<'a>(config: &'a RateLimitConfig, check: &'a Check) -> Option<(&'a Rule, &'a Acquire)> {
    let rule = config.rules.get(check.rule).filter(|rule| rule.headers)?;
    match &check.result {
        CheckResult::Allowed(acquire) | CheckResult::Rejected(acquire) | CheckResult::ShadowRejected(acquire) => {
            Some((rule, acquire))
        }
        CheckResult::Failed(_) => None,
    }
}

/// The legacy single-valued headers, for the rule closest to its limit (the one a client
/// must respect). Kept out of line: few configurations turn them on.
#[inline(never)]
fn push_legacy_headers(config: &RateLimitConfig, checks: &[Check], headers: &mut Vec<(&'static str, String)>) {
    let tightest = checks
        .iter()
        .filter_map(|check| {
            let (rule, acquire) = applied(config, check)?;
            let quota = match (&rule.scope, check.quota) {
                (Scope::Local { limit }, _) => limit.burst,
                (Scope::Global, Some(quota)) => quota.limit,
                (Scope::Global, None) => return None,
            };
            Some((quota, acquire))
        })
        .min_by_key(|(_, acquire)| acquire.remaining);
    if let Some((quota, acquire)) = tightest {
        let mut digits = itoa::Buffer::new();
        headers.push(("x-ratelimit-limit", digits.format(quota).to_string()));
        headers.push(("x-ratelimit-remaining", digits.format(acquire.remaining).to_string()));
        headers.push(("x-ratelimit-reset", digits.format(acquire.reset_seconds).to_string()));
    }
}

/// The largest RFC 8941 Integer (§3.3.1: at most 15 digits).
const MAX_STRUCTURED_INTEGER: u64 = 999_999_999_999_999;
const MAX_INTEGER_DIGITS: usize = 15;

/// Appends an RFC 8941 String item (the rule's name) with two Integer parameters, written
/// directly: rule names are `[A-Za-z0-9_-]` (checked at configuration), which a String item
/// carries without escapes. False if an integer is over what a structured field can carry.
/// The tests read every shape back with an independent RFC 8941 parser.
fn push_item(text: &mut String, name: &str, parameters: [(&str, u64); 2]) -> bool {
    text.push('"');
    text.push_str(name);
    text.push('"');
    parameters.into_iter().all(|(key, value)| {
        text.push(';');
        text.push_str(key);
        text.push('=');
        push_integer(text, value)
    })
}

fn state_prefix(name: &str) -> String {
    format!("\"{name}\";r=")
}

/// A rule's `RateLimit` item: `"name";r=19;t=3`.
fn push_state(text: &mut String, prefix: &str, acquire: &Acquire) -> bool {
    // Room for the largest item at once: growing the string as it is written reallocates it.
    text.reserve(prefix.len() + 2 * MAX_INTEGER_DIGITS + ";t=".len());
    text.push_str(prefix);
    if !push_integer(text, acquire.remaining) {
        return false;
    }
    text.push_str(";t=");
    push_integer(text, acquire.reset_seconds)
}

fn push_integer(text: &mut String, value: u64) -> bool {
    if value > MAX_STRUCTURED_INTEGER {
        return false;
    }
    text.push_str(itoa::Buffer::new().format(value));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Failure, Quota};
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
            rate_limit_headers(&config(false), &HeaderTexts::new(&config(false)), &checks),
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
            for (first, second) in [(0, 0), (7, 1), (MAX_STRUCTURED_INTEGER, MAX_STRUCTURED_INTEGER)] {
                let (mut policy, mut state) = (String::new(), String::new());
                assert!(push_item(&mut policy, name, [("q", first), ("w", second)]));
                policy.push_str(", ");
                assert!(push_item(&mut policy, "second", [("q", 1), ("w", 2)]));
                assert!(push_state(&mut state, &state_prefix(name), &acquired(first, second)));
                state.push_str(", ");
                assert!(push_state(&mut state, &state_prefix("second"), &acquired(1, 2)));
                let expected = |keys: [&str; 2]| {
                    let item = |name: &str, values: [u64; 2]| {
                        let parameters = keys.iter().zip(values).map(|(key, value)| (key.to_string(), value as i64));
                        (name.to_string(), parameters.collect::<Vec<_>>())
                    };
                    vec![item(name, [first, second]), item("second", [1, 2])]
                };
                assert_eq!(parsed(&policy), expected(["q", "w"]), "{policy}");
                assert_eq!(parsed(&state), expected(["r", "t"]), "{state}");
            }
        }
        assert!(!push_item(&mut String::new(), "a", [("q", MAX_STRUCTURED_INTEGER + 1), ("w", 0)]));
        assert!(!push_state(&mut String::new(), &state_prefix("a"), &acquired(0, MAX_STRUCTURED_INTEGER + 1)));
    }

    #[test]
    fn a_global_rule_is_described_by_the_limit_the_service_reported() {
        let config = json!({
            "rate_limit_service": {"cluster": "ratelimit", "domain": "gateway"},
            "rules": [
                {"name": "per-ip", "key": ["client_ip"], "limit": {"requests": 100, "per": "minute"}},
                {"name": "shared", "key": ["client_ip"], "global": true},
            ]
        });
        let config = RateLimitConfig::parse(config.to_string().as_bytes()).unwrap();
        let texts = HeaderTexts::new(&config);
        let global = |quota| Check { rule: 1, result: CheckResult::Allowed(acquired(4, 2)), overflowed: false, quota };
        let local = Check { rule: 0, result: CheckResult::Allowed(acquired(99, 1)), overflowed: false, quota: None };
        let reported = Some(Quota { limit: 5, window_seconds: 1 });
        assert_eq!(
            rate_limit_headers(&config, &texts, &[global(reported), local]),
            [
                ("ratelimit-policy", "\"shared\";q=5;w=1, \"per-ip\";q=100;w=60".to_string()),
                ("ratelimit", "\"shared\";r=4;t=2, \"per-ip\";r=99;t=1".to_string()),
            ]
        );
        assert_eq!(
            rate_limit_headers(&config, &texts, &[global(None), local]),
            [
                ("ratelimit-policy", "\"per-ip\";q=100;w=60".to_string()),
                ("ratelimit", "\"per-ip\";r=99;t=1".to_string()),
            ],
            "a service that reports no limit leaves its rule out"
        );
    }

    #[test]
    fn numbers_a_structured_field_cannot_carry_leave_the_headers_out() {
        let config = json!({"rules": [
            // The window, 1e9 requests at one per 30 days, is over 15 digits.
            {"name": "huge", "key": ["client_ip"], "limit": {"requests": 1, "per": "30d", "burst": 1_000_000_000}},
        ]});
        let config = RateLimitConfig::parse(config.to_string().as_bytes()).unwrap();
        let check = Check { rule: 0, result: CheckResult::Allowed(acquired(1, 1)), overflowed: false, quota: None };
        assert!(rate_limit_headers(&config, &HeaderTexts::new(&config), &[check]).is_empty());
    }

    #[test]
    fn legacy_headers_describe_the_tightest_rule() {
        let checks = [
            Check { rule: 0, result: CheckResult::Allowed(acquired(99, 1)), overflowed: false, quota: None },
            Check { rule: 1, result: CheckResult::Allowed(acquired(7, 2)), overflowed: false, quota: None },
        ];
        let headers = rate_limit_headers(&config(true), &HeaderTexts::new(&config(true)), &checks);
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
        assert!(rate_limit_headers(&config(true), &HeaderTexts::new(&config(true)), &checks).is_empty());
    }
}
