//! From the facts of one finished request to the metric updates it causes.

use crate::cardinality::{Admission, LabelValues};
use crate::config::{LabelSpec, MetricsConfig};
use crate::labels::{sanitize, stat_name, OVERFLOW_VALUE};
use gateway_common::shared::{SharedStore, StoreError};
use std::borrow::Cow;

pub const REQUESTS_TOTAL: &str = "gateway_requests_total";
pub const REQUEST_DURATION: &str = "gateway_request_duration_milliseconds";
pub const REQUEST_BYTES: &str = "gateway_request_bytes_total";
pub const RESPONSE_BYTES: &str = "gateway_response_bytes_total";
pub const LABEL_OVERFLOW: &str = "gateway_metrics_label_overflow_total";

/// The labels of the duration histogram and byte counters: bounded by Envoy's own config.
const TRAFFIC_LABELS: [&str; 2] = ["route", "upstream"];

/// What the adapter read from Envoy about one finished request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    /// Raw value of each configured label, in `MetricsConfig::labels` order; `None` when the
    /// request has none.
    pub label_values: Vec<Option<Vec<u8>>>,
    pub duration_ms: Option<u64>,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Histogram,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricUpdate {
    pub kind: MetricKind,
    /// The dotted stat name, without Envoy's `wasmcustom.` prefix.
    pub name: String,
    /// Counter increment or histogram sample.
    pub value: u64,
}

/// One worker's recorder: the compiled config plus that worker's view of admitted values.
pub struct Recorder {
    labels: Vec<LabelSpec>,
    admitted: Vec<LabelValues>,
}

impl Recorder {
    pub fn new(config: MetricsConfig) -> Self {
        let admitted = config.labels.iter().map(|label| LabelValues::new(&label.name, label.max_values)).collect();
        Recorder { labels: config.labels, admitted }
    }

    /// Creates the shared keys behind the cardinality caps; call while configuring.
    pub fn create_shared_keys(&self, store: &dyn SharedStore) -> Result<(), StoreError> {
        self.admitted.iter().try_for_each(|values| values.create_shared_key(store))
    }

    /// The updates for one request, appended to `updates`.
    pub fn record(&mut self, facts: &RequestFacts, store: &dyn SharedStore, updates: &mut Vec<MetricUpdate>) {
        let mut values: Vec<Cow<'_, str>> = Vec::with_capacity(self.labels.len());
        for (index, (label, admitted)) in self.labels.iter().zip(self.admitted.iter_mut()).enumerate() {
            let raw = facts.label_values.get(index).and_then(Option::as_deref);
            let value = match raw.and_then(sanitize) {
                None => Cow::Borrowed(label.missing_value.as_str()),
                Some(value) if admit(label, admitted, &value, store) => value,
                Some(_) => {
                    updates.push(counter(stat_name(LABEL_OVERFLOW, [("label", label.name.as_str())]), 1));
                    Cow::Borrowed(OVERFLOW_VALUE)
                }
            };
            values.push(value);
        }

        let all_labels = self.labels.iter().map(|label| label.name.as_str()).zip(values.iter().map(|v| v.as_ref()));
        updates.push(counter(stat_name(REQUESTS_TOTAL, all_labels), 1));

        let traffic_labels = TRAFFIC_LABELS.map(|name| {
            let value = self.labels.iter().position(|label| label.name == name).and_then(|i| values.get(i));
            (name, value.map_or("none", |v| v.as_ref()))
        });
        if let Some(duration_ms) = facts.duration_ms {
            updates.push(MetricUpdate {
                kind: MetricKind::Histogram,
                name: stat_name(REQUEST_DURATION, traffic_labels),
                value: duration_ms,
            });
        }
        if let Some(bytes) = facts.request_bytes {
            updates.push(counter(stat_name(REQUEST_BYTES, traffic_labels), bytes));
        }
        if let Some(bytes) = facts.response_bytes {
            updates.push(counter(stat_name(RESPONSE_BYTES, traffic_labels), bytes));
        }
    }
}

