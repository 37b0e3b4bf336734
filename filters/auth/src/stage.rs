//! The auth filter as a stage: each request decided against the rules at its headers; remote
//! key sets fetched by the worker (one fetch per set across workers, under a lease in shared
//! data), with requests that need a key set not yet fetched held until it arrives.

use crate::authenticate::{self, Decision};
use crate::config::{AuthConfig, JwksSource, RemoteJwks};
use crate::guard::FailureGuard;
use crate::jwks;
use crate::keyring::KeyRing;
use crate::remote;
use gateway_common::client_ip::from_source_address;
use gateway_common::counter::BatchedCounter;
use gateway_common::host::{now_millis, publish_log_field, HeaderMap, Host};
use gateway_common::log_fields;
use gateway_common::request::{Request, RequestFacts, SOURCE_ADDRESS};
use gateway_common::response::error_body;
use gateway_common::shared::ensure_exists;
use gateway_common::stage::{Flow, Stage, StageStream};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// The outcomes counted in `gateway_auth_requests_total{result}`.
const RESULTS: [&str; 7] = ["allowed", "unauthorized", "invalid", "forbidden", "no_rule", "unavailable", "throttled"];

/// Builds the stage from the filter's JSON configuration.
pub fn build(configuration: &[u8], host: &dyn Host) -> Result<Box<dyn Stage>, String> {
    let config = Rc::new(AuthConfig::parse(configuration).map_err(|error| error.to_string())?);
    let mut remote = Vec::new();
    for provider in &config.providers {
        match &provider.jwks {
            JwksSource::Remote(source) => {
                // Created here, on Envoy's main thread before the workers start: the host
                // ignores the CAS for keys that do not exist yet.
                for key in [remote::set_key(source), remote::lease_key(source)] {
                    ensure_exists(host.shared_data(), &key, b"")
                        .map_err(|error| format!("provider `{}`: cannot create shared data: {error}", provider.name))?;
                }
                let fetches = ["success", "failure"].map(|result| {
                    BatchedCounter::define(
                        host,
                        &format!("gateway_auth_jwks_fetches_total.provider.{}.result.{result}", provider.name),
                    )
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
    let ring = KeyRing::new(&config);
    let results =
        RESULTS.map(|result| BatchedCounter::define(host, &format!("gateway_auth_requests_total.result.{result}")));
    let guard = config.brute_force_guard.map(FailureGuard::new);
    let worker = Worker { config, ring, remote, results, guard, held: Vec::new(), logged_no_clock: Cell::new(false) };
    Ok(Box::new(AuthStage { worker: Rc::new(RefCell::new(worker)) }))
}

/// What one VM (one Envoy worker) keeps between requests.
struct Worker {
    config: Rc<AuthConfig>,
    ring: KeyRing,
    /// Per provider; `Some` for `remote_jwks` providers.
    remote: Vec<Option<RemoteState>>,
    /// One per [`RESULTS`].
    results: [BatchedCounter; 7],
    guard: Option<FailureGuard>,
    /// Requests paused until a key set fetch that may bring their key ends.
    held: Vec<Held>,
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

struct AuthStage {
    worker: Rc<RefCell<Worker>>,
}

impl Stage for AuthStage {
    fn new_stream(&self) -> Box<dyn StageStream> {
        Box::new(AuthStream { worker: Rc::clone(&self.worker) })
    }

    /// Remote key sets need the faster tick, and held requests a faster one still.
    fn tick_period(&self) -> Option<Duration> {
        let worker = self.worker.try_borrow().ok()?;
        if !worker.held.is_empty() {
            Some(Duration::from_millis(remote::HELD_TICK_MILLIS))
        } else if worker.remote.iter().any(Option::is_some) {
            Some(Duration::from_millis(remote::TICK_MILLIS))
        } else {
            None
        }
    }

    fn on_tick(&self, host: &dyn Host) -> Vec<u32> {
        let Ok(mut worker) = self.worker.try_borrow_mut() else { return Vec::new() };
        worker.results.iter().for_each(|counter| counter.flush(host));
        for state in worker.remote.iter().flatten() {
            state.fetches.iter().for_each(|counter| counter.flush(host));
        }
        let Some(now) = now_millis(host) else { return Vec::new() };
        let installed = worker.sync(host, now);
        worker.start_due_fetches(host, now);
        worker.release_held(host, now, &installed)
    }

    fn on_call_response(
        &self,
        host: &dyn Host,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
    ) -> Option<Vec<u32>> {
        let mut worker = self.worker.try_borrow_mut().ok()?;
        worker.fetched(host, token_id, num_headers, body_size)
    }
}

impl Worker {
    /// The answer to this worker's key set fetch `token_id`, if it is one: stores the set for
    /// every worker, frees the lease, and returns the held requests to decide again.
    fn fetched(&mut self, host: &dyn Host, token_id: u32, num_headers: usize, body_size: usize) -> Option<Vec<u32>> {
        let index =
            self.remote.iter().position(|state| state.as_ref().and_then(|s| s.pending_call) == Some(token_id))?;
        let config = Rc::clone(&self.config);
        let Some(JwksSource::Remote(remote)) = config.providers.get(index).map(|provider| &provider.jwks) else {
            return None;
        };
        let name = config.providers.get(index).map_or("", |provider| provider.name.as_str());
        if let Some(Some(state)) = self.remote.get_mut(index) {
            state.pending_call = None;
        }
        let status = (num_headers > 0).then(|| host.header(HeaderMap::CallResponse, ":status")).flatten();
        let outcome = match status.as_deref() {
            Some(b"200") if body_size <= jwks::MAX_JWKS_BYTES => {
                let body = host.call_response_body(body_size).unwrap_or_default();
                jwks::parse(&body).map(|(keys, skipped)| (body, keys.len(), skipped))
            }
            Some(b"200") => Err(format!("the key set has {body_size} bytes, more than {}", jwks::MAX_JWKS_BYTES)),
            Some(status) => Err(format!("the key set endpoint answered {}", String::from_utf8_lossy(status))),
            None => Err("the key set endpoint did not answer (reset or unreachable)".to_string()),
        };
        let succeeded = outcome.is_ok();
        if let Some(counter) =
            self.remote.get(index).and_then(Option::as_ref).and_then(|s| s.fetches.get(usize::from(!succeeded)))
        {
            counter.add(1);
        }
        match outcome {
            Ok((body, count, skipped)) => {
                let stored = remote::encode_set(now_millis(host).unwrap_or_default(), &body);
                if let Err(error) = host.shared_data().set(&remote::set_key(remote), &stored, 0) {
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
        if let Err(error) = remote::release_lease(host.shared_data(), remote) {
            log::warn!("auth: provider `{name}`: cannot release the fetch lease: {error}");
        }
        let Some(now) = now_millis(host) else { return Some(Vec::new()) };
        let installed = self.sync(host, now);
        Some(self.release_held(host, now, &installed))
    }

    /// Installs stored key sets that changed since this worker last looked, and drops sets
    /// that are too stale. Returns the providers that got a new set.
    fn sync(&mut self, host: &dyn Host, now: u64) -> Vec<usize> {
        let mut installed = Vec::new();
        for index in 0..self.remote.len() {
            let Some(provider) = self.config.providers.get(index) else { continue };
            let JwksSource::Remote(source) = &provider.jwks else { continue };
            let Some(Some(state)) = self.remote.get_mut(index) else { continue };
            let stored = match host.shared_data().get(&remote::set_key(source)) {
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

    fn start_due_fetches(&mut self, host: &dyn Host, now: u64) {
        for index in 0..self.remote.len() {
            if matches!(self.remote.get(index), Some(Some(state)) if state.pending_call.is_some()) {
                continue;
            }
            let lease = self.lease(host, index).unwrap_or_default();
            let Some(provider) = self.config.providers.get(index) else { continue };
            let JwksSource::Remote(source) = &provider.jwks else { continue };
            let Some(Some(state)) = self.remote.get_mut(index) else { continue };
            if !remote::fetch_due(source, now, state.fetched_at_ms, state.unknown_kid_seen, lease) {
                continue;
            }
            // Only a set that lacks a token's kid makes it a kid fetch: the first fetch (no set
            // yet) must not start the cooldown that a rotation right after it would then wait on.
            let for_unknown_kid = state.unknown_kid_seen && state.fetched_at_ms.is_some();
            match remote::take_lease(host.shared_data(), source, now, for_unknown_kid) {
                Ok(true) => {
                    state.unknown_kid_seen = false;
                    state.pending_call = dispatch(host, &provider.name, source);
                    if state.pending_call.is_none() {
                        let _ = remote::release_lease(host.shared_data(), source);
                    }
                }
                Ok(false) => {}
                Err(error) => log::warn!("auth: provider `{}`: cannot take the fetch lease: {error}", provider.name),
            }
        }
    }

    /// Decides the request of the current stream with the keys this worker holds now.
    /// With the brute-force guard on, a client locked out gets 429 for credentials not
    /// verified before (returned: seconds until it may try again), and every invalid
    /// credential counts against its client.
    fn decide(
        &mut self,
        request: &mut Request,
        now_ms: Option<u64>,
        refetch: &mut authenticate::Refetch,
    ) -> (Decision, Option<u64>) {
        let config = Rc::clone(&self.config);
        let client = match (&self.guard, now_ms) {
            (Some(_), Some(now_ms)) => {
                request.property(&SOURCE_ADDRESS).and_then(from_source_address).map(|ip| (ip, now_ms))
            }
            _ => None,
        };
        let locked_for = match (&self.guard, client) {
            (Some(guard), Some((ip, now_ms))) => guard.locked(ip, now_ms),
            _ => None,
        };
        let now_seconds = now_ms.map(|ms| ms / 1000);
        let decision =
            authenticate::decide(&config, &mut self.ring, request, now_seconds, locked_for.is_some(), refetch);
        if let (Some(guard), Some((ip, now_ms)), Decision::Deny(denial)) = (&mut self.guard, client, &decision) {
            // A token refused for a key not fetched yet is not a failure of the client's.
            if denial.error == "invalid_token" && refetch.is_empty() {
                guard.failed(ip, now_ms);
            }
        }
        (decision, locked_for)
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
    fn lease(&self, host: &dyn Host, index: usize) -> Option<remote::Lease> {
        let JwksSource::Remote(source) = &self.config.providers.get(index)?.jwks else { return None };
        let stored = host.shared_data().get(&remote::lease_key(source)).ok().flatten()?;
        Some(remote::Lease::decode(&stored.value))
    }

    /// Until when a request that needs new keys of `providers` may wait for a fetch, if any of
    /// them has one in flight or due now.
    fn hold_until(&self, host: &dyn Host, providers: &[usize], now: u64) -> Option<u64> {
        providers
            .iter()
            .filter_map(|&index| {
                let JwksSource::Remote(source) = &self.config.providers.get(index)?.jwks else { return None };
                let fetched_at = self.remote.get(index)?.as_ref()?.fetched_at_ms;
                let lease = self.lease(host, index)?;
                remote::can_hold(source, now, fetched_at, lease).then(|| remote::hold_deadline(source, now))
            })
            .max()
    }

    /// The held requests to decide again now that their fetch ended (a new set, a failure,
    /// or their wait ran out); they leave the list.
    fn release_held(&mut self, host: &dyn Host, now: u64, installed: &[usize]) -> Vec<u32> {
        if self.held.is_empty() {
            return Vec::new();
        }
        // Read each provider's lease once, however many requests wait on it.
        let fetching: Vec<bool> = (0..self.remote.len())
            .map(|index| self.lease(host, index).is_some_and(|lease| lease.is_held(now)))
            .collect();
        let mut released = Vec::new();
        self.held.retain(|held| {
            let new_keys = held.providers.iter().any(|index| installed.contains(index));
            let fetch_ended = held.providers.iter().all(|&index| !fetching.get(index).copied().unwrap_or(false));
            let release = new_keys || fetch_ended || now >= held.until_ms;
            if release {
                released.push(held.context_id);
            }
            !release
        });
        released
    }

    /// Carries out a decision on the current stream: counts it, then sets the identity
    /// headers (the request goes on) or answers the client.
    fn apply(&self, request: &mut Request, (decision, retry_after): (Decision, Option<u64>)) -> Flow {
        let result = match &decision {
            Decision::Allow(_) => 0,
            Decision::Deny(denial) => match denial.error {
                "unauthorized" => 1,
                "invalid_token" => 2,
                "insufficient_scope" => 3,
                "auth_unavailable" => 5,
                authenticate::THROTTLED => 6,
                _ => 4,
            },
        };
        if let Some(counter) = self.results.get(result) {
            counter.add(1);
        }
        if self.config.access_log_fields {
            publish_log_field(request.host, log_fields::AUTH, RESULTS.get(result).copied().unwrap_or_default());
        }
        match decision {
            Decision::Allow(changes) => {
                // Whatever the rule, a client never supplies the headers this filter vouches
                // for: each is replaced by the verified value or removed.
                for name in &self.config.owned_headers {
                    if !changes.set_headers.iter().any(|(set, _)| set == name) {
                        set_header(request, name, None);
                    }
                }
                for name in &changes.remove_headers {
                    set_header(request, name, None);
                }
                for (name, value) in &changes.set_headers {
                    set_header(request, name, Some(value));
                    if self.config.access_log_fields && *name == self.config.consumer_header {
                        publish_log_field(request.host, log_fields::CONSUMER, value);
                    }
                }
                if let Some(path) = &changes.new_path {
                    set_header(request, ":path", Some(path));
                }
                Flow::Continue
            }
            Decision::Deny(denial) => {
                // The request goes nowhere, but Envoy's trace and log still read its headers:
                // a client's claimed consumer must not appear there either.
                set_header(request, &self.config.consumer_header, None);
                // The reason, never the credential.
                log::debug!("auth: {} {}", denial.status, denial.message);
                let retry_after = retry_after.map(|seconds| seconds.to_string());
                let mut headers = vec![("content-type", "application/json")];
                if let Some(seconds) = &retry_after {
                    headers.push(("retry-after", seconds));
                }
                if let Some(challenge) = &denial.www_authenticate {
                    headers.push(("www-authenticate", challenge));
                }
                let body = error_body(denial.error, &denial.message);
                if let Err(status) = request.host.send_reply(denial.status, &headers, &body) {
                    log::error!("auth: cannot send the {} answer: {status}", denial.status);
                }
                Flow::Pause
            }
        }
    }
}

fn dispatch(host: &dyn Host, name: &str, source: &RemoteJwks) -> Option<u32> {
    let headers = [
        (":method", "GET"),
        (":path", source.path.as_str()),
        (":authority", source.authority.as_str()),
        ("accept", "application/json"),
    ];
    match host.http_call(&source.cluster, &headers, source.timeout) {
        Ok(token) => Some(token),
        Err(status) => {
            log::warn!("auth: provider `{name}`: cannot call cluster `{}` for its key set: {status}", source.cluster);
            None
        }
    }
}

struct AuthStream {
    worker: Rc<RefCell<Worker>>,
}

impl StageStream for AuthStream {
    fn on_request_headers(&mut self, request: &mut Request, context_id: u32) -> Flow {
        // An authentication filter that cannot look must not let the request through.
        let Ok(mut worker) = self.worker.try_borrow_mut() else {
            log::error!("auth: no state for this request; refusing it");
            let body = error_body("auth_unavailable", "authentication is unavailable; retry shortly");
            let _ = request.host.send_reply(503, &[("content-type", "application/json")], &body);
            return Flow::Pause;
        };
        let worker = &mut *worker;
        let host = request.host;
        let now = now_millis(host);
        if now.is_none() && !worker.logged_no_clock.replace(true) {
            log::error!("auth: the host clock cannot be read; tokens are refused with 503 (logged once per worker)");
        }
        let mut refetch = Vec::new();
        let mut decision = worker.decide(request, now, &mut refetch);
        if let (Some(now), false) = (now, refetch.is_empty()) {
            if !worker.sync(host, now).is_empty() {
                // Another worker stored a new set since this one last ticked: use it right away.
                refetch.clear();
                decision = worker.decide(request, Some(now), &mut refetch);
            }
            worker.note_unknown_keys(&refetch);
            // A key rotated in, or the set is not there yet: wait for the fetch (in flight, or
            // started by the worker's next tick, which the held request makes fast) rather
            // than refuse a token that may be good. Fetches are the worker's own calls (an
            // answer goes to the context that made the call, and a stream may be gone by then).
            if matches!(decision.0, Decision::Deny(_)) && !refetch.is_empty() {
                if let Some(until_ms) = worker.hold_until(host, &refetch, now) {
                    worker.held.push(Held { context_id, providers: refetch, until_ms });
                    return Flow::Pause;
                }
            }
        }
        worker.apply(request, decision)
    }

    /// The fetch this request was held for ended: decide with the keys there are now.
    fn on_wake(&mut self, request: &mut Request) -> Flow {
        let Ok(mut worker) = self.worker.try_borrow_mut() else { return Flow::Pause };
        let now = now_millis(request.host);
        let decision = worker.decide(request, now, &mut Vec::new());
        worker.apply(request, decision)
    }
}

fn set_header(request: &mut Request, name: &str, value: Option<&str>) {
    if let Err(status) = request.set_header(name, value) {
        log::warn!("auth: cannot change request header {name}: {status}");
    }
}
