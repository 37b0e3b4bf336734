//! The service's own Prometheus metrics, rendered in the text exposition format. Every label
//! value comes from the limits file or a fixed list, so the series are bounded.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Answers to `ShouldRateLimit`, by overall code.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Ok,
    OverLimit,
    /// Redis failed or did not answer in time: UNAVAILABLE.
    Unavailable,
    /// The request was malformed: INVALID_ARGUMENT.
    Invalid,
}

const ANSWERS: [&str; 4] = ["ok", "over_limit", "unavailable", "invalid_argument"];

/// Descriptors, by what they got.
#[derive(Debug, Clone, Copy)]
pub enum DescriptorCode {
    Ok,
    OverLimit,
    /// No limit is configured for it.
    NoLimit,
}

const DESCRIPTOR_CODES: [&str; 3] = ["ok", "over_limit", "no_limit"];
const REDIS_ERRORS: [&str; 3] = ["timeout", "redis_error", "malformed_reply"];
/// The domain label of requests for a domain the limits file does not name.
pub const UNKNOWN_DOMAIN: &str = "unknown";

pub struct Metrics {
    answers: [AtomicU64; 4],
    descriptors: BTreeMap<String, [AtomicU64; 3]>,
    redis_errors: [AtomicU64; 3],
    redis_calls: AtomicU64,
    redis_micros: AtomicU64,
    redis_up: AtomicBool,
}

impl Metrics {
    pub fn new(domains: &[&str]) -> Metrics {
        let mut descriptors: BTreeMap<String, [AtomicU64; 3]> =
            domains.iter().map(|domain| (domain.to_string(), Default::default())).collect();
        descriptors.insert(UNKNOWN_DOMAIN.to_string(), Default::default());
        Metrics {
            answers: Default::default(),
            descriptors,
            redis_errors: Default::default(),
            redis_calls: AtomicU64::new(0),
            redis_micros: AtomicU64::new(0),
            redis_up: AtomicBool::new(false),
        }
    }

    pub fn answer(&self, answer: Answer) {
        if let Some(counter) = self.answers.get(answer as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn descriptor(&self, domain: &str, code: DescriptorCode) {
        let counters = self.descriptors.get(domain).or_else(|| self.descriptors.get(UNKNOWN_DOMAIN));
        if let Some(counter) = counters.and_then(|counters| counters.get(code as usize)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One script call that got an answer, and how long it took.
    pub fn redis_call(&self, took: Duration) {
        self.redis_calls.fetch_add(1, Ordering::Relaxed);
        self.redis_micros.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Records whether Redis answered; returns the previous state (to log changes only).
    pub fn set_redis_up(&self, up: bool) -> bool {
        self.redis_up.swap(up, Ordering::Relaxed)
    }

    pub fn redis_error(&self, reason: &str) {
        if let Some(index) = REDIS_ERRORS.iter().position(|known| *known == reason) {
            if let Some(counter) = self.redis_errors.get(index) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        out.push_str("# HELP ratelimit_service_requests_total ShouldRateLimit calls by answer.\n");
        out.push_str("# TYPE ratelimit_service_requests_total counter\n");
        for (code, counter) in ANSWERS.iter().zip(&self.answers) {
            let _ = writeln!(out, "ratelimit_service_requests_total{{code=\"{code}\"}} {}", load(counter));
        }
        out.push_str("# HELP ratelimit_service_descriptors_total Descriptors checked, by domain and result.\n");
        out.push_str("# TYPE ratelimit_service_descriptors_total counter\n");
        for (domain, counters) in &self.descriptors {
            for (code, counter) in DESCRIPTOR_CODES.iter().zip(counters) {
                let _ = writeln!(
                    out,
                    "ratelimit_service_descriptors_total{{domain=\"{}\",code=\"{code}\"}} {}",
                    escape(domain),
                    load(counter)
                );
            }
        }
        out.push_str("# HELP ratelimit_service_redis_errors_total Redis calls that failed, by reason.\n");
        out.push_str("# TYPE ratelimit_service_redis_errors_total counter\n");
        for (reason, counter) in REDIS_ERRORS.iter().zip(&self.redis_errors) {
            let _ = writeln!(out, "ratelimit_service_redis_errors_total{{reason=\"{reason}\"}} {}", load(counter));
        }
        out.push_str(
            "# HELP ratelimit_service_redis_duration_seconds Time of Redis script calls that got an answer.\n",
        );
        out.push_str("# TYPE ratelimit_service_redis_duration_seconds summary\n");
        let seconds = load(&self.redis_micros) as f64 / 1e6;
        let _ = writeln!(out, "ratelimit_service_redis_duration_seconds_sum {seconds}");
        let _ = writeln!(out, "ratelimit_service_redis_duration_seconds_count {}", load(&self.redis_calls));
        out.push_str("# HELP ratelimit_service_redis_up 1 when the last Redis call got an answer.\n");
        out.push_str("# TYPE ratelimit_service_redis_up gauge\n");
        let _ = writeln!(out, "ratelimit_service_redis_up {}", u8::from(self.redis_up.load(Ordering::Relaxed)));
        out
    }
}

/// A label value in the exposition format.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_with_bounded_labels() {
        let metrics = Metrics::new(&["gateway"]);
        metrics.answer(Answer::OverLimit);
        metrics.descriptor("gateway", DescriptorCode::OverLimit);
        metrics.descriptor("made-up-by-a-client", DescriptorCode::NoLimit);
        metrics.redis_error("timeout");
        metrics.redis_call(Duration::from_micros(1500));
        metrics.set_redis_up(true);
        let text = metrics.render();
        for line in [
            "ratelimit_service_requests_total{code=\"over_limit\"} 1",
            "ratelimit_service_requests_total{code=\"ok\"} 0",
            "ratelimit_service_descriptors_total{domain=\"gateway\",code=\"over_limit\"} 1",
            "ratelimit_service_descriptors_total{domain=\"unknown\",code=\"no_limit\"} 1",
            "ratelimit_service_redis_errors_total{reason=\"timeout\"} 1",
            "ratelimit_service_redis_duration_seconds_sum 0.0015",
            "ratelimit_service_redis_duration_seconds_count 1",
            "ratelimit_service_redis_up 1",
        ] {
            assert!(text.lines().any(|candidate| candidate == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("made-up"));
    }
}
