//! From the label values of one finished request to the series it counts in.
//!
//! Each label value is resolved to a small per-worker id (see [`crate::cardinality`]), and
//! the ids of all labels form the request's [`SeriesKey`]. The adapter keeps Envoy's metric ids
//! per key, so the stat names are built once per distinct combination, not per request.

use crate::cardinality::{Admission, LabelValues};
use crate::config::{LabelSpec, MetricsConfig};
use crate::labels::{escape_reserved, stat_name, OVERFLOW_VALUE};
use gateway_common::bytes;
use gateway_common::label_value::sanitize;
use gateway_common::shared::{SharedStore, StoreError};

pub const REQUESTS_TOTAL: &str = "gateway_requests_total";
pub const REQUEST_DURATION: &str = "gateway_request_duration_milliseconds";
pub const REQUEST_BYTES: &str = "gateway_request_bytes_total";
pub const RESPONSE_BYTES: &str = "gateway_response_bytes_total";
pub const LABEL_OVERFLOW: &str = "gateway_metrics_label_overflow_total";

/// The labels of the duration histogram and byte counters: bounded by Envoy's own config.
const TRAFFIC_LABELS: [&str; 2] = ["route", "upstream"];

/// Per label, in `MetricsConfig::labels` order: [`MISSING`], [`OTHER`], or `FIRST_VALUE + id`
/// of an admitted value.
pub type SeriesKey = Vec<u32>;
pub const MISSING: u32 = 0;
pub const OTHER: u32 = 1;
const FIRST_VALUE: u32 = 2;

/// The stat names of one series key (without Envoy's `wasmcustom.` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesNames {
    pub requests: String,
    pub duration: String,
    pub request_bytes: String,
    pub response_bytes: String,
}

/// One worker's recorder: the compiled config plus that worker's view of admitted values.
pub struct Recorder {
    config: MetricsConfig,
    /// One per label, in `config.labels` order.
    admitted: Vec<LabelValues>,
    /// Per label, the raw value last resolved to an admitted id, and that id. Most requests
    /// repeat the previous request's route, method or consumer; for them this skips the
    /// sanitizing, the escaping and the hash lookup. Admitted ids never change for a worker.
    last_admitted: Vec<Option<(Vec<u8>, u32)>>,
}

impl Recorder {
    pub fn new(config: MetricsConfig) -> Self {
        let admitted = config.labels.iter().map(|label| LabelValues::new(&label.name, label.max_values)).collect();
        let last_admitted = vec![None; config.labels.len()];
        Recorder { config, admitted, last_admitted }
    }

    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    /// Creates the shared keys behind the cardinality caps; call while configuring.
    pub fn create_shared_keys(&self, store: &dyn SharedStore) -> Result<(), StoreError> {
        self.admitted.iter().try_for_each(|values| values.create_shared_key(store))
    }

    /// Resolves the raw value of the label at `index` (`None` when absent) into its part of
    /// a [`SeriesKey`]: [`MISSING`], [`OTHER`] (over the cap or not allowed: the caller counts
    /// an overflow), or the admitted value's id.
    pub fn resolve_label(&mut self, index: usize, raw: Option<&[u8]>, store: &dyn SharedStore) -> u32 {
        let (Some(label), Some(admitted), Some(last)) =
            (self.config.labels.get(index), self.admitted.get_mut(index), self.last_admitted.get_mut(index))
        else {
            return MISSING;
        };
        let Some(raw) = raw else { return MISSING };
        if let Some((last_raw, id)) = last {
            if bytes::equal(last_raw, raw) {
                return *id;
            }
        }
        let Some(value) = sanitize(raw).map(|value| escape_reserved(value, &label.missing_value)) else {
            return MISSING;
        };
        match admit(label, admitted, &value, store) {
            Some(id) => {
                let id = FIRST_VALUE + id;
                match last {
                    Some((last_raw, last_id)) => {
                        last_raw.clear();
                        last_raw.extend_from_slice(raw);
                        *last_id = id;
                    }
                    None => *last = Some((raw.to_vec(), id)),
                }
                id
            }
            None => OTHER,
        }
    }

