//! Auth filter: JWT providers (JWKS) and API keys, chosen per request by ordered rules; sets
//! the consumer identity header that the metrics and ratelimit filters read. This file is the
//! proxy-wasm adapter; the logic is in the modules.

pub mod authenticate;
pub mod config;
pub mod jwks;
pub mod jwt;
pub mod keyring;
pub mod remote;

use authenticate::{Decision, RequestFacts};
use config::{AuthConfig, JwksSource, RemoteJwks};
use gateway_common::host::{
    now_millis, plugin_configuration, publish_log_field, BatchedCounter, HostSharedData, COUNTER_FLUSH_PERIOD,
};
use gateway_common::log_fields;
use gateway_common::response::error_body;
use gateway_common::shared::{ensure_exists, SharedStore};
use keyring::KeyRing;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which logs a panic at critical level.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AuthRoot { worker: None }) });
}}

/// The outcomes counted in `gateway_auth_requests_total{result}`.
const RESULTS: [&str; 6] = ["allowed", "unauthorized", "invalid", "forbidden", "no_rule", "unavailable"];

/// What one VM (one Envoy worker) keeps between requests.
struct Worker {
    config: Rc<AuthConfig>,
    ring: KeyRing,
    /// Per provider; `Some` for `remote_jwks` providers.
    remote: Vec<Option<RemoteState>>,
    /// One per [`RESULTS`].
    results: [BatchedCounter; 6],
    /// Requests paused until a key set fetch that may bring their key ends.
    held: Vec<Held>,
    /// The root context ticks every `HELD_TICK_MILLIS` (while requests are held).
    fast_tick: bool,
    logged_no_clock: Cell<bool>,
}

/// A paused request: its stream, the providers whose fetch it waits for, and until when.
struct Held {
    context_id: u32,
    providers: Vec<usize>,
    until_ms: u64,
}

struct RemoteState {
    /// `gateway_auth_jwks_fetches_total{provider, result}`: success, failure.
    fetches: [BatchedCounter; 2],
    /// CAS number of the stored set this worker last installed.
    installed_cas: u32,
    fetched_at_ms: Option<u64>,
    /// A token named a `kid` the set lacks since the last fetch.
    unknown_kid_seen: bool,
    /// The call this worker made for the set, if one is in flight.
    pending_call: Option<u32>,
    /// Logged once per state change, not on every tick.
    logged_stale: bool,
}

