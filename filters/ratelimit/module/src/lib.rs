//! `ratelimit.wasm`: the ratelimit filter alone. All of it is in the `ratelimit-filter` crate; this only names
//! the module's entry point.

gateway_host::module!("ratelimit", |configuration, host| Ok(vec![ratelimit_filter::stage::build(
    configuration,
    host
)?]));