    /// The stat names for a key made by [`Recorder::resolve_label`] on this recorder.
    pub fn series_names(&self, key: &[u32]) -> SeriesNames {
        let value = |index: usize| -> &str {
            let (Some(label), Some(admitted)) = (self.config.labels.get(index), self.admitted.get(index)) else {
                return "none";
            };
            match key.get(index).copied().unwrap_or(MISSING) {
                MISSING => &label.missing_value,
                OTHER => OVERFLOW_VALUE,
                id => admitted.value(id - FIRST_VALUE).unwrap_or(OVERFLOW_VALUE),
            }
        };
        let all = self.config.labels.iter().enumerate().map(|(index, label)| (label.name.as_str(), value(index)));
        let traffic = TRAFFIC_LABELS.map(|name| {
            let index = self.config.labels.iter().position(|label| label.name == name);
            (name, index.map_or("none", value))
        });
        SeriesNames {
            requests: stat_name(REQUESTS_TOTAL, all),
            duration: stat_name(REQUEST_DURATION, traffic),
            request_bytes: stat_name(REQUEST_BYTES, traffic),
            response_bytes: stat_name(RESPONSE_BYTES, traffic),
        }
    }

    /// The overflow counter of the label at `index`.
    pub fn overflow_name(&self, index: usize) -> String {
        let label = self.config.labels.get(index).map_or("unknown", |label| label.name.as_str());
        stat_name(LABEL_OVERFLOW, [("label", label)])
    }
}

