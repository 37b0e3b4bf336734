//! Auth filter: JWT providers (JWKS) and API keys, chosen per request by ordered rules; sets
//! the consumer identity header that the metrics and ratelimit filters read. This file is the
//! proxy-wasm adapter; the logic is in the modules.

pub mod authenticate;
pub mod config;
pub mod jwks;
pub mod jwt;

use authenticate::{Decision, RequestFacts};
use config::AuthConfig;
use gateway_common::host::plugin_configuration;
use gateway_common::response::error_body;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};
use std::rc::Rc;
use std::time::UNIX_EPOCH;

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs a panic at critical level.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AuthRoot { config: None }) });
}}

struct AuthRoot {
    config: Option<Rc<AuthConfig>>,
}

impl Context for AuthRoot {}

impl RootContext for AuthRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match plugin_configuration().and_then(|bytes| AuthConfig::parse(&bytes).map_err(|e| e.to_string())) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(reason) => {
                log::error!("auth: {reason}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuthHttp { config: self.config.clone() }))
    }
}

struct AuthHttp {
    config: Option<Rc<AuthConfig>>,
}

impl Context for AuthHttp {}

impl HttpContext for AuthHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else { return Action::Continue };
        // Whatever the rule, a client never supplies the headers this filter vouches for.
        for name in &config.owned_headers {
            set_header(name, None);
        }
        let now = hostcalls::get_current_time()
            .ok()
            .and_then(|now| now.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| since.as_secs());
        match authenticate::decide(&config, &HostRequest, now) {
            Decision::Allow(changes) => {
                for name in &changes.remove_headers {
                    set_header(name, None);
                }
                for (name, value) in &changes.set_headers {
                    set_header(name, Some(value));
                }
                if let Some(path) = &changes.new_path {
                    set_header(":path", Some(path));
                }
                Action::Continue
            }
            Decision::Deny(denial) => {
                // The reason, never the credential.
                log::debug!("auth: {} {}", denial.status, denial.message);
                let mut headers = vec![("content-type", "application/json")];
                if let Some(challenge) = &denial.www_authenticate {
                    headers.push(("www-authenticate", challenge));
                }
                let body = error_body(denial.error, &denial.message);
                if let Err(status) = hostcalls::send_http_response(denial.status, headers, Some(&body)) {
                    log::error!("auth: cannot send the {} answer: {status:?}", denial.status);
                }
                Action::Pause
            }
        }
    }
}

fn set_header(name: &str, value: Option<&str>) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value) {
        log::warn!("auth: cannot change request header {name}: {status:?}");
    }
}

struct HostRequest;

impl RequestFacts for HostRequest {
    fn header(&self, name: &str) -> Option<String> {
        let bytes = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()?;
        // Credentials and claims are ASCII; anything else cannot be a valid one.
        String::from_utf8(bytes).ok()
    }

    fn route_name(&self) -> Option<String> {
        let bytes = hostcalls::get_property(vec!["xds", "route_name"]).ok().flatten()?;
        String::from_utf8(bytes).ok()
    }
}