struct AuthRoot {
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Context for AuthRoot {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(worker) = &self.worker else { return };
        let Ok(mut worker) = worker.try_borrow_mut() else { return };
        let worker = &mut *worker;
        let Some(index) =
            worker.remote.iter().position(|state| state.as_ref().and_then(|s| s.pending_call) == Some(token_id))
        else {
            return;
        };
        let Some(JwksSource::Remote(remote)) = worker.config.providers.get(index).map(|provider| &provider.jwks) else {
            return;
        };
        let name = worker.config.providers.get(index).map_or("", |provider| provider.name.as_str());
        if let Some(Some(state)) = worker.remote.get_mut(index) {
            state.pending_call = None;
        }
        let status = (num_headers > 0)
            .then(|| hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status").ok().flatten())
            .flatten();
        let outcome = match status.as_deref() {
            Some(b"200") if body_size <= jwks::MAX_JWKS_BYTES => {
                let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                jwks::parse(&body).map(|(keys, skipped)| (body, keys.len(), skipped))
            }
            Some(b"200") => Err(format!("the key set has {body_size} bytes, more than {}", jwks::MAX_JWKS_BYTES)),
            Some(status) => Err(format!("the key set endpoint answered {}", String::from_utf8_lossy(status))),
            None => Err("the key set endpoint did not answer (reset or unreachable)".to_string()),
        };
        let succeeded = outcome.is_ok();
        if let Some(counter) =
            worker.remote.get(index).and_then(Option::as_ref).and_then(|s| s.fetches.get(usize::from(!succeeded)))
        {
            counter.add(1);
        }
        match outcome {
            Ok((body, count, skipped)) => {
                if let Err(error) = HostSharedData.set(
                    &remote::set_key(remote),
                    &remote::encode_set(now_millis().unwrap_or_default(), &body),
                    0,
                ) {
                    log::error!("auth: provider `{name}`: cannot store the fetched key set: {error}");
                } else {
                    log::info!(
                        "auth: provider `{name}`: fetched {count} keys from {}{}",
                        remote.authority,
                        remote.path
                    );
                }
                if !skipped.is_empty() {
                    log::warn!("auth: provider `{name}`: skipped keys: {}", skipped.join("; "));
                }
            }
            Err(reason) => {
                log::warn!(
                    "auth: provider `{name}`: key set fetch failed: {reason}; the last good set (if any) stays in use"
                );
            }
        }
        if let Err(error) = remote::release_lease(&HostSharedData, remote) {
            log::warn!("auth: provider `{name}`: cannot release the fetch lease: {error}");
        }
        if let Some(now) = now_millis() {
            let installed = worker.sync(now);
            worker.release_held(now, &installed);
        }
    }
}

impl RootContext for AuthRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = match plugin_configuration().and_then(|bytes| AuthConfig::parse(&bytes).map_err(|e| e.to_string()))
        {
            Ok(config) => Rc::new(config),
            Err(reason) => {
                log::error!("auth: {reason}");
                return false;
            }
        };
        let mut remote = Vec::new();
        for provider in &config.providers {
            match &provider.jwks {
                JwksSource::Remote(source) => {
                    // Created here, on Envoy's main thread before the workers start: the host
                    // ignores the CAS for keys that do not exist yet.
                    for key in [remote::set_key(source), remote::lease_key(source)] {
                        if let Err(error) = ensure_exists(&HostSharedData, &key, b"") {
                            log::error!("auth: provider `{}`: cannot create shared data: {error}", provider.name);
                            return false;
                        }
                    }
                    let fetches = ["success", "failure"].map(|result| {
                        BatchedCounter::define(&format!(
                            "gateway_auth_jwks_fetches_total.provider.{}.result.{result}",
                            provider.name
                        ))
                    });
                    remote.push(Some(RemoteState {
                        fetches,
                        installed_cas: 0,
                        fetched_at_ms: None,
                        unknown_kid_seen: false,
                        pending_call: None,
                        logged_stale: false,
                    }));
                }
                JwksSource::Local(_) => remote.push(None),
            }
        }
        // Remote key sets need the faster tick; counters are flushed on every tick either way.
        let period = if remote.iter().any(Option::is_some) {
            Duration::from_millis(remote::TICK_MILLIS)
        } else {
            COUNTER_FLUSH_PERIOD
        };
        if let Err(status) = hostcalls::set_tick_period(period) {
            log::error!("auth: no timer (for key set fetches and metrics): {status:?}");
            return false;
        }
        let ring = KeyRing::new(&config);
        let results =
            RESULTS.map(|result| BatchedCounter::define(&format!("gateway_auth_requests_total.result.{result}")));
        self.worker = Some(Rc::new(RefCell::new(Worker {
            config,
            ring,
            remote,
            results,
            held: Vec::new(),
            fast_tick: false,
            logged_no_clock: Cell::new(false),
        })));
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = &self.worker else { return };
        let Ok(mut worker) = worker.try_borrow_mut() else { return };
        worker.results.iter().for_each(BatchedCounter::flush);
        for state in worker.remote.iter().flatten() {
            state.fetches.iter().for_each(BatchedCounter::flush);
        }
        let Some(now) = now_millis() else { return };
        let installed = worker.sync(now);
        worker.start_due_fetches(now);
        worker.release_held(now, &installed);
        if worker.fast_tick && worker.held.is_empty() {
            worker.fast_tick = false;
            set_tick_period(remote::TICK_MILLIS);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuthHttp { worker: self.worker.clone(), context_id }))
    }
}

impl Worker {
    /// Installs stored key sets that changed since this worker last looked, and drops sets
    /// that are too stale. Returns the providers that got a new set.
    fn sync(&mut self, now: u64) -> Vec<usize> {
        let mut installed = Vec::new();
        for index in 0..self.remote.len() {
            let Some(provider) = self.config.providers.get(index) else { continue };
            let JwksSource::Remote(source) = &provider.jwks else { continue };
            let Some(Some(state)) = self.remote.get_mut(index) else { continue };
            let stored = match HostSharedData.get(&remote::set_key(source)) {
                Ok(Some(stored)) => stored,
                Ok(None) => continue,
                Err(error) => {
                    log::warn!("auth: provider `{}`: cannot read the shared key set: {error}", provider.name);
                    continue;
                }
            };
            if stored.cas != state.installed_cas {
                if let Some((fetched_at, body)) = remote::decode_set(&stored.value) {
                    // Only sets that parsed are ever stored, so this succeeds.
                    if let Ok((keys, _)) = jwks::parse(body) {
                        self.ring.replace(index, keys);
                        installed.push(index);
                        state.fetched_at_ms = Some(fetched_at);
                        state.unknown_kid_seen = false;
                        state.logged_stale = false;
                    }
                }
                state.installed_cas = stored.cas;
            }
            if let Some(fetched_at) = state.fetched_at_ms {
                if remote::too_stale(source, now, fetched_at) && self.ring.has_keys(index) {
                    self.ring.replace(index, Vec::new());
                    if !state.logged_stale {
                        log::error!(
                            "auth: provider `{}`: its key set is older than cache_duration + max_staleness and every refresh failed; its tokens are refused until a fetch succeeds",
                            provider.name
                        );
                        state.logged_stale = true;
                    }
                }
            }
        }
        installed
    }

