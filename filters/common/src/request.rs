//! The request as every filter sees it: each fact (a header, an Envoy attribute) is read from
//! the host when something first needs it and then kept for the rest of the stream. Every read
//! is a host call that copies data into the VM (a header about 0.7 µs, an Envoy attribute about
//! 4.5 µs: docs/benchmark.md), so in the bundle, where all stages share one view, the path,
//! method, client address, route and the consumer are read at most once per request; a header a
//! stage sets (the consumer) is seen by the later stages without being read back.

use crate::host::{HeaderMap, Host, HostError};

/// Envoy's route name.
pub const ROUTE_NAME: [&str; 2] = ["xds", "route_name"];
/// The cluster the router picked.
pub const CLUSTER_NAME: [&str; 2] = ["xds", "cluster_name"];
/// Envoy's trusted client address (see [`crate::client_ip`]).
pub const SOURCE_ADDRESS: [&str; 2] = ["source", "address"];

/// What a filter's logic may read about the request.
pub trait RequestFacts {
    /// A request header by lower-case name, pseudo-headers (`:path`, `:method`) included.
    fn header(&mut self, name: &str) -> Option<&[u8]>;
    /// An Envoy attribute, e.g. [`ROUTE_NAME`].
    fn property(&mut self, path: &[&str]) -> Option<&[u8]>;
}

/// Text views of the facts the filters match on (anything that is not UTF-8 matches nothing).
pub trait RequestText: RequestFacts {
    fn header_text(&mut self, name: &str) -> Option<&str> {
        self.header(name).and_then(|bytes| std::str::from_utf8(bytes).ok())
    }

    fn method(&mut self) -> Option<&str> {
        self.header_text(":method")
    }

    /// `:path`, with its query string.
    fn path(&mut self) -> Option<&str> {
        self.header_text(":path")
    }

    fn route(&mut self) -> Option<&str> {
        self.property(&ROUTE_NAME).and_then(|bytes| std::str::from_utf8(bytes).ok())
    }
}

impl<T: RequestFacts + ?Sized> RequestText for T {}

/// The facts of one stream read so far. It lives as long as the stream; a [`Request`] pairs it
/// with the host for one callback.
#[derive(Default)]
pub struct RequestMemo {
    request_headers: Vec<(String, Option<Vec<u8>>)>,
    response_headers: Vec<(String, Option<Vec<u8>>)>,
    properties: Vec<(Vec<String>, Option<Vec<u8>>)>,
    /// The clock as read in the current callback (see [`RequestMemo::new_callback`]).
    clock: Option<Option<u64>>,
}

impl RequestMemo {
    /// A new callback of the stream began: time has moved on, so the clock is read again.
    pub fn new_callback(&mut self) {
        self.clock = None;
    }
}

/// The current stream as seen from one callback: the host, and what is known of the request.
pub struct Request<'a> {
    pub host: &'a dyn Host,
    memo: &'a mut RequestMemo,
}

impl<'a> Request<'a> {
    pub fn new(host: &'a dyn Host, memo: &'a mut RequestMemo) -> Request<'a> {
        Request { host, memo }
    }

    /// The host's clock in nanoseconds, read once per callback (stages that run in one
    /// callback share the reading).
    pub fn now_nanos(&mut self) -> Option<u64> {
        let host = self.host;
        *self.memo.clock.get_or_insert_with(|| host.now_nanos())
    }

    /// A response header (read once; the response headers exist from the response phase on).
    pub fn response_header(&mut self, name: &str) -> Option<&[u8]> {
        let host = self.host;
        remembered(&mut self.memo.response_headers, name, || host.header(HeaderMap::Response, name))
    }

    /// Sets (or with `None` removes) a request header, and remembers the new value so that
    /// later stages see it without reading it back.
    pub fn set_header(&mut self, name: &str, value: Option<&str>) -> Result<(), HostError> {
        let result = self.host.set_header(HeaderMap::Request, name, value);
        let value = value.map(|value| value.as_bytes().to_vec());
        match self.memo.request_headers.iter_mut().find(|(known, _)| known == name) {
            Some((_, known)) => *known = value,
            None => self.memo.request_headers.push((name.to_string(), value)),
        }
        result
    }
}