/// The id of a present value that keeps its own name, or `None` for `other`. The missing
/// value and `other` are outside the cap; an allowed list replaces it; a store failure counts
/// as overflow so the cap holds.
fn admit(label: &LabelSpec, admitted: &mut LabelValues, value: &str, store: &dyn SharedStore) -> Option<u32> {
    if let Some(allowed) = &label.allowed_values {
        if !allowed.contains(value) {
            return None;
        }
    }
    match admitted.admit(value, store) {
        Ok(Admission::Admitted(id)) => Some(id),
        Ok(Admission::Overflow) => None,
        Err(error) => {
            if admitted.first_failure() {
                log::warn!(
                    "metrics: label `{}` values are recorded as `{OVERFLOW_VALUE}` while shared data fails \
                     (logged once): {error}",
                    label.name
                );
            }
            None
        }
    }
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

    /// Resolves one request's label values (in label order) into `key`, listing in
    /// `overflowed` the labels that became `other`, as the stage does.
    fn resolve(
        recorder: &mut Recorder,
        values: &[Option<&str>],
        store: &MemoryStore,
        key: &mut SeriesKey,
        overflowed: &mut Vec<usize>,
    ) {
        key.clear();
        overflowed.clear();
        for (index, value) in values.iter().enumerate() {
            let id = recorder.resolve_label(index, value.map(str::as_bytes), store);
            if id == OTHER {
                overflowed.push(index);
            }
            key.push(id);
        }
    }

    /// Resolves and names one request: (requests_total name, overflowed label names).
    fn record(recorder: &mut Recorder, store: &MemoryStore, values: &[Option<&str>]) -> (SeriesNames, Vec<String>) {
        let (mut key, mut overflowed) = (vec![], vec![]);
        resolve(recorder, values, store, &mut key, &mut overflowed);
        let overflow_names = overflowed.iter().map(|&i| recorder.overflow_name(i)).collect();
        (recorder.series_names(&key), overflow_names)
    }

    fn requests(recorder: &mut Recorder, store: &MemoryStore, values: &[Option<&str>]) -> String {
        record(recorder, store, values).0.requests
    }

    #[test]
    fn a_repeated_value_resolves_as_the_first_time_and_others_are_not_mistaken_for_it() {
        let store = MemoryStore::default();
        let mut recorder = recorder(r#"{"max_values": {"consumer": 2}}"#, &store);
        let consumer = |recorder: &mut Recorder, value: Option<&str>| {
            requests(recorder, &store, &[Some("r"), Some("u"), Some("GET"), Some("200"), value])
        };
        let ada = consumer(&mut recorder, Some("ada"));
        assert!(ada.ends_with(".consumer.ada"));
        assert_eq!(consumer(&mut recorder, Some("ada")), ada, "the remembered value");
        assert!(consumer(&mut recorder, Some("anonymous")).ends_with(".consumer.anonymous_"), "escaped, not cached");
        assert!(consumer(&mut recorder, Some("a\nb")).ends_with(".consumer.other"), "over the cap of 2");
        assert!(consumer(&mut recorder, Some("ada")).ends_with(".consumer.ada"));
        assert!(consumer(&mut recorder, None).ends_with(".consumer.anonymous"), "missing after a remembered value");
        assert!(consumer(&mut recorder, Some("")).ends_with(".consumer.anonymous"));
        assert!(consumer(&mut recorder, Some("a\nb")).ends_with(".consumer.other"), "an overflow is never remembered");
    }

    #[test]
    fn one_request_names_its_count_duration_and_bytes_series() {
        let store = MemoryStore::default();
        let mut recorder = recorder("{}", &store);
        let (names, overflowed) = record(
            &mut recorder,
            &store,
            &[Some("orders"), Some("orders_svc"), Some("GET"), Some("200"), Some("alice")],
        );
        assert_eq!(
            names,
            SeriesNames {
                requests: "gateway_requests_total.route.orders.upstream.orders_svc.method.GET.code.200.consumer.alice"
                    .into(),
                duration: "gateway_request_duration_milliseconds.route.orders.upstream.orders_svc".into(),
                request_bytes: "gateway_request_bytes_total.route.orders.upstream.orders_svc".into(),
                response_bytes: "gateway_response_bytes_total.route.orders.upstream.orders_svc".into(),
            }
        );
        assert!(overflowed.is_empty());
    }

    #[test]
    fn equal_values_give_equal_keys_and_different_values_different_keys() {
        let store = MemoryStore::default();
        let mut recorder = recorder("{}", &store);
        let (mut a, mut b, mut c, mut overflowed) = (vec![], vec![], vec![], vec![]);
        let alice = [Some("r"), Some("u"), Some("GET"), Some("200"), Some("alice")];
        resolve(&mut recorder, &alice, &store, &mut a, &mut overflowed);
        resolve(&mut recorder, &alice, &store, &mut b, &mut overflowed);
        let bob = [Some("r"), Some("u"), Some("GET"), Some("200"), Some("bob")];
        resolve(&mut recorder, &bob, &store, &mut c, &mut overflowed);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn missing_values_use_each_label_default() {
        let store = MemoryStore::default();
        let mut recorder = recorder("{}", &store);
        assert_eq!(
            requests(&mut recorder, &store, &[None, None, Some("GET"), Some("404"), None]),
            "gateway_requests_total.route.none.upstream.none.method.GET.code.404.consumer.anonymous"
        );
    }

    #[test]
    fn hostile_values_cannot_forge_labels() {
        let store = MemoryStore::default();
        let mut recorder = recorder("{}", &store);
        assert_eq!(
            requests(&mut recorder, &store, &[Some("r"), Some("u"), Some("GET"), Some("200"), Some("x.code.500")]),
            "gateway_requests_total.route.r.upstream.u.method.GET.code.200.consumer.x_code_500"
        );
    }

    #[test]
    fn values_over_the_cap_become_other_and_are_counted() {
        let store = MemoryStore::default();
        let mut recorder = recorder(r#"{"max_values": {"consumer": 2}}"#, &store);
        let mut consumers = vec![];
        let mut overflows = vec![];
        for consumer in ["a", "b", "c", "d", "a"] {
            let (names, overflowed) =
                record(&mut recorder, &store, &[Some("r"), Some("u"), Some("GET"), Some("200"), Some(consumer)]);
            consumers.push(names.requests.rsplit('.').next().unwrap().to_string());
            overflows.extend(overflowed);
        }
        assert_eq!(consumers, ["a", "b", "other", "other", "a"]);
        assert_eq!(overflows, ["gateway_metrics_label_overflow_total.label.consumer"; 2]);
    }

    /// A token can name any subject: one called `anonymous` or `other` is still a consumer,
    /// never counted as unauthenticated traffic or as the cap's overflow.
    #[test]
    fn consumers_named_like_the_markers_keep_their_own_series() {
        let store = MemoryStore::default();
        let mut recorder = recorder(r#"{"max_values": {"consumer": 10}}"#, &store);
        let consumer = |recorder: &mut Recorder, value: Option<&str>| {
            let (names, _) = record(recorder, &store, &[Some("r"), Some("u"), Some("GET"), Some("200"), value]);
            names.requests.rsplit('.').next().unwrap().to_string()
        };
        assert_eq!(consumer(&mut recorder, None), "anonymous");
        assert_eq!(consumer(&mut recorder, Some("anonymous")), "anonymous_");
        assert_eq!(consumer(&mut recorder, Some("other")), "other_");
        assert_eq!(consumer(&mut recorder, Some("__overflow__")), "__overflow__");
        assert_eq!(consumer(&mut recorder, Some("ada")), "ada");
    }

    #[test]
    fn missing_value_is_outside_the_cap() {
        let store = MemoryStore::default();
        let mut recorder = recorder(r#"{"max_values": {"consumer": 1}}"#, &store);
        record(&mut recorder, &store, &[Some("r"), Some("u"), Some("GET"), Some("200"), Some("alice")]);
        let (names, overflowed) =
            record(&mut recorder, &store, &[Some("r"), Some("u"), Some("GET"), Some("200"), None]);
        assert!(names.requests.ends_with(".consumer.anonymous"));
        assert!(overflowed.is_empty());
    }

    #[test]
    fn extra_labels_follow_the_built_ins_and_respect_allowed_values() {
        let store = MemoryStore::default();
        let mut recorder = recorder(
            r#"{"extra_labels": [{"name": "plan", "header": "x-plan", "allowed_values": ["free", "pro"]}, {"name": "tenant", "header": "x-tenant"}]}"#,
            &store,
        );
        let base = [Some("r"), Some("u"), Some("GET"), Some("200"), None];
        let with = |plan: Option<&'static str>, tenant: Option<&'static str>| {
            let mut values = base.to_vec();
            values.extend([plan, tenant]);
            values
        };
        let (pro, _) = record(&mut recorder, &store, &with(Some("pro"), Some("acme")));
        let (gold, overflowed) = record(&mut recorder, &store, &with(Some("gold"), None));
        assert_eq!(
            pro.requests,
            "gateway_requests_total.route.r.upstream.u.method.GET.code.200.consumer.anonymous.plan.pro.tenant.acme"
        );
        assert_eq!(
            gold.requests,
            "gateway_requests_total.route.r.upstream.u.method.GET.code.200.consumer.anonymous.plan.other.tenant.none"
        );
        assert_eq!(overflowed, ["gateway_metrics_label_overflow_total.label.plan"]);
    }

    #[test]
    fn capped_route_values_apply_to_the_traffic_metrics_too() {
        let store = MemoryStore::default();
        let mut recorder = recorder(r#"{"max_values": {"route": 1}}"#, &store);
        record(&mut recorder, &store, &[Some("one"), Some("u"), Some("GET"), Some("200"), None]);
        let (names, _) = record(&mut recorder, &store, &[Some("two"), Some("u"), Some("GET"), Some("200"), None]);
        assert_eq!(names.duration, "gateway_request_duration_milliseconds.route.other.upstream.u");
    }

    #[test]
    fn a_store_failure_records_other_instead_of_exceeding_the_cap() {
        let store = MemoryStore::default();
        // Keys never created: every admission attempt fails.
        let mut recorder = Recorder::new(MetricsConfig::parse(b"{}").unwrap());
        let (names, overflowed) =
            record(&mut recorder, &store, &[Some("r"), Some("u"), Some("GET"), Some("200"), Some("alice")]);
        assert_eq!(
            names.requests,
            "gateway_requests_total.route.other.upstream.other.method.other.code.other.consumer.other"
        );
        assert_eq!(overflowed.len(), 5);
    }
}