    fn start_due_fetches(&mut self, now: u64) {
        for index in 0..self.remote.len() {
            if matches!(self.remote.get(index), Some(Some(state)) if state.pending_call.is_some()) {
                continue;
            }
            let lease = self.lease(index).unwrap_or_default();
            let Some(provider) = self.config.providers.get(index) else { continue };
            let JwksSource::Remote(source) = &provider.jwks else { continue };
            let Some(Some(state)) = self.remote.get_mut(index) else { continue };
            if !remote::fetch_due(source, now, state.fetched_at_ms, state.unknown_kid_seen, lease) {
                continue;
            }
            // Only a set that lacks a token's kid makes it a kid fetch: the first fetch (no set
            // yet) must not start the cooldown that a rotation right after it would then wait on.
            let for_unknown_kid = state.unknown_kid_seen && state.fetched_at_ms.is_some();
            match remote::take_lease(&HostSharedData, source, now, for_unknown_kid) {
                Ok(true) => {
                    state.unknown_kid_seen = false;
                    state.pending_call = dispatch(&provider.name, source);
                    if state.pending_call.is_none() {
                        let _ = remote::release_lease(&HostSharedData, source);
                    }
                }
                Ok(false) => {}
                Err(error) => log::warn!("auth: provider `{}`: cannot take the fetch lease: {error}", provider.name),
            }
        }
    }

    /// Decides the request of the current stream with the keys this worker holds now.
    fn decide(&mut self, now_ms: Option<u64>, refetch: &mut authenticate::Refetch) -> Decision {
        let config = Rc::clone(&self.config);
        authenticate::decide(&config, &mut self.ring, &HostRequest, now_ms.map(|ms| ms / 1000), refetch)
    }

    /// Marks `providers` as having met a token their set cannot verify: the next due check
    /// fetches their sets again (single flight, cooldown).
    fn note_unknown_keys(&mut self, providers: &[usize]) {
        for &index in providers {
            if let Some(Some(state)) = self.remote.get_mut(index) {
                state.unknown_kid_seen = true;
            }
        }
    }

    /// The provider's fetch lease as stored in shared data.
    fn lease(&self, index: usize) -> Option<remote::Lease> {
        let JwksSource::Remote(source) = &self.config.providers.get(index)?.jwks else { return None };
        let stored = HostSharedData.get(&remote::lease_key(source)).ok().flatten()?;
        Some(remote::Lease::decode(&stored.value))
    }

    /// Until when a request that needs new keys of `providers` may wait for a fetch, if any of
    /// them has one in flight or due now.
    fn hold_until(&self, providers: &[usize], now: u64) -> Option<u64> {
        providers
            .iter()
            .filter_map(|&index| {
                let JwksSource::Remote(source) = &self.config.providers.get(index)?.jwks else { return None };
                let fetched_at = self.remote.get(index)?.as_ref()?.fetched_at_ms;
                let lease = self.lease(index)?;
                remote::can_hold(source, now, fetched_at, lease).then(|| remote::hold_deadline(source, now))
            })
            .max()
    }

    /// Decides held requests again once their fetch ended (a new set, a failure, or their
    /// wait ran out), and lets them through or answers them. Runs only in the root context's
    /// own callbacks, where switching the effective stream cannot disturb another request.
    fn release_held(&mut self, now: u64, installed: &[usize]) {
        if self.held.is_empty() {
            return;
        }
        // Read each provider's lease once, however many requests wait on it.
        let fetching: Vec<bool> =
            (0..self.remote.len()).map(|index| self.lease(index).is_some_and(|lease| lease.is_held(now))).collect();
        for held in std::mem::take(&mut self.held) {
            let new_keys = held.providers.iter().any(|index| installed.contains(index));
            let fetch_ended = held.providers.iter().all(|&index| !fetching.get(index).copied().unwrap_or(false));
            if !(new_keys || fetch_ended || now >= held.until_ms) {
                self.held.push(held);
                continue;
            }
            // The client may have left meanwhile; its stream is gone and so is the request.
            if hostcalls::set_effective_context(held.context_id).is_err() {
                continue;
            }
            let decision = self.decide(Some(now), &mut Vec::new());
            if self.apply(decision) == Action::Continue {
                if let Err(status) = hostcalls::resume_http_request() {
                    log::warn!("auth: cannot resume a request held for its key set: {status:?}");
                }
            }
        }
    }

