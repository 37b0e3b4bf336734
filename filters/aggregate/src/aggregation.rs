//! One aggregated request from start to answer, as a pure state machine: the adapter feeds it
//! the clock and each backend's answer, and it says which calls to send next and, in the end,
//! the reply. No proxy-wasm import, so every row of the failure policy is a native test.
//!
//! Failure policy:
//! - every required backend answers 2xx with JSON (within its size cap, shaped without error):
//!   **200** with the merged document, `x-aggregate-complete: true`;
//! - an optional backend fails (non-2xx, timeout, reset, non-JSON, over the cap, missing
//!   input, unshapeable): **200** without its part (or with its `fallback`),
//!   `x-aggregate-complete: false` and `x-aggregate-failures` listing what failed and why;
//! - a required backend fails: **502** (or, with `pass_status`, its own non-2xx status);
//! - a required backend's URL needs client input that is absent or unusable: **400**;
//! - the endpoint's `timeout` passes: **504**.

use crate::config::Endpoint;
use crate::shape::{merge_into, scalar_at};
use crate::template::{Inputs, RenderError, RenderErrorKind};
use gateway_common::response::error_body;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

/// What Envoy gave back for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A response with headers (Envoy's own 503/504 for unreachable or slow upstreams included).
    Response { status: u16, body: Body },
    /// No headers at all: the call was reset or failed before any response.
    Reset,
    /// Envoy refused to send the call (`dispatch_http_call` failed, e.g. an unknown cluster).
    NotSent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Bytes(Vec<u8>),
    /// Larger than the backend's `max_response_bytes`; never read into the VM.
    TooLarge(usize),
}

/// Why a backend's part is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Status(u16),
    Timeout,
    Reset,
    NotSent,
    InvalidJson,
    TooLarge,
    /// The URL could not be filled (`RenderError`).
    Input(RenderError),
    Shape,
}

impl Failure {
    /// The reason token in `x-aggregate-failures`.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Status(_) => "status",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::NotSent => "not_sent",
            Failure::InvalidJson => "invalid_json",
            Failure::TooLarge => "too_large",
            Failure::Input(error) if error.kind == RenderErrorKind::Missing => "missing_input",
            Failure::Input(_) => "invalid_input",
            Failure::Shape => "shape",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Status(status) => write!(f, "answered {status}"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Reset => f.write_str("reset the call"),
            Failure::NotSent => f.write_str("could not be called"),
            Failure::InvalidJson => f.write_str("answered something that is not JSON"),
            Failure::TooLarge => f.write_str("answered more than its size cap"),
            Failure::Input(error) if error.kind == RenderErrorKind::Missing => write!(f, "needs {}", error.what),
            Failure::Input(error) => write!(f, "cannot use {} in its URL", error.what),
            Failure::Shape => f.write_str("answered JSON of an unexpected shape"),
        }
    }
}

/// A call to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub backend: usize,
    pub cluster: String,
    /// Pseudo-headers first, then the forwarded ones.
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// For the access log: `complete` (every part), `partial` (200 without some optional
    /// part) or `failed` (any other answer).
    pub fn outcome(&self) -> &'static str {
        let complete = self.headers.iter().any(|(name, value)| name == "x-aggregate-complete" && value == "true");
        match (self.status, complete) {
            (200, true) => "complete",
            (200, false) => "partial",
            _ => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Send(Vec<Call>),
    Reply(Reply),
    /// Nothing to do until the next answer.
    Wait,
}

/// The client's request, as far as the templates and forwarded headers need it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Percent-decoded path parameters.
    pub path_parameters: HashMap<String, String>,
    /// Percent-decoded query parameters (the first value of each name).
    pub query: HashMap<String, String>,
    /// Lower-case name to value, for the headers the endpoint uses.
    pub headers: HashMap<String, String>,
}

enum State {
    NotStarted,
    Pending {
        sent_at_ms: u64,
        timeout: Duration,
        /// The timeout is what was left of the endpoint's deadline (the backend's own is
        /// not shorter), so this call timing out means the deadline passed.
        clipped: bool,
    },
    Answered {
        raw: Value,
        shaped: Value,
    },
    Failed(Failure),
}

pub struct Aggregation {
    endpoint: Rc<Endpoint>,
    request: Request,
    deadline_ms: u64,
    states: Vec<State>,
    next_stage: usize,
    finished: bool,
}