/// Whether a present value keeps its own name. The missing value and `other` are outside the
/// cap; an allowed list replaces it; a store failure counts as overflow so the cap holds.
fn admit(label: &LabelSpec, admitted: &mut LabelValues, value: &str, store: &dyn SharedStore) -> bool {
    if let Some(allowed) = &label.allowed_values {
        return allowed.contains(value);
    }
    match admitted.admit(value, store) {
        Ok(admission) => admission == Admission::Admitted,
        Err(error) => {
            if admitted.first_failure() {
                log::warn!(
                    "metrics: label `{}` values are recorded as `{OVERFLOW_VALUE}` while shared data fails \
                     (logged once): {error}",
                    label.name
                );
            }
            false
        }
    }
}

fn counter(name: String, value: u64) -> MetricUpdate {
    MetricUpdate { kind: MetricKind::Counter, name, value }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::testing::MemoryStore;

    fn recorder(json: &str, store: &MemoryStore) -> Recorder {
        let recorder = Recorder::new(MetricsConfig::parse(json.as_bytes()).unwrap());
        recorder.create_shared_keys(store).unwrap();
        recorder
    }

    fn facts(values: &[Option<&str>]) -> RequestFacts {
        RequestFacts {
            label_values: values.iter().map(|v| v.map(|s| s.as_bytes().to_vec())).collect(),
            duration_ms: Some(12),
            request_bytes: Some(100),
            response_bytes: Some(250),
        }
    }

    fn names(updates: &[MetricUpdate]) -> Vec<&str> {
        updates.iter().map(|u| u.name.as_str()).collect()
    }

    #[test]
    fn one_request_gives_count_duration_and_bytes() {
        let store = MemoryStore::default();
        let mut recorder = recorder("{}", &store);
        let mut updates = vec![];
        recorder.record(
            &facts(&[Some("orders"), Some("orders_svc"), Some("GET"), Some("200"), Some("alice")]),
            &store,
            &mut updates,
        );
        assert_eq!(
            updates,
            vec![
                counter(
                    "gateway_requests_total.route.orders.upstream.orders_svc.method.GET.code.200.consumer.alice".into(),
                    1
                ),
                MetricUpdate {
                    kind: MetricKind::Histogram,
                    name: "gateway_request_duration_milliseconds.route.orders.upstream.orders_svc".into(),
                    value: 12
                },
                counter("gateway_request_bytes_total.route.orders.upstream.orders_svc".into(), 100),
                counter("gateway_response_bytes_total.route.orders.upstream.orders_svc".into(), 250),
            ]
        );
    }

    #[test]
    fn missing_values_use_each_label_default() {
        let store = MemoryStore::default();
        let mut recorder = recorder("{}", &store);
        let mut updates = vec![];
        let no_values = RequestFacts {
            label_values: vec![None, None, Some(b"GET".to_vec()), Some(b"404".to_vec()), None],
            ..Default::default()
        };
        recorder.record(&no_values, &store, &mut updates);
        assert_eq!(
            names(&updates),
            ["gateway_requests_total.route.none.upstream.none.method.GET.code.404.consumer.anonymous"]
        );
    }

    #[test]
    fn hostile_values_cannot_forge_labels() {
        let store = MemoryStore::default();
        let mut recorder = recorder("{}", &store);
        let mut updates = vec![];
        recorder.record(
            &facts(&[Some("r"), Some("u"), Some("GET"), Some("200"), Some("x.code.500")]),
            &store,
            &mut updates,
        );
        assert_eq!(
            names(&updates)[0],
            "gateway_requests_total.route.r.upstream.u.method.GET.code.200.consumer.x_code_500"
        );
    }

    #[test]
    fn values_over_the_cap_become_other_and_are_counted() {
        let store = MemoryStore::default();
        let mut recorder = recorder(r#"{"max_values": {"consumer": 2}}"#, &store);
        let mut updates = vec![];
        for consumer in ["a", "b", "c", "d", "a"] {
            recorder.record(
                &facts(&[Some("r"), Some("u"), Some("GET"), Some("200"), Some(consumer)]),
                &store,
                &mut updates,
            );
        }
        let requests: Vec<_> = names(&updates)
            .into_iter()
            .filter(|n| n.starts_with(REQUESTS_TOTAL))
            .map(|n| n.rsplit('.').next().unwrap())
            .collect();
        assert_eq!(requests, ["a", "b", "other", "other", "a"]);
        let overflows =
            names(&updates).into_iter().filter(|n| *n == "gateway_metrics_label_overflow_total.label.consumer").count();
        assert_eq!(overflows, 2);
    }

    #[test]
    fn missing_value_is_outside_the_cap() {
        let store = MemoryStore::default();
        let mut recorder = recorder(r#"{"max_values": {"consumer": 1}}"#, &store);
        let mut updates = vec![];
        recorder.record(&facts(&[Some("r"), Some("u"), Some("GET"), Some("200"), Some("alice")]), &store, &mut updates);
        recorder.record(&facts(&[Some("r"), Some("u"), Some("GET"), Some("200"), None]), &store, &mut updates);
        assert!(names(&updates).iter().any(|n| n.ends_with(".consumer.anonymous")));
        assert!(!names(&updates).iter().any(|n| n.starts_with(LABEL_OVERFLOW)));
    }

    #[test]
    fn extra_labels_follow_the_built_ins_and_respect_allowed_values() {
        let store = MemoryStore::default();
        let mut recorder = recorder(
            r#"{"extra_labels": [{"name": "plan", "header": "x-plan", "allowed_values": ["free", "pro"]}, {"name": "tenant", "header": "x-tenant"}]}"#,
            &store,
        );
        let mut updates = vec![];
        let base = [Some("r"), Some("u"), Some("GET"), Some("200"), None];
        let with = |plan: Option<&str>, tenant: Option<&str>| {
            let mut values = base.to_vec();
            values.extend([plan, tenant]);
            facts(&values)
        };
        recorder.record(&with(Some("pro"), Some("acme")), &store, &mut updates);
        recorder.record(&with(Some("gold"), None), &store, &mut updates);
        let requests: Vec<_> = names(&updates).into_iter().filter(|n| n.starts_with(REQUESTS_TOTAL)).collect();
        assert_eq!(
            requests,
            [
                "gateway_requests_total.route.r.upstream.u.method.GET.code.200.consumer.anonymous.plan.pro.tenant.acme",
                "gateway_requests_total.route.r.upstream.u.method.GET.code.200.consumer.anonymous.plan.other.tenant.none",
            ]
        );
        assert!(names(&updates).contains(&"gateway_metrics_label_overflow_total.label.plan"));
    }

    #[test]
    fn capped_route_values_apply_to_the_traffic_metrics_too() {
        let store = MemoryStore::default();
        let mut recorder = recorder(r#"{"max_values": {"route": 1}}"#, &store);
        let mut updates = vec![];
        recorder.record(&facts(&[Some("one"), Some("u"), Some("GET"), Some("200"), None]), &store, &mut updates);
        updates.clear();
        recorder.record(&facts(&[Some("two"), Some("u"), Some("GET"), Some("200"), None]), &store, &mut updates);
        assert!(names(&updates).contains(&"gateway_request_duration_milliseconds.route.other.upstream.u"));
    }

    #[test]
    fn a_store_failure_records_other_instead_of_exceeding_the_cap() {
        let store = MemoryStore::default();
        // Keys never created: every admission attempt fails.
        let mut recorder = Recorder::new(MetricsConfig::parse(b"{}").unwrap());
        let mut updates = vec![];
        recorder.record(&facts(&[Some("r"), Some("u"), Some("GET"), Some("200"), Some("alice")]), &store, &mut updates);
        assert_eq!(names(&updates)[0], "gateway_metrics_label_overflow_total.label.route");
        assert!(names(&updates)
            .contains(&"gateway_requests_total.route.other.upstream.other.method.other.code.other.consumer.other"));
    }
}
