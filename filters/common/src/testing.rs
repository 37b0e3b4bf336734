//! Test doubles with the host's semantics, for native unit tests.

use crate::header_list::HeaderList;
use crate::host::{HeaderMap, Host, HostError, MetricKind};
use crate::shared::{SharedStore, StoreError, Versioned};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// In-memory shared data that behaves like proxy-wasm-cpp-host's: a global CAS counter,
/// CAS checked only for keys that exist, no deletion. Safe to share between threads, so
/// tests can model several Envoy workers.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<(HashMap<String, Versioned>, u32)>,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let state = self.state.lock().map_err(|_| StoreError::Host("poisoned".into()))?;
        Ok(state.0.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut state = self.state.lock().map_err(|_| StoreError::Host("poisoned".into()))?;
        let (map, counter) = &mut *state;
        if let Some(existing) = map.get(key) {
            if cas != 0 && cas != existing.cas {
                return Err(StoreError::CasMismatch);
            }
        }
        *counter = counter.wrapping_add(1).max(1);
        map.insert(key.to_string(), Versioned { value: value.to_vec(), cas: *counter });
        Ok(())
    }
}

/// A local reply a stage sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A call a stage started: cluster, then the request headers (HTTP) or service and method (gRPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub message: Vec<u8>,
}

/// The host of one worker, in memory: headers, attributes, a settable clock, shared data,
/// metrics, and a record of replies, calls and of every host call made (to count them).
/// Header name and value pairs per map, in order.
type HeaderMaps = HashMap<&'static str, Vec<(String, Vec<u8>)>>;

#[derive(Default)]
pub struct FakeHost {
    headers: RefCell<HeaderMaps>,
    properties: HashMap<String, Vec<u8>>,
    pub clock_nanos: RefCell<Option<u64>>,
    /// Shared data; workers of one VM share it (see [`FakeHost::another_worker`]).
    pub store: Arc<MemoryStore>,
    metrics: RefCell<Vec<(String, MetricKind, Vec<u64>)>>,
    pub replies: RefCell<Vec<Reply>>,
    pub calls: RefCell<Vec<Call>>,
    /// The body of the call answer being delivered.
    pub call_body: RefCell<Vec<u8>>,
    log: RefCell<Vec<&'static str>>,
}

fn map_name(map: HeaderMap) -> &'static str {
    match map {
        HeaderMap::Request => "request",
        HeaderMap::Response => "response",
        HeaderMap::CallResponse => "call",
    }
}

impl FakeHost {
    /// A host for another worker of the same VM: its own streams and metrics, the same shared
    /// data and clock reading.
    pub fn another_worker(&self) -> FakeHost {
        FakeHost {
            store: Arc::clone(&self.store),
            clock_nanos: RefCell::new(*self.clock_nanos.borrow()),
            ..FakeHost::default()
        }
    }

    /// Forgets the current stream's headers (the next request starts clean).
    pub fn clear_headers(&self) {
        self.headers.borrow_mut().clear();
    }

    pub fn with_request_header(self, name: &str, value: &str) -> FakeHost {
        self.with_request_header_bytes(name, value.as_bytes())
    }

    pub fn with_request_header_bytes(self, name: &str, value: &[u8]) -> FakeHost {
        self.headers.borrow_mut().entry("request").or_default().push((name.to_string(), value.to_vec()));
        self
    }

    pub fn with_property(mut self, path: &[&str], value: &str) -> FakeHost {
        self.properties.insert(path.join("."), value.as_bytes().to_vec());
        self
    }

    pub fn with_clock_millis(self, millis: u64) -> FakeHost {
        self.set_clock_millis(millis);
        self
    }

    pub fn set_clock_millis(&self, millis: u64) {
        *self.clock_nanos.borrow_mut() = Some(millis * 1_000_000);
    }

    pub fn put_header(&self, map: HeaderMap, name: &str, value: &str) {
        self.headers.borrow_mut().entry(map_name(map)).or_default().push((name.to_string(), value.as_bytes().to_vec()));
    }

    pub fn request_header(&self, name: &str) -> Option<String> {
        self.value(HeaderMap::Request, name).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The sum of a counter's increments.
    pub fn counter(&self, name: &str) -> u64 {
        self.metrics.borrow().iter().filter(|(known, _, _)| known == name).flat_map(|(_, _, values)| values).sum()
    }

    /// How many host calls of one kind (the trait method's name) were made.
    pub fn calls_named(&self, name: &str) -> usize {
        self.log.borrow().iter().filter(|called| **called == name).count()
    }

    fn value(&self, map: HeaderMap, name: &str) -> Option<Vec<u8>> {
        let headers = self.headers.borrow();
        headers
            .get(map_name(map))?
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
    }

    fn note(&self, call: &'static str) {
        self.log.borrow_mut().push(call);
    }

    fn next_token(&self) -> u32 {
        u32::try_from(self.calls.borrow().len()).unwrap_or(u32::MAX).saturating_add(1)
    }
}

impl Host for FakeHost {
    fn header(&self, map: HeaderMap, name: &str) -> Option<Vec<u8>> {
        self.note("header");
        self.value(map, name)
    }

