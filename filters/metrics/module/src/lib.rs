//! `metrics.wasm`: the metrics filter alone. All of it is in the `metrics-filter` crate; this only names
//! the module's entry point.

gateway_host::module!("metrics", |configuration, host| Ok(vec![metrics_filter::stage::build(configuration, host)?]));
