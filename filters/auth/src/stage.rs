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
        let now = request.now_nanos().map(|nanos| nanos / 1_000_000);
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
        let now = request.now_nanos().map(|nanos| nanos / 1_000_000);
        let decision = worker.decide(request, now, &mut Vec::new());
        worker.apply(request, decision)
    }
}

fn set_header(request: &mut Request, name: &str, value: Option<&str>) {
    if let Err(status) = request.set_header(name, value) {
        log::warn!("auth: cannot change request header {name}: {status}");
    }
}

#[cfg(test)]
mod tests {
    //! The stage driven through a fake host, as Envoy drives it: requests, ticks and the
    //! answers to its key set fetches. Covers the key set life cycle (cold start, one fetch for
    //! every worker under the lease, rotation, staleness) and the brute-force guard.

    use super::*;
    use base64::Engine;
    use gateway_common::request::RequestMemo;
    use gateway_common::testing::FakeHost;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};

    const SECRET: &[u8] = b"test-only hmac secret, 32+ bytes long!!";
    const T0: u64 = 1_764_000_000_000;

    fn jwks(kids: &[&str]) -> Vec<u8> {
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        let keys: Vec<Value> = kids.iter().map(|kid| json!({"kty": "oct", "kid": kid, "k": k})).collect();
        json!({ "keys": keys }).to_string().into_bytes()
    }

    fn token(kid: &str, secret: &[u8]) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.to_string());
        let claims = json!({"iss": "https://idp.test", "sub": "ada", "exp": T0 / 1000 + 86_400});
        encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn remote_config() -> Value {
        json!({
            "providers": {"idp": {
                "issuer": "https://idp.test",
                "algorithms": ["HS256"],
                "remote_jwks": {
                    "http_uri": {"uri": "http://idp.test/jwks", "cluster": "idp", "timeout": "1s"},
                    "cache_duration": "10m", "max_staleness": "5m", "refetch_cooldown": "10s"
                }
            }},
            "rules": [{"requires": {"provider_name": "idp"}}]
        })
    }

    /// One request with `token`; returns its flow and stream (to wake it later).
    fn send(
        host: &FakeHost,
        stage: &dyn Stage,
        token: &str,
        context_id: u32,
    ) -> (Flow, Box<dyn StageStream>, RequestMemo) {
        host.clear_headers();
        host.put_header(HeaderMap::Request, ":method", "GET");
        host.put_header(HeaderMap::Request, ":path", "/orders");
        host.put_header(HeaderMap::Request, "authorization", &format!("Bearer {token}"));
        host.put_header(HeaderMap::Request, "x-gateway-consumer", "mallory");
        let mut stream = stage.new_stream();
        let mut memo = RequestMemo::default();
        let flow = stream.on_request_headers(&mut Request::new(host, &mut memo), context_id);
        (flow, stream, memo)
    }

    /// Answers the last fetch the worker started; returns the streams it wakes.
    fn answer(host: &FakeHost, stage: &dyn Stage, status: &str, body: &[u8]) -> Vec<u32> {
        let token = host.calls.borrow().last().map(|call| call.token).unwrap();
        host.set_header(HeaderMap::CallResponse, ":status", Some(status)).unwrap();
        *host.call_body.borrow_mut() = body.to_vec();
        stage.on_call_response(host, token, 1, body.len()).unwrap()
    }

    fn fetches(host: &FakeHost) -> usize {
        host.calls.borrow().iter().filter(|call| call.cluster == "idp").count()
    }

    #[test]
    fn cold_start_holds_the_first_request_until_the_key_set_arrives() {
        let host = FakeHost::default().with_clock_millis(T0);
        let stage = build(remote_config().to_string().as_bytes(), &host).unwrap();
        assert_eq!(stage.tick_period(), Some(Duration::from_millis(remote::TICK_MILLIS)));
        let (flow, mut stream, mut memo) = send(&host, stage.as_ref(), &token("k1", SECRET), 7);
        assert_eq!(flow, Flow::Pause, "held, not refused");
        assert_eq!(stage.tick_period(), Some(Duration::from_millis(remote::HELD_TICK_MILLIS)));
        assert!(stage.on_tick(&host).is_empty());
        assert_eq!(fetches(&host), 1);
        let call = host.calls.borrow()[0].clone();
        assert!(call.headers.contains(&(":path".into(), "/jwks".into())));
        assert_eq!(answer(&host, stage.as_ref(), "200", &jwks(&["k1"])), [7]);
        assert_eq!(
            {
                memo.new_callback();
                stream.on_wake(&mut Request::new(&host, &mut memo))
            },
            Flow::Continue
        );
        assert_eq!(host.request_header("x-gateway-consumer").as_deref(), Some("ada"), "the client's copy replaced");
        assert!(host.replies.borrow().is_empty());
        assert_eq!(stage.tick_period(), Some(Duration::from_millis(remote::TICK_MILLIS)));
    }

    #[test]
    fn one_fetch_serves_every_worker() {
        let first = FakeHost::default().with_clock_millis(T0);
        let second = first.another_worker();
        let config = remote_config().to_string();
        let (a, b) = (build(config.as_bytes(), &first).unwrap(), build(config.as_bytes(), &second).unwrap());
        a.on_tick(&first);
        b.on_tick(&second);
        assert_eq!(fetches(&first) + fetches(&second), 1, "the lease lets one worker fetch");
        answer(&first, a.as_ref(), "200", &jwks(&["k1"]));
        second.set_clock_millis(T0 + 500);
        b.on_tick(&second);
        assert_eq!(send(&second, b.as_ref(), &token("k1", SECRET), 1).0, Flow::Continue);
        assert_eq!(fetches(&second), 0, "the other worker installed the stored set");
    }

    #[test]
    fn a_rotated_in_key_is_fetched_for_the_request_that_needs_it() {
        let host = FakeHost::default().with_clock_millis(T0);
        let stage = build(remote_config().to_string().as_bytes(), &host).unwrap();
        stage.on_tick(&host);
        answer(&host, stage.as_ref(), "200", &jwks(&["k1"]));
        host.set_clock_millis(T0 + 60_000);
        let (flow, mut stream, mut memo) = send(&host, stage.as_ref(), &token("k2", SECRET), 9);
        assert_eq!(flow, Flow::Pause);
        stage.on_tick(&host);
        assert_eq!(fetches(&host), 2);
        assert_eq!(answer(&host, stage.as_ref(), "200", &jwks(&["k1", "k2"])), [9]);
        assert_eq!(
            {
                memo.new_callback();
                stream.on_wake(&mut Request::new(&host, &mut memo))
            },
            Flow::Continue
        );
        // Within the cooldown an unknown kid is refused at once, without another fetch.
        let (flow, _, _) = send(&host, stage.as_ref(), &token("k3", SECRET), 10);
        assert_eq!(flow, Flow::Pause);
        assert_eq!(host.replies.borrow().last().map(|reply| reply.status), Some(401));
        stage.on_tick(&host);
        assert_eq!(fetches(&host), 2);
    }

    #[test]
    fn a_set_older_than_cache_duration_plus_max_staleness_is_dropped() {
        let host = FakeHost::default().with_clock_millis(T0);
        let stage = build(remote_config().to_string().as_bytes(), &host).unwrap();
        stage.on_tick(&host);
        answer(&host, stage.as_ref(), "200", &jwks(&["k1"]));
        // Refreshes fail from then on; the last good set serves until it is too stale.
        for minute in [9, 12, 14] {
            host.set_clock_millis(T0 + minute * 60_000);
            stage.on_tick(&host);
            answer(&host, stage.as_ref(), "503", b"");
            assert_eq!(send(&host, stage.as_ref(), &token("k1", SECRET), 1).0, Flow::Continue, "minute {minute}");
        }
        host.set_clock_millis(T0 + 16 * 60_000);
        stage.on_tick(&host);
        answer(&host, stage.as_ref(), "503", b"");
        let (flow, mut stream, mut memo) = send(&host, stage.as_ref(), &token("k1", SECRET), 2);
        if flow == Flow::Pause && host.replies.borrow().is_empty() {
            // Held for the next fetch, which fails too.
            stage.on_tick(&host);
            answer(&host, stage.as_ref(), "503", b"");
            assert_eq!(
                {
                    memo.new_callback();
                    stream.on_wake(&mut Request::new(&host, &mut memo))
                },
                Flow::Pause
            );
        }
        let reply = host.replies.borrow().last().cloned().unwrap();
        assert_eq!(reply.status, 401);
        assert!(String::from_utf8_lossy(&reply.body).contains("no keys"));
    }

    #[test]
    fn the_brute_force_guard_stops_verifying_a_clients_forged_tokens() {
        let mut config = json!({
            "providers": {"idp": {"issuer": "https://idp.test", "algorithms": ["HS256"],
                "local_jwks": {"inline_string": String::from_utf8(jwks(&["k1"])).unwrap()}}},
            "brute_force_guard": {"max_failures": 3, "window": "1m"},
            "rules": [{"requires": {"provider_name": "idp"}}]
        });
        let host = FakeHost::default().with_clock_millis(T0).with_property(&SOURCE_ADDRESS, "203.0.113.9:4000");
        let stage = build(config.to_string().as_bytes(), &host).unwrap();
        let good = token("k1", SECRET);
        assert_eq!(send(&host, stage.as_ref(), &good, 1).0, Flow::Continue, "verified and cached");
        for _ in 0..3 {
            assert_eq!(
                send(&host, stage.as_ref(), &token("k1", b"forged secret, also 32 bytes long!!"), 1).0,
                Flow::Pause
            );
        }
        assert!(host.replies.borrow().iter().all(|reply| reply.status == 401));
        let fresh = {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("k1".into());
            let claims = json!({"iss": "https://idp.test", "sub": "grace", "exp": T0 / 1000 + 60});
            encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
        };
        assert_eq!(send(&host, stage.as_ref(), &fresh, 1).0, Flow::Pause);
        let reply = host.replies.borrow().last().cloned().unwrap();
        assert_eq!(reply.status, 429);
        assert!(reply.headers.contains(&("retry-after".into(), "60".into())));
        assert_eq!(send(&host, stage.as_ref(), &good, 1).0, Flow::Continue, "a token verified before still passes");
        host.set_clock_millis(T0 + 60_000);
        assert_eq!(send(&host, stage.as_ref(), &fresh, 1).0, Flow::Continue, "the window ended");
        config["brute_force_guard"]["window"] = json!("0s");
        assert!(build(config.to_string().as_bytes(), &host).err().unwrap().contains("brute_force_guard.window"));
    }
}
