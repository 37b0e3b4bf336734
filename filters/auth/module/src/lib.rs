//! `auth.wasm`: the auth filter alone. All of it is in the `auth-filter` crate; this only names
//! the module's entry point.

gateway_host::module!("auth", |configuration, host| Ok(vec![auth_filter::stage::build(configuration, host)?]));