    fn headers(&self, map: HeaderMap) -> Option<HeaderList> {
        self.note("headers");
        let headers = self.headers.borrow();
        let pairs: Vec<(&str, &[u8])> = headers
            .get(map_name(map))
            .map(|list| list.iter().map(|(name, value)| (name.as_str(), value.as_slice())).collect())
            .unwrap_or_default();
        HeaderList::from_wire(crate::header_list::encode_pairs(&pairs))
    }

    fn set_header(&self, map: HeaderMap, name: &str, value: Option<&str>) -> Result<(), HostError> {
        self.note("set_header");
        let mut headers = self.headers.borrow_mut();
        let list = headers.entry(map_name(map)).or_default();
        list.retain(|(known, _)| !known.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            list.push((name.to_string(), value.as_bytes().to_vec()));
        }
        Ok(())
    }

    fn add_header(&self, map: HeaderMap, name: &str, value: &str) -> Result<(), HostError> {
        self.note("add_header");
        self.put_header(map, name, value);
        Ok(())
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.note("property");
        self.properties.get(&path.join(".")).cloned()
    }

    fn set_property(&self, _path: &[&str], _value: &[u8]) -> Result<(), HostError> {
        self.note("set_property");
        Ok(())
    }

    fn now_nanos(&self) -> Option<u64> {
        self.note("now_nanos");
        *self.clock_nanos.borrow()
    }

    fn shared_data(&self) -> &dyn SharedStore {
        self.store.as_ref()
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        self.note("define_metric");
        let mut metrics = self.metrics.borrow_mut();
        let index = match metrics.iter().position(|(known, _, _)| known == name) {
            Some(index) => index,
            None => {
                metrics.push((name.to_string(), kind, Vec::new()));
                metrics.len() - 1
            }
        };
        u32::try_from(index).ok()
    }

    fn increment_metric(&self, id: u32, by: u64) -> Result<(), HostError> {
        self.note("increment_metric");
        self.record(id, by)
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        self.note("record_metric");
        self.record(id, value)
    }

    fn send_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
        self.note("send_reply");
        let headers = headers.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        self.replies.borrow_mut().push(Reply { status, headers, body: body.to_vec() });
        Ok(())
    }

    fn http_call(&self, cluster: &str, headers: &[(&str, &str)], _timeout: Duration) -> Result<u32, HostError> {
        self.note("http_call");
        let token = self.next_token();
        let headers = headers.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        self.calls.borrow_mut().push(Call { token, cluster: cluster.to_string(), headers, message: vec![] });
        Ok(token)
    }

    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        _timeout: Duration,
    ) -> Result<u32, HostError> {
        self.note("grpc_call");
        let token = self.next_token();
        let headers = vec![(service.to_string(), method.to_string())];
        self.calls.borrow_mut().push(Call { token, cluster: cluster.to_string(), headers, message: message.to_vec() });
        Ok(token)
    }

    fn call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.note("call_response_body");
        Some(self.call_body.borrow().iter().take(size).copied().collect())
    }

    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.note("grpc_response_body");
        Some(self.call_body.borrow().iter().take(size).copied().collect())
    }
}

impl FakeHost {
    fn record(&self, id: u32, value: u64) -> Result<(), HostError> {
        let mut metrics = self.metrics.borrow_mut();
        let metric = metrics.get_mut(id as usize).ok_or_else(|| "no such metric".to_string())?;
        metric.2.push(value);
        Ok(())
    }
}

/// A request given whole, for logic that reads [`RequestFacts`]; it records what was asked.
#[derive(Default, Clone)]
pub struct FakeRequest {
    pub headers: Vec<(String, Vec<u8>)>,
    pub properties: Vec<(String, Vec<u8>)>,
    /// Header names and dotted attribute paths, in the order they were read.
    pub asked: Vec<String>,
}

impl FakeRequest {
    pub fn header(mut self, name: &str, value: &str) -> FakeRequest {
        self.headers.push((name.to_string(), value.as_bytes().to_vec()));
        self
    }

    pub fn property(mut self, path: &[&str], value: &str) -> FakeRequest {
        self.properties.push((path.join("."), value.as_bytes().to_vec()));
        self
    }
}

impl crate::request::RequestFacts for FakeRequest {
    fn header(&mut self, name: &str) -> Option<&[u8]> {
        self.asked.push(name.to_string());
        self.headers.iter().find(|(known, _)| known == name).map(|(_, value)| value.as_slice())
    }

    fn property(&mut self, path: &'static [&'static str]) -> Option<&[u8]> {
        let dotted = path.join(".");
        let found = self.properties.iter().find(|(known, _)| *known == dotted).map(|(_, value)| value.as_slice());
        self.asked.push(dotted);
        found
    }
}
