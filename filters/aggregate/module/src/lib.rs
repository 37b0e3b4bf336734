//! `aggregate.wasm`: the aggregate filter alone. All of it is in the `aggregate-filter` crate; this only names
//! the module's entry point.

gateway_host::module!("aggregate", |configuration, host| Ok(vec![aggregate_filter::stage::build(
    configuration,
    host
)?]));