impl Aggregation {
    pub fn new(endpoint: Rc<Endpoint>, request: Request, now_ms: u64) -> Aggregation {
        let timeout_ms = u64::try_from(endpoint.timeout.as_millis()).unwrap_or(u64::MAX);
        Aggregation {
            states: endpoint.backends.iter().map(|_| State::NotStarted).collect(),
            endpoint,
            request,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            next_stage: 0,
            finished: false,
        }
    }

    /// The first stage's calls (or a reply, if none of them can be made).
    pub fn start(&mut self, now_ms: u64) -> Step {
        self.advance(now_ms)
    }

    /// The largest body to read for `backend`; a larger one is reported as `Body::TooLarge`.
    pub fn max_response_bytes(&self, backend: usize) -> usize {
        self.endpoint.backends.get(backend).map_or(0, |backend| backend.max_response_bytes)
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Records `backend`'s answer and says what happens next.
    pub fn answer(&mut self, backend: usize, answer: Answer, now_ms: u64) -> Step {
        if self.finished {
            return Step::Wait;
        }
        let Some(State::Pending { sent_at_ms, timeout, clipped }) = self.states.get(backend) else { return Step::Wait };
        // Envoy's answer to a call that ran out of time says so; the clock is a second witness
        // (a backend can also answer 504), but not a sufficient one: Envoy's timers run on the
        // event loop's cached time and can fire several milliseconds before the filter's clock
        // reaches the timeout on a busy worker.
        let timed_out =
            is_envoy_timeout(&answer) || now_ms.saturating_sub(*sent_at_ms).saturating_add(5) >= duration_ms(*timeout);
        let deadline_passed = now_ms >= self.deadline_ms || (timed_out && *clipped);
        let result = match answer {
            Answer::Response { status, body } if (200..300).contains(&status) => match body {
                Body::TooLarge(_) => Err(Failure::TooLarge),
                Body::Bytes(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                    Err(_) => Err(Failure::InvalidJson),
                    Ok(raw) => self.shape(backend, raw),
                },
            },
            _ if timed_out => Err(Failure::Timeout),
            Answer::Response { status, .. } => Err(Failure::Status(status)),
            Answer::Reset => Err(Failure::Reset),
            Answer::NotSent => Err(Failure::NotSent),
        };
        match result {
            Ok((raw, shaped)) => self.set(backend, State::Answered { raw, shaped }),
            Err(failure) => {
                if deadline_passed {
                    return self.finish(self.deadline_reply());
                }
                if let Some(reply) = self.fail(backend, failure) {
                    return self.finish(reply);
                }
            }
        }
        self.advance(now_ms)
    }

    fn shape(&self, backend: usize, raw: Value) -> Result<(Value, Value), Failure> {
        let shape = &self.endpoint.backends.get(backend).ok_or(Failure::Shape)?.shape;
        let shaped = shape.apply(raw.clone()).map_err(|_| Failure::Shape)?;
        Ok((raw, shaped))
    }

    /// Records a failure; returns the reply if it ends the aggregation.
    fn fail(&mut self, backend: usize, failure: Failure) -> Option<Reply> {
        let endpoint = Rc::clone(&self.endpoint);
        let config = endpoint.backends.get(backend)?;
        let reply = config.required.then(|| {
            let message = format!("required backend `{}` {failure}", config.name);
            match &failure {
                Failure::Input(error) if error.client_input => json_reply(400, "bad_request", &message),
                Failure::Status(status) if config.pass_status => json_reply(*status, "backend_error", &message),
                _ => json_reply(502, "bad_gateway", &message),
            }
        });
        self.set(backend, State::Failed(failure));
        reply.map(|mut reply| {
            reply.headers.extend(self.failure_headers());
            reply
        })
    }

    fn set(&mut self, backend: usize, state: State) {
        if let Some(slot) = self.states.get_mut(backend) {
            *slot = state;
        }
    }

    /// Starts the next stage once the current one is done, until there is something to send
    /// or nothing left to do.
    fn advance(&mut self, now_ms: u64) -> Step {
        loop {
            if self.states.iter().any(|state| matches!(state, State::Pending { .. })) {
                return Step::Wait;
            }
            let endpoint = Rc::clone(&self.endpoint);
            let Some(stage) = endpoint.stages.get(self.next_stage) else {
                return self.finish(self.merged_reply());
            };
            if now_ms >= self.deadline_ms {
                return self.finish(self.deadline_reply());
            }
            self.next_stage += 1;
            let remaining = Duration::from_millis(self.deadline_ms - now_ms);
            let mut calls = Vec::new();
            for &index in stage {
                let Some(backend) = endpoint.backends.get(index) else { continue };
                match backend.url.render(&Values { request: &self.request, states: &self.states }) {
                    Ok(url) => {
                        let timeout = backend.timeout.min(remaining);
                        // Equal counts: a backend without its own timeout gets exactly the time
                        // left, and its call timing out is the deadline passing.
                        let clipped = backend.timeout >= remaining;
                        let mut headers = vec![
                            (":method".to_string(), backend.method.clone()),
                            (":path".to_string(), url),
                            (":authority".to_string(), backend.host.clone()),
                        ];
                        for name in &backend.forward_headers {
                            if let Some(value) = self.request.headers.get(name) {
                                headers.push((name.clone(), value.clone()));
                            }
                        }
                        calls.push(Call { backend: index, cluster: backend.cluster.clone(), headers, timeout });
                        self.set(index, State::Pending { sent_at_ms: now_ms, timeout, clipped });
                    }
                    Err(error) => {
                        if let Some(reply) = self.fail(index, Failure::Input(error)) {
                            return self.finish(reply);
                        }
                    }
                }
            }
            if !calls.is_empty() {
                return Step::Send(calls);
            }
        }
    }

    fn finish(&mut self, reply: Reply) -> Step {
        self.finished = true;
        Step::Reply(reply)
    }

    fn deadline_reply(&self) -> Reply {
        let message = format!("the aggregation did not finish within {} ms", duration_ms(self.endpoint.timeout));
        let mut reply = json_reply(504, "gateway_timeout", &message);
        reply.headers.extend(self.failure_headers());
        reply
    }

    fn merged_reply(&self) -> Reply {
        let mut document = Map::new();
        for (backend, state) in self.endpoint.backends.iter().zip(&self.states) {
            let part = match state {
                State::Answered { shaped, .. } => Some(shaped.clone()),
                _ => backend.fallback.clone(),
            };
            if let Some(part) = part {
                merge_into(&mut document, backend.shape.group.as_deref(), part);
            }
        }
        let failures = self.failure_headers();
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-aggregate-complete".to_string(), failures.is_empty().to_string()),
        ];
        headers.extend(failures);
        let mut body = Value::Object(document).to_string().into_bytes();
        body.push(b'\n');
        Reply { status: 200, headers, body }
    }