    /// Carries out a decision on the current stream: counts it, then sets the identity
    /// headers (the request goes on) or answers the client.
    fn apply(&self, decision: Decision) -> Action {
        let result = match &decision {
            Decision::Allow(_) => 0,
            Decision::Deny(denial) => match denial.error {
                "unauthorized" => 1,
                "invalid_token" => 2,
                "insufficient_scope" => 3,
                "auth_unavailable" => 5,
                _ => 4,
            },
        };
        if let Some(counter) = self.results.get(result) {
            counter.add(1);
        }
        if self.config.access_log_fields {
            publish_log_field(log_fields::AUTH, RESULTS.get(result).copied().unwrap_or_default());
        }
        match decision {
            Decision::Allow(changes) => {
                // Whatever the rule, a client never supplies the headers this filter vouches
                // for: each is replaced by the verified value or removed.
                for name in &self.config.owned_headers {
                    if !changes.set_headers.iter().any(|(set, _)| set == name) {
                        set_header(name, None);
                    }
                }
                for name in &changes.remove_headers {
                    set_header(name, None);
                }
                for (name, value) in &changes.set_headers {
                    set_header(name, Some(value));
                    if self.config.access_log_fields && *name == self.config.consumer_header {
                        publish_log_field(log_fields::CONSUMER, value);
                    }
                }
                if let Some(path) = &changes.new_path {
                    set_header(":path", Some(path));
                }
                Action::Continue
            }
            Decision::Deny(denial) => {
                // The request goes nowhere, but Envoy's trace and log still read its headers:
                // a client's claimed consumer must not appear there either.
                set_header(&self.config.consumer_header, None);
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

fn dispatch(name: &str, source: &RemoteJwks) -> Option<u32> {
    let headers = vec![
        (":method", "GET"),
        (":path", source.path.as_str()),
        (":authority", source.authority.as_str()),
        ("accept", "application/json"),
    ];
    match hostcalls::dispatch_http_call(&source.cluster, headers, None, vec![], source.timeout) {
        Ok(token) => Some(token),
        Err(status) => {
            log::warn!("auth: provider `{name}`: cannot call cluster `{}` for its key set: {status:?}", source.cluster);
            None
        }
    }
}

struct AuthHttp {
    worker: Option<Rc<RefCell<Worker>>>,
    context_id: u32,
}

impl Context for AuthHttp {}

impl HttpContext for AuthHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // An authentication filter that cannot look must not let the request through.
        let Some(mut worker) = self.worker.as_ref().and_then(|worker| worker.try_borrow_mut().ok()) else {
            log::error!("auth: no configuration or state for this request; refusing it");
            let body = error_body("auth_unavailable", "authentication is unavailable; retry shortly");
            let _ = hostcalls::send_http_response(503, vec![("content-type", "application/json")], Some(&body));
            return Action::Pause;
        };
        let worker = &mut *worker;
        let now = now_millis();
        if now.is_none() && !worker.logged_no_clock.replace(true) {
            log::error!("auth: the host clock cannot be read; tokens are refused with 503 (logged once per worker)");
        }
        let mut refetch = Vec::new();
        let mut decision = worker.decide(now, &mut refetch);
        if let (Some(now), false) = (now, refetch.is_empty()) {
            if !worker.sync(now).is_empty() {
                // Another worker stored a new set since this one last ticked: use it right away.
                refetch.clear();
                decision = worker.decide(Some(now), &mut refetch);
            }
            worker.note_unknown_keys(&refetch);
            // A key rotated in, or the set is not there yet: wait for the fetch (in flight, or
            // started by the root context's next tick) rather than refuse a token that may be
            // good. Fetches are the root context's own calls (the SDK delivers a call's answer
            // to the context that made it, and a stream may be gone by then).
            if matches!(decision, Decision::Deny(_)) && !refetch.is_empty() {
                if let Some(until_ms) = worker.hold_until(&refetch, now) {
                    worker.held.push(Held { context_id: self.context_id, providers: refetch, until_ms });
                    if !worker.fast_tick {
                        // From a stream, this sets its root context's tick.
                        worker.fast_tick = true;
                        set_tick_period(remote::HELD_TICK_MILLIS);
                    }
                    return Action::Pause;
                }
            }
        }
        worker.apply(decision)
    }
}

fn set_tick_period(millis: u64) {
    if let Err(status) = hostcalls::set_tick_period(Duration::from_millis(millis)) {
        log::warn!("auth: cannot set the tick period to {millis} ms: {status:?}");
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