impl RequestFacts for Request<'_> {
    fn header(&mut self, name: &str) -> Option<&[u8]> {
        let host = self.host;
        remembered(&mut self.memo.request_headers, name, || host.header(HeaderMap::Request, name))
    }

    fn property(&mut self, path: &[&str]) -> Option<&[u8]> {
        let index = match self.memo.properties.iter().position(|(known, _)| known.iter().eq(path.iter())) {
            Some(index) => index,
            None => {
                let value = self.host.property(path);
                self.memo.properties.push((path.iter().map(|part| part.to_string()).collect(), value));
                self.memo.properties.len() - 1
            }
        };
        self.memo.properties.get(index).and_then(|(_, value)| value.as_deref())
    }
}

fn remembered<'m>(
    known: &'m mut Vec<(String, Option<Vec<u8>>)>,
    name: &str,
    read: impl FnOnce() -> Option<Vec<u8>>,
) -> Option<&'m [u8]> {
    let index = match known.iter().position(|(seen, _)| seen == name) {
        Some(index) => index,
        None => {
            known.push((name.to_string(), read()));
            known.len() - 1
        }
    };
    known.get(index).and_then(|(_, value)| value.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;

    #[test]
    fn each_fact_is_read_from_the_host_once() {
        let host = FakeHost::default().with_request_header(":path", "/a?b").with_property(&ROUTE_NAME, "r");
        let mut memo = RequestMemo::default();
        let mut request = Request::new(&host, &mut memo);
        for _ in 0..3 {
            assert_eq!(request.path(), Some("/a?b"));
            assert_eq!(request.route(), Some("r"));
            assert_eq!(request.header("x-absent"), None);
        }
        assert_eq!(host.calls_named("header"), 2);
        assert_eq!(host.calls_named("property"), 1);
        // A later callback of the same stream still knows them.
        let mut request = Request::new(&host, &mut memo);
        assert_eq!(request.path(), Some("/a?b"));
        assert_eq!(host.calls_named("header"), 2);
    }

    #[test]
    fn the_clock_is_read_once_per_callback() {
        let host = FakeHost::default().with_clock_millis(5);
        let mut memo = RequestMemo::default();
        assert_eq!(Request::new(&host, &mut memo).now_nanos(), Some(5_000_000));
        host.set_clock_millis(6);
        assert_eq!(Request::new(&host, &mut memo).now_nanos(), Some(5_000_000), "the same callback");
        memo.new_callback();
        assert_eq!(Request::new(&host, &mut memo).now_nanos(), Some(6_000_000));
        assert_eq!(host.calls_named("now_nanos"), 2);
    }

    #[test]
    fn a_header_set_by_one_stage_is_seen_by_the_next_without_a_read() {
        let host = FakeHost::default().with_request_header("x-consumer", "spoofed");
        let mut memo = RequestMemo::default();
        let mut request = Request::new(&host, &mut memo);
        request.set_header("x-consumer", Some("ada")).unwrap();
        assert_eq!(request.header("x-consumer"), Some(&b"ada"[..]));
        request.set_header("x-consumer", None).unwrap();
        assert_eq!(request.header("x-consumer"), None);
        assert_eq!(host.calls_named("header"), 0);
        assert_eq!(host.request_header("x-consumer"), None);
    }

    #[test]
    fn header_values_need_not_be_text() {
        let host = FakeHost::default().with_request_header_bytes(":method", b"G\xffT");
        let mut memo = RequestMemo::default();
        let mut request = Request::new(&host, &mut memo);
        assert_eq!(request.header(":method"), Some(&b"G\xffT"[..]));
        assert_eq!(request.method(), None);
    }
}