    /// `x-aggregate-failures: "orders";reason=timeout, "stock";reason=status;status=503`
    /// (a structured-field List), when anything failed.
    fn failure_headers(&self) -> Vec<(String, String)> {
        let items: Vec<String> = self
            .endpoint
            .backends
            .iter()
            .zip(&self.states)
            .filter_map(|(backend, state)| match state {
                State::Failed(failure) => {
                    let mut item = format!("\"{}\";reason={}", backend.name, failure.reason());
                    if let Failure::Status(status) = failure {
                        item.push_str(&format!(";status={status}"));
                    }
                    Some(item)
                }
                _ => None,
            })
            .collect();
        if items.is_empty() {
            Vec::new()
        } else {
            vec![("x-aggregate-failures".to_string(), items.join(", "))]
        }
    }
}

/// The body of the 504 that Envoy's router answers when a call's timeout passes.
pub const ENVOY_TIMEOUT_BODY: &[u8] = b"upstream request timeout";

fn is_envoy_timeout(answer: &Answer) -> bool {
    matches!(answer, Answer::Response { status: 504, body: Body::Bytes(body) } if body == ENVOY_TIMEOUT_BODY)
}

fn json_reply(status: u16, error: &str, message: &str) -> Reply {
    Reply {
        status,
        headers: vec![("content-type".to_string(), "application/json".to_string())],
        body: error_body(error, message),
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Template inputs: the request, and the raw answers of backends that answered.
struct Values<'a> {
    request: &'a Request,
    states: &'a [State],
}

impl Inputs for Values<'_> {
    fn path_parameter(&self, name: &str) -> Option<String> {
        self.request.path_parameters.get(name).cloned()
    }
    fn query(&self, name: &str) -> Option<String> {
        self.request.query.get(name).cloned()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.request.headers.get(name).cloned()
    }
    fn field(&self, backend: usize, path: &[String]) -> Option<String> {
        match self.states.get(backend) {
            Some(State::Answered { raw, .. }) => scalar_at(raw, path),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AggregateConfig;
    use serde_json::json;

    const T0: u64 = 1_764_000_000_000;

    fn endpoint(subject: Value) -> Rc<Endpoint> {
        let mut config = json!({"endpoints": [{
            "path": "/api/users/{id}/dashboard",
            "timeout": "2s",
            "backends": [
                {"name": "user", "cluster": "users", "path": "/users/{id}"},
                {"name": "subject", "cluster": "orders", "path": "/orders?user_id={id}", "group": "orders", "timeout": "500ms"}
            ]
        }]});
        for (key, value) in subject.as_object().unwrap() {
            config["endpoints"][0]["backends"][1][key] = value.clone();
        }
        AggregateConfig::parse(config.to_string().as_bytes()).unwrap().endpoints.remove(0)
    }

    fn request(id: &str) -> Request {
        let mut request = Request::default();
        request.path_parameters.insert("id".into(), id.into());
        request.headers.insert("authorization".into(), "Bearer t".into());
        request.headers.insert("x-unrelated".into(), "no".into());
        request
    }

    fn ok(body: Value) -> Answer {
        Answer::Response { status: 200, body: Body::Bytes(body.to_string().into_bytes()) }
    }

    fn sent(step: Step) -> Vec<Call> {
        match step {
            Step::Send(calls) => calls,
            other => panic!("expected calls, got {other:?}"),
        }
    }

    fn replied(step: Step) -> Reply {
        match step {
            Step::Reply(reply) => reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
        reply.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn body(reply: &Reply) -> Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    #[test]
    fn one_stage_runs_in_parallel_and_merges() {
        let endpoint = endpoint(json!({}));
        let mut aggregation = Aggregation::new(Rc::clone(&endpoint), request("1"), T0);
        let calls = sent(aggregation.start(T0));
        assert_eq!(calls.len(), 2, "both backends in the first stage");
        assert_eq!(
            calls[0].headers,
            [
                (":method".to_string(), "GET".to_string()),
                (":path".to_string(), "/users/1".to_string()),
                (":authority".to_string(), "users".to_string()),
                ("authorization".to_string(), "Bearer t".to_string()),
            ]
        );
        assert_eq!(calls[0].timeout, Duration::from_secs(2));
        assert_eq!(calls[1].timeout, Duration::from_millis(500));
        assert_eq!(aggregation.answer(1, ok(json!([{"id": "o-1"}])), T0 + 10), Step::Wait);
        let reply = replied(aggregation.answer(0, ok(json!({"id": "1", "name": "Ada"})), T0 + 20));
        assert_eq!(reply.status, 200);
        assert_eq!(header(&reply, "x-aggregate-complete"), Some("true"));
        assert_eq!(header(&reply, "x-aggregate-failures"), None);
        assert_eq!(reply.outcome(), "complete");
        assert_eq!(body(&reply), json!({"id": "1", "name": "Ada", "orders": [{"id": "o-1"}]}));
        assert!(aggregation.is_finished());
        assert_eq!(aggregation.answer(0, Answer::Reset, T0 + 30), Step::Wait, "late answers are ignored");
    }

    /// Every row of the policy: the subject backend required or optional, answering each way.
    #[test]
    fn failure_policy_table() {
        let oversize = Answer::Response { status: 200, body: Body::TooLarge(5 << 20) };
        let cases: Vec<(&str, Answer, u64, &str, Option<u16>)> = vec![
            ("ok", ok(json!([1])), 10, "", None),
            ("error", Answer::Response { status: 500, body: Body::Bytes(b"oops".to_vec()) }, 10, "status", Some(500)),
            ("timeout", Answer::Response { status: 504, body: Body::Bytes(vec![]) }, 500, "timeout", None),
            ("reset", Answer::Reset, 10, "reset", None),
            ("not sent", Answer::NotSent, 0, "not_sent", None),
            (
                "non-JSON",
                Answer::Response { status: 200, body: Body::Bytes(b"<html>".to_vec()) },
                10,
                "invalid_json",
                None,
            ),
            ("oversize", oversize, 10, "too_large", None),
        ];
        for required in [true, false] {
            for (name, answer, at, reason, status) in &cases {
                let endpoint = endpoint(json!({"required": required}));
                let mut aggregation = Aggregation::new(Rc::clone(&endpoint), request("1"), T0);
                sent(aggregation.start(T0));
                let first = aggregation.answer(1, answer.clone(), T0 + at);
                let reply = match first {
                    Step::Reply(reply) => reply,
                    Step::Wait => replied(aggregation.answer(0, ok(json!({"id": "1"})), T0 + at + 1)),
                    other => panic!("{other:?}"),
                };
                let case = format!("required={required}, {name}");
                if reason.is_empty() {
                    assert_eq!((reply.status, header(&reply, "x-aggregate-complete")), (200, Some("true")), "{case}");
                    assert_eq!(body(&reply), json!({"id": "1", "orders": [1]}), "{case}");
                    continue;
                }
                let mut expected_item = format!("\"subject\";reason={reason}");
                if let Some(status) = status {
                    expected_item.push_str(&format!(";status={status}"));
                }
                assert_eq!(header(&reply, "x-aggregate-failures"), Some(expected_item.as_str()), "{case}");
                assert_eq!(reply.outcome(), if required { "failed" } else { "partial" }, "{case}");
                if required {
                    assert_eq!(reply.status, 502, "{case}");
                    assert_eq!(body(&reply)["error"], "bad_gateway", "{case}");
                    assert!(
                        body(&reply)["message"].as_str().unwrap().starts_with("required backend `subject` "),
                        "{case}"
                    );
                } else {
                    assert_eq!(reply.status, 200, "{case}");
                    assert_eq!(header(&reply, "x-aggregate-complete"), Some("false"), "{case}");
                    assert_eq!(body(&reply), json!({"id": "1"}), "{case}: its part is omitted");
                }
            }
        }
    }

    #[test]
    fn optional_fallback_and_pass_status() {
        let endpoint_with_fallback = endpoint(json!({"required": false, "fallback": []}));
        let mut aggregation = Aggregation::new(Rc::clone(&endpoint_with_fallback), request("1"), T0);
        sent(aggregation.start(T0));
        aggregation.answer(1, Answer::Reset, T0 + 1);
        let reply = replied(aggregation.answer(0, ok(json!({"id": "1"})), T0 + 2));
        assert_eq!(body(&reply), json!({"id": "1", "orders": []}));
        assert_eq!(header(&reply, "x-aggregate-complete"), Some("false"));

        let passing = endpoint(json!({"pass_status": true}));
        let mut aggregation = Aggregation::new(Rc::clone(&passing), request("1"), T0);
        sent(aggregation.start(T0));
        let reply = replied(aggregation.answer(1, Answer::Response { status: 404, body: Body::Bytes(vec![]) }, T0 + 1));
        assert_eq!(reply.status, 404);
        assert_eq!(body(&reply)["error"], "backend_error");
    }

    #[test]
    fn the_overall_deadline_is_504() {
        let endpoint = endpoint(json!({"timeout": "5s"}));
        let mut aggregation = Aggregation::new(Rc::clone(&endpoint), request("1"), T0);
        let calls = sent(aggregation.start(T0));
        assert_eq!(calls[1].timeout, Duration::from_secs(2), "clipped to the endpoint's deadline");
        aggregation.answer(0, ok(json!({"id": "1"})), T0 + 100);
        let reply =
            replied(aggregation.answer(1, Answer::Response { status: 504, body: Body::Bytes(vec![]) }, T0 + 2000));
        assert_eq!(reply.status, 504);
        assert_eq!(body(&reply)["error"], "gateway_timeout");
    }

    /// Envoy's call timer and the filter's clock disagree by a few milliseconds: a call whose
    /// timeout is the time left may be reported before the filter's clock reaches the
    /// deadline. Whatever the backend's timeout setting and whatever the call's answer, that
    /// is the deadline: 504, for a required and an optional backend alike.
    #[test]
    fn a_call_timing_out_at_the_deadline_is_504_whatever_its_timeout() {
        let timed_out =
            [Answer::Response { status: 504, body: Body::Bytes(ENVOY_TIMEOUT_BODY.to_vec()) }, Answer::Reset];
        for required in [true, false] {
            for timeout in [json!(null), json!("2s"), json!("3s")] {
                for answer in &timed_out {
                    // Envoy's own timeout answer may come well before the filter's clock says so.
                    let earliest = if matches!(answer, Answer::Reset) { 4 } else { 40 };
                    for early_ms in [0, 1, 2, 4, earliest] {
                        let endpoint = endpoint(json!({"required": required, "timeout": timeout}));
                        let mut aggregation = Aggregation::new(Rc::clone(&endpoint), request("1"), T0);
                        let calls = sent(aggregation.start(T0));
                        assert_eq!(calls[1].timeout, Duration::from_secs(2), "the time left");
                        assert_eq!(aggregation.answer(0, ok(json!({"id": "1"})), T0 + 10), Step::Wait);
                        let reply = replied(aggregation.answer(1, answer.clone(), T0 + 2000 - early_ms));
                        let case = format!("required={required}, timeout={timeout}, {answer:?}, {early_ms} ms early");
                        assert_eq!(reply.status, 504, "{case}");
                        assert_eq!(body(&reply)["error"], "gateway_timeout", "{case}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_backend_timeout_shorter_than_the_deadline_is_its_own_failure() {
        let endpoint = endpoint(json!({"required": false, "timeout": "500ms"}));
        let mut aggregation = Aggregation::new(Rc::clone(&endpoint), request("1"), T0);
        sent(aggregation.start(T0));
        aggregation.answer(1, Answer::Response { status: 504, body: Body::Bytes(vec![]) }, T0 + 498);
        let reply = replied(aggregation.answer(0, ok(json!({"id": "1"})), T0 + 600));
        assert_eq!(reply.status, 200);
        assert_eq!(header(&reply, "x-aggregate-failures"), Some("\"subject\";reason=timeout"));
    }

    fn staged() -> Rc<Endpoint> {
        let config = json!({"endpoints": [{
            "path": "/api/users/{id}/team",
            "backends": [
                {"name": "user", "cluster": "users", "path": "/users/{id}", "group": "user"},
                {"name": "team", "cluster": "teams", "path": "/teams/{user.team_id}", "group": "team", "required": false},
                {"name": "page", "cluster": "x", "path": "/x?page={query.page}", "group": "page"}
            ]
        }]});
        AggregateConfig::parse(config.to_string().as_bytes()).unwrap().endpoints.remove(0)
    }

    #[test]
    fn a_later_stage_uses_an_earlier_answer() {
        let endpoint = staged();
        let mut request = request("1");
        request.query.insert("page".into(), "2".into());
        let mut aggregation = Aggregation::new(Rc::clone(&endpoint), request, T0);
        let first = sent(aggregation.start(T0));
        assert_eq!(first.iter().map(|c| c.backend).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(aggregation.answer(2, ok(json!({"n": 2})), T0 + 5), Step::Wait);
        let second = sent(aggregation.answer(0, ok(json!({"id": "1", "team_id": "t 1/x"})), T0 + 10));
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].headers[1].1, "/teams/t%201%2Fx", "encoded as one segment");
        assert_eq!(second[0].timeout, Duration::from_millis(2990), "what is left of the deadline");
        let reply = replied(aggregation.answer(1, ok(json!({"name": "Core"})), T0 + 20));
        assert_eq!(
            body(&reply),
            json!({"user": {"id": "1", "team_id": "t 1/x"}, "team": {"name": "Core"}, "page": {"n": 2}})
        );
    }

    #[test]
    fn a_missing_field_fails_the_dependent_backend_only() {
        let endpoint = staged();
        let mut request = request("1");
        request.query.insert("page".into(), "2".into());
        let mut aggregation = Aggregation::new(Rc::clone(&endpoint), request, T0);
        sent(aggregation.start(T0));
        aggregation.answer(2, ok(json!({})), T0 + 1);
        let reply = replied(aggregation.answer(0, ok(json!({"id": "1"})), T0 + 2));
        assert_eq!(reply.status, 200);
        assert_eq!(header(&reply, "x-aggregate-failures"), Some("\"team\";reason=missing_input"));
    }

    #[test]
    fn missing_client_input_for_a_required_backend_is_400() {
        let endpoint = staged();
        let mut aggregation = Aggregation::new(Rc::clone(&endpoint), request("1"), T0);
        let reply = replied(aggregation.start(T0));
        assert_eq!(reply.status, 400);
        assert_eq!(body(&reply)["message"], "required backend `page` needs query parameter `page`");
    }

    #[test]
    fn an_unshapeable_answer_is_a_failure() {
        let endpoint = endpoint(json!({"group": null, "required": false}));
        let mut aggregation = Aggregation::new(Rc::clone(&endpoint), request("1"), T0);
        sent(aggregation.start(T0));
        aggregation.answer(1, ok(json!([1, 2])), T0 + 1);
        let reply = replied(aggregation.answer(0, ok(json!({"id": "1"})), T0 + 2));
        assert_eq!(header(&reply, "x-aggregate-failures"), Some("\"subject\";reason=shape"));
    }
}
